"""The paper's ablation switches: Swin v1's block (pre-norm, dot-product attention, parameterised bias
table) checked token by token against a reference written from the Swin v1 paper, the linear-spaced
CPB's inputs by hand, the table's bicubic transfer, initialisation and errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_

from swinv2 import create_model
from swinv2.checkpoints import export_state_dict, load_pretrained, save_pretrained
from swinv2.errors import CheckpointError, ConfigError
from swinv2.models.blocks import SwinTransformerV2Block
from swinv2.models.position_bias import relative_coordinates_table

V1 = dict(norm="pre", attention="dot", position_bias="table")


def v1_block(shifted: bool, dim: int = 8, heads: int = 2, resolution: int = 8, window: int = 4):
    block = SwinTransformerV2Block(dim, (resolution, resolution), heads, (window, window), shifted, **V1)
    randomize_(block.double(), seed=3)
    with torch.no_grad():  # a table with a visible spread, so a wrong gather shows
        block.attn.relative_position_bias_table.normal_(0.0, 1.0)
    return block


def layer_norm(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def reference_v1_block(block, x: torch.Tensor) -> torch.Tensor:
    """Swin v1 (Liu et al. 2021) for one (B, H, W, C) map, query by query with explicit loops:
    x + W-MSA(LN(x)) then x + MLP(LN(x)). Windows tile the map rolled by -shift; two tokens of a
    window attend to each other only if neither or both were wrapped by the roll, per axis; the bias
    of a pair is the table row of its offset (dh, dw); logits are q.k / sqrt(head_dim)."""
    batch, height, width, channels = x.shape
    attention, heads = block.attn, block.attn.num_heads
    head_dim = channels // heads
    window, shift = block.window_size[0], block.shift_size[0]
    weight_q, weight_k, weight_v = attention.qkv.weight.split(channels)
    table = attention.relative_position_bias_table  # ((2W-1)^2, heads)
    y = layer_norm(x, block.norm1)
    out = torch.zeros_like(x)
    for b in range(batch):
        for row in range(height):  # rolled coordinates of the query
            for column in range(width):
                top, left = row // window * window, column // window * window
                keys = [(r, c) for r in range(top, top + window) for c in range(left, left + window)
                        if (r + shift >= height) == (row + shift >= height)
                        and (c + shift >= width) == (column + shift >= width)]
                original = lambda r, c: y[b, (r + shift) % height, (c + shift) % width]  # noqa: E731
                query = original(row, column)
                q = (weight_q @ query + attention.q_bias).view(heads, head_dim) * head_dim**-0.5
                k = torch.stack([weight_k @ original(r, c) for r, c in keys]).view(len(keys), heads, head_dim)
                v = torch.stack([weight_v @ original(r, c) + attention.v_bias for r, c in keys])
                v = v.view(len(keys), heads, head_dim)
                offsets = [((row - r) + window - 1) * (2 * window - 1) + (column - c) + window - 1 for r, c in keys]
                logits = torch.einsum("hd,khd->hk", q, k) + table[offsets].t()  # (heads, keys)
                mixed = torch.einsum("hk,khd->hd", logits.softmax(-1), v).reshape(channels)
                out[b, (row + shift) % height, (column + shift) % width] = attention.proj(mixed)
    x = x + out
    return x + block.mlp(layer_norm(x, block.norm2))


@pytest.mark.parametrize("shifted", [False, True])
def test_v1_block_equals_a_token_by_token_swin_v1_reference(shifted):
    block = v1_block(shifted)
    assert block.shift_size == ((2, 2) if shifted else (0, 0))
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference_v1_block(block, x)
        for implementation in ("plain", "sdpa"):
            block.attn.attention_impl = implementation
            torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_v1_block_has_no_temperature_and_no_mlp_bias_and_v1_model_trains():
    model = create_model("swinv2_tiny_window8_256", img_size=32, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                         window_size=4, num_classes=3, **V1)
    names = [name for name, _ in model.named_parameters()]
    assert not any("logit_scale" in name or "cpb_mlp" in name for name in names)
    assert sum("relative_position_bias_table" in name for name in names) == 4
    # v1 initialisation: tables trunc-normal(.02), pre-norms (1, 0) so every branch sees its input.
    table = model.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (7 * 7, 1) and 0.01 < table.std() < 0.03
    assert torch.all(model.layers[0].blocks[0].norm1.weight == 1)
    assert "relative_position_bias_table" in " ".join(model.no_weight_decay_names())
    loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_res_post_norm_blocks_start_as_the_identity_and_pre_norm_blocks_do_not():
    x = torch.randn(1, 8, 8, 16)
    for norm, identity in (("res_post", True), ("pre", False)):
        model = create_model("swinv2_tiny_window8_256", img_size=32, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                             window_size=4, num_classes=3, norm=norm)
        block = model.layers[0].blocks[1]
        assert torch.equal(block(x), x) == identity


def test_linear_spaced_coordinates_by_hand():
    # Window 3: offsets -2..2, normalised by (3 - 1) and scaled by 8, no log.
    table = relative_coordinates_table((3, 3), spacing="linear")
    assert table[:, 0, 0].tolist() == [-8.0, -4.0, 0.0, 4.0, 8.0]
    assert table[0, :, 1].tolist() == [-8.0, -4.0, 0.0, 4.0, 8.0]
    # With a pre-trained window 3 a window 5 extrapolates linearly: offset 4 -> 16.
    assert relative_coordinates_table((5, 5), (3, 3), spacing="linear")[:, 0, 0].tolist() == [
        -16.0, -12.0, -8.0, -4.0, 0.0, 4.0, 8.0, 12.0, 16.0]
    log = relative_coordinates_table((3, 3))[:, 0, 0]
    torch.testing.assert_close(log, torch.tensor([-math.log2(9), -math.log2(5), 0.0, math.log2(5), math.log2(9)]) / 3)
    with pytest.raises(ValueError, match="spacing"):
        relative_coordinates_table((3, 3), spacing="cubic")


def test_cpb_linear_model_sees_linear_coordinates_and_transfers():
    model = create_model("swinv2_tiny_window8_256", img_size=32, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                         window_size=4, num_classes=3, position_bias="cpb_linear")
    attention = model.layers[0].blocks[0].attn
    assert attention.relative_coords_table[:, 0, 0].tolist() == pytest.approx([-8, -16 / 3, -8 / 3, 0, 8 / 3, 16 / 3, 8])
    model.set_input_size(img_size=64, window_size=8)  # the MLP now sees offsets up to 7 / 3 * 8
    assert attention.relative_coords_table.max() == pytest.approx(56 / 3)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_bias_table_is_resized_bicubically_when_the_window_changes():
    model = create_model("swinv2_tiny_window8_256", img_size=32, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                         window_size=4, num_classes=3, **V1)
    attention = model.layers[0].blocks[0].attn
    with torch.no_grad():  # head 0 constant, head 1 depends on dh only: both survive a bicubic resize
        table = attention.relative_position_bias_table.view(7, 7, 1)
        table.fill_(0.25)
    model.set_input_size(img_size=64, window_size=8)
    resized = attention.relative_position_bias_table
    assert resized.shape == (15 * 15, 1)
    torch.testing.assert_close(resized, torch.full_like(resized, 0.25))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_table_checkpoint_of_another_window_loads_resized(tmp_path):
    """Fine-tuning a v1-table checkpoint at a larger window: the loader resizes the table as set_input_size
    does. Bicubic with half-pixel centres maps the middle of 15 onto the middle of 7 exactly, so each head's
    bias for offset (0, 0) survives unchanged: a value computed without the resize code."""
    small = create_model("swinv2_tiny_window8_256", img_size=32, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                         window_size=4, num_classes=3, **V1)
    randomize_(small)
    save_pretrained(small, tmp_path / "w4")
    large = create_model("swinv2_tiny_window8_256", img_size=64, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                         window_size=8, num_classes=3, **V1)
    load_pretrained(large, tmp_path / "w4")
    for name, table in small.state_dict().items():
        if name.endswith("relative_position_bias_table"):
            loaded = large.state_dict()[name]
            assert loaded.shape == (15 * 15, table.shape[1])
            torch.testing.assert_close(loaded.view(15, 15, -1)[7, 7], table.view(7, 7, -1)[3, 3])
    small.set_input_size(img_size=64, window_size=8)
    image = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(large.eval()(image), small.eval()(image))


def test_bad_ablation_switches_and_hf_export_are_refused():
    with pytest.raises(ConfigError, match="norm must be one of"):
        create_model("swinv2_tiny_window8_256", norm="post")
    with pytest.raises(ConfigError, match="position_bias must be one of"):
        create_model("swinv2_tiny_window8_256", position_bias="rope")
    model = create_model("swinv2_tiny_window8_256", img_size=32, embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                         window_size=4, num_classes=3, attention="dot")
    with pytest.raises(CheckpointError, match="ablation"):
        from swinv2.checkpoints.configs import refuse_for_hf
        refuse_for_hf(model.config)
    assert "layers.0.blocks.0.attn.qkv.weight" in export_state_dict(model, "official")
