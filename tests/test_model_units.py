"""Hand-computed checks of the model's pieces (SPEC section 1), each against numbers worked out by hand
or a plain reference written here, not against the model's own code."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import swinv2
from swinv2.models.attention import WindowAttention
from swinv2.models import blocks as blocks_module
from swinv2.models.blocks import PatchMerging
from swinv2.models.position_bias import relative_coordinates_table, relative_position_index
from swinv2.models.windows import shifted_window_mask, window_and_shift, window_partition, window_reverse

TINY = dict(img_size=64, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4, num_classes=5)


def log_spaced(t: float) -> float:
    """SPEC: sign(t) * log2(|t| + 1) / log2(8)."""
    return math.copysign(math.log2(abs(t) + 1) / 3.0, t) if t else 0.0


# ------------------------------------------------------------------ coordinate table and index
def test_coordinate_table_window_2_by_hand():
    # Offsets -1, 0, 1 divided by (2 - 1), times 8: -8, 0, 8.
    table = relative_coordinates_table((2, 2))
    assert table.shape == (3, 3, 2)
    value = log_spaced(8.0)  # log2(9) / 3 = 1.0566
    expected_axis = torch.tensor([-value, 0.0, value])
    assert torch.allclose(table[:, 0, 0], expected_axis)  # channel 0 varies with dh (rows)
    assert torch.allclose(table[0, :, 1], expected_axis)  # channel 1 varies with dw (columns)
    assert torch.allclose(table[:, 1, 1], torch.zeros(3))


def test_coordinate_table_pretrained_window_extrapolates():
    # Window 3 normalised by a pre-trained window of 2: offsets -2..2 / 1 * 8 = -16..16,
    # beyond the [-8, 8] the MLP was trained on.
    table = relative_coordinates_table((3, 3), pretrained_window=(2, 2))
    expected = torch.tensor([log_spaced(t) for t in (-16.0, -8.0, 0.0, 8.0, 16.0)])
    assert torch.allclose(table[:, 0, 0], expected)
    # Without it, window 3 normalises by itself: -2..2 / 2 * 8 = -8, -4, 0, 4, 8.
    own = relative_coordinates_table((3, 3))
    assert torch.allclose(own[:, 0, 0], torch.tensor([log_spaced(t) for t in (-8.0, -4.0, 0.0, 4.0, 8.0)]))


def test_coordinate_table_non_square_window():
    table = relative_coordinates_table((2, 3))
    assert table.shape == (3, 5, 2)
    assert torch.allclose(table[0, :, 1], torch.tensor([log_spaced(t) for t in (-8.0, -4.0, 0.0, 4.0, 8.0)]))
    assert torch.allclose(table[:, 0, 0], torch.tensor([log_spaced(t) for t in (-8.0, 0.0, 8.0)]))


def test_relative_position_index_window_2_by_hand():
    # Tokens (0,0), (0,1), (1,0), (1,1); index = (dh + 1) * 3 + (dw + 1).
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index((2, 2)), expected)


def test_relative_position_index_non_square():
    index = relative_position_index((2, 3))  # tokens row-major, (2*3 - 1) = 5 columns of offsets
    tokens = [(h, w) for h in range(2) for w in range(3)]
    for i, (hi, wi) in enumerate(tokens):
        for j, (hj, wj) in enumerate(tokens):
            assert index[i, j] == (hi - hj + 1) * 5 + (wi - wj + 2)


# ------------------------------------------------------------------ windows, shift and mask
@pytest.mark.parametrize(
    "resolution, window, shifted, expected",
    [
        ((64, 64), (8, 8), True, ((8, 8), (4, 4))),
        ((64, 64), (8, 8), False, ((8, 8), (0, 0))),
        ((8, 8), (8, 8), True, ((8, 8), (0, 0))),  # `<=`: a map equal to the window is not shifted
        ((8, 8), (16, 16), True, ((8, 8), (0, 0))),  # 256 px / w16, stage 3: clamped to 8
        ((6, 6), (12, 12), True, ((6, 6), (0, 0))),  # 192 px / w12, stage 3: clamped to 6
        ((12, 12), (12, 12), True, ((12, 12), (0, 0))),  # 192 px / w12, stage 2: unshifted
        # Non-square maps: each axis on its own (as timm); the official code only knew square maps.
        ((4, 8), (4, 4), True, ((4, 4), (0, 2))),
        ((2, 4), (4, 4), True, ((2, 4), (0, 0))),
        ((16, 8), (4, 8), True, ((4, 8), (2, 0))),
    ],
)
def test_window_clamp_and_shift_rule(resolution, window, shifted, expected):
    assert window_and_shift(resolution, window, shifted) == expected


def test_model_stage_windows_match_spec_examples():
    w8 = swinv2.create_model("swinv2_tiny_window8_256")
    assert [w8.layers[3].blocks[1].shift_size, w8.layers[2].blocks[1].shift_size] == [(0, 0), (4, 4)]
    w16 = swinv2.create_model("swinv2_tiny_window16_256")
    assert w16.layers[2].blocks[1].shift_size == (0, 0)
    assert w16.layers[3].blocks[1].window_size == (8, 8)
    b192 = swinv2.create_model("swinv2_base_window12_192")
    assert [stage.blocks[0].window_size[0] for stage in b192.layers] == [12, 12, 12, 6]


def test_shift_mask_regions_by_hand():
    # 4x4 map, window 2, shift 1. Per axis, regions: index 0-1 -> 0, index 2 -> 1, index 3 -> 2.
    # Labels (row label * 3 + column label):
    #   0 0 1 2 / 0 0 1 2 / 3 3 4 5 / 6 6 7 8
    mask = shifted_window_mask((4, 4), (2, 2), (1, 1))
    X = -100.0
    expected = torch.tensor(
        [
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],  # labels 0 0 0 0
            [[0, X, 0, X], [X, 0, X, 0], [0, X, 0, X], [X, 0, X, 0]],  # labels 1 2 1 2
            [[0, 0, X, X], [0, 0, X, X], [X, X, 0, 0], [X, X, 0, 0]],  # labels 3 3 6 6
            [[0, X, X, X], [X, 0, X, X], [X, X, 0, X], [X, X, X, 0]],  # labels 4 5 7 8
        ]
    )
    assert torch.equal(mask, expected)
    assert shifted_window_mask((4, 4), (2, 2), (0, 0)) is None


def test_shift_mask_allows_exactly_tokens_that_were_adjacent_before_the_roll():
    """Independent of the region construction: after rolling by -s, two tokens of one window may attend
    iff neither wrapped around the map edge relative to the other (their original positions are
    within one window of each other along both axes)."""
    size, win, shift = 8, 4, 2
    mask = shifted_window_mask((size, size), (win, win), (shift, shift))
    positions = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1)
    original = (positions + shift) % size  # where each rolled token came from
    windows = window_partition(original[None].float(), (win, win))[...]  # (nW, N, 2)
    for w in range(windows.shape[0]):
        delta = (windows[w][:, None, :] - windows[w][None, :, :]).abs()
        adjacent = (delta < win).all(-1)
        assert torch.equal(mask[w] == 0, adjacent)


def test_window_partition_and_reverse_are_inverse_and_row_major():
    x = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).view(2, 4, 6, 3)
    windows = window_partition(x, (2, 3))
    assert windows.shape == (2 * 2 * 2, 6, 3)
    assert torch.equal(windows[1, 0], x[0, 0, 3])  # second window of image 0 starts at column 3
    assert torch.equal(windows[2, 0], x[0, 2, 0])  # third starts at row 2
    assert torch.equal(window_reverse(windows, (2, 3), 4, 6), x)


# ------------------------------------------------------------------ patch merging
def test_patch_merging_order_and_reduce_then_norm():
    merge = PatchMerging(dim=1)
    weight = torch.tensor([[1.0, 10.0, 100.0, 1000.0], [0.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():
        merge.reduction.weight.copy_(weight)
    a, b, c, d = 1.0, 2.0, 3.0, 4.0  # at (0,0), (0,1), (1,0), (1,1)
    x = torch.tensor([[a, b], [c, d]]).view(1, 2, 2, 1)
    # SPEC order: x0=[0::2,0::2]=a, x1=[1::2,0::2]=c, x2=[0::2,1::2]=b, x3=[1::2,1::2]=d.
    gathered = torch.tensor([a, c, b, d])
    reduced = weight @ gathered  # reduction first ...
    mean, var = reduced.mean(), reduced.var(unbiased=False)
    expected = (reduced - mean) / torch.sqrt(var + 1e-5)  # ... then LayerNorm(2C) with weight 1, bias 0
    assert torch.allclose(merge(x).flatten(), expected, atol=1e-6)


def test_patch_merging_gathers_every_patch_in_the_spec_order_with_its_gradient():
    """On a (2, 4, 6, 3) map, channels and patches distinct: the merged tokens are SPEC's concatenation of
    the four strided slices x0..x3 (written out here by index), and the input gradient is the gradient
    routed back to where each value came from."""
    torch.manual_seed(0)
    merge = PatchMerging(dim=3)
    x = torch.randn(2, 4, 6, 3, requires_grad=True)
    # (merged row, merged column, slot of 3 channels, row, column in the map): SPEC's x0..x3 per patch
    sources = [(i, j, slot, 2 * i + row, 2 * j + col) for i in range(2) for j in range(3)
               for slot, (row, col) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1)))]
    gathered = torch.empty(2, 2, 3, 12)
    for i, j, slot, row, col in sources:
        gathered[:, i, j, 3 * slot:3 * slot + 3] = x.detach()[:, row, col]
    expected = merge.norm(merge.reduction(gathered))
    actual = merge(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    upstream = torch.randn(gathered.shape)
    captured = {}
    merge.reduction.register_forward_pre_hook(lambda module, inputs: captured.update(tokens=inputs[0]))
    merge(x)
    torch.testing.assert_close(captured["tokens"], gathered, rtol=0, atol=0)
    (input_grad,) = torch.autograd.grad(captured["tokens"], x, upstream)
    for i, j, slot, row, col in sources:
        assert torch.equal(input_grad[:, row, col], upstream[:, i, j, 3 * slot:3 * slot + 3])


# ------------------------------------------------------------------ attention against a plain reference
def reference_window_attention(attention: WindowAttention, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Scaled cosine attention written out token by token in float64 (SPEC section 1 order)."""
    p = {k: v.detach().double().numpy() for k, v in attention.state_dict().items()}
    heads, (wh, ww) = attention.num_heads, attention.window_size
    tokens, channels = x.shape
    head_dim = channels // heads
    wq, wk, wv = np.split(p["qkv.weight"], 3)
    q = x @ wq.T + p["q_bias"]
    k = x @ wk.T  # no key bias
    v = x @ wv.T + p["v_bias"]
    pretrained = attention.pretrained_window_size
    reference = pretrained if pretrained[0] > 0 else (wh, ww)

    def bias_mlp(dh: float, dw: float) -> np.ndarray:
        t = np.array([log_spaced(dh / (reference[0] - 1) * 8), log_spaced(dw / (reference[1] - 1) * 8)])
        hidden = np.maximum(p["cpb_mlp.0.weight"] @ t + p["cpb_mlp.0.bias"], 0.0)
        return p["cpb_mlp.2.weight"] @ hidden  # (heads,)

    coords = [(h, w) for h in range(wh) for w in range(ww)]
    out = np.zeros_like(x)
    for head in range(heads):
        part = slice(head * head_dim, (head + 1) * head_dim)
        scale = math.exp(min(p["logit_scale"][head, 0, 0], math.log(100.0)))
        logits = np.zeros((tokens, tokens))
        for i, (hi, wi) in enumerate(coords):
            for j, (hj, wj) in enumerate(coords):
                qi, kj = q[i, part], k[j, part]
                cosine = qi @ kj / max(np.linalg.norm(qi), 1e-12) / max(np.linalg.norm(kj), 1e-12)
                bias = 16.0 / (1.0 + math.exp(-bias_mlp(hi - hj, wi - wj)[head]))
                logits[i, j] = cosine * scale + bias + (0.0 if mask is None else mask[i, j])
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out[:, part] = weights @ v[:, part]
    return out @ p["proj.weight"].T + p["proj.bias"]


@pytest.mark.parametrize("window, pretrained", [((2, 2), (0, 0)), ((3, 2), (0, 0)), ((3, 3), (2, 2))])
def test_window_attention_matches_hand_reference(window, pretrained):
    torch.manual_seed(0)
    attention = WindowAttention(dim=8, window_size=window, num_heads=2, pretrained_window_size=pretrained).double()
    with torch.no_grad():
        for parameter in attention.parameters():
            parameter.normal_(0, 0.5)
        attention.logit_scale.copy_(torch.tensor([1.0, 9.0]).view(2, 1, 1))  # 9 > ln 100: clamped
    tokens = window[0] * window[1]
    x = torch.randn(1, tokens, 8, dtype=torch.float64)
    mask = torch.zeros(1, tokens, tokens, dtype=torch.float64)
    mask[0, 0, 1:] = -100.0
    for m in (None, mask):
        ours = attention(x, m)[0].detach().numpy()
        expected = reference_window_attention(attention, x[0].numpy(), None if m is None else m[0].numpy())
        # The coordinate table is built in float32 as officially: ~1e-8 relative rounding in the bias.
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


def opposed_regions(logit_scales: list[float]) -> tuple[WindowAttention, torch.Tensor, torch.Tensor]:
    """Attention with one head per logit scale, and a window of the shift mask whose masked pairs have the
    largest cosine there is: k = -q, so cos(q_i, k_j) = -cos(x_i, x_j) and the query's own pair is at -1,
    and tokens lie along +u or -u by region, masked pairs of opposite regions at +1, where a head at
    1/tau = 100 gives the official -100 a weight to reckon with."""
    torch.manual_seed(0)
    window, heads = (4, 4), len(logit_scales)
    attention = WindowAttention(dim=4 * heads, window_size=window, num_heads=heads)
    dim = attention.dim
    with torch.no_grad():
        for parameter in attention.parameters():
            parameter.normal_(0, 0.5)
        attention.logit_scale.copy_(torch.tensor(logit_scales).view(heads, 1, 1))
        attention.q_bias.zero_()
        attention.qkv.weight[dim:2 * dim] = -attention.qkv.weight[:dim]
    mask = shifted_window_mask((8, 8), window, (2, 2))[-1:]  # the window where the four wrapped regions meet
    region = (mask[0] != 0).long().argmin(dim=1)  # the first token of each token's region
    sign = torch.where(torch.unique(region, return_inverse=True)[1] % 2 == 0, 1.0, -1.0)
    x = (sign[:, None] * torch.randn(dim) + 0.1 * torch.randn(16, dim)).unsqueeze(0)
    return attention, x, mask


def test_shift_mask_is_the_official_minus_100_in_cool_and_hot_heads():
    """Ours (fp32) against the official -100 shift mask written out in float64, heads from cool to the
    temperature's clamp. Cool heads get a total mask (WindowAttention.head_masks), which must not move
    the output beyond fp32's rounding; the hottest keeps -100, whose leak must be reproduced: with a
    total mask in every head the hand reference is another function."""
    # 1/tau = 2, 10 (the initial value), 30 (the largest with a total mask) and 100 (clamped from e^9)
    attention, x, mask = opposed_regions([math.log(2.0), math.log(10.0), math.log(30.0), 9.0])
    assert (mask == -100.0).any()
    ours = attention(x, mask)[0].detach().double().numpy()
    official = reference_window_attention(attention, x[0].double().numpy(), mask[0].double().numpy())
    scale = np.abs(official).max()
    np.testing.assert_allclose(ours, official, rtol=0, atol=1e-6 * scale)
    total_everywhere = reference_window_attention(attention, x[0].double().numpy(), 100 * mask[0].double().numpy())
    assert np.abs(total_everywhere - official).max() > 1e-2 * scale


def test_cached_bias_follows_the_temperature_that_decides_total_masks():
    """Which heads' masks are total depends on logit_scale, no source of the position bias itself: a head
    heated in place after the inference cache was filled must get the official -100 back."""
    attention, x, mask = opposed_regions([math.log(10.0)] * 2)
    with torch.no_grad():
        attention(x, mask)  # cached, both masks total
        assert attention.bias_cache.filled
        attention.logit_scale[1] = 9.0
        ours = attention(x, mask)[0].double().numpy()
    official = reference_window_attention(attention, x[0].double().numpy(), mask[0].double().numpy())
    np.testing.assert_allclose(ours, official, rtol=0, atol=1e-6 * np.abs(official).max())


def test_shifted_window_weights_are_exact_zeros_not_subnormal_floats():
    """At the initial temperature the official -100 leaves masked pairs weights of about e^-64 to e^-136,
    many of them subnormal floats (10-40x slower arithmetic on Intel CPUs, docs/performance.md item 22).
    The softmax of a shifted block, forward and backward of a training step, must give every masked pair
    exactly 0 and no weight below the smallest normal float."""
    torch.manual_seed(0)
    block = blocks_module.SwinTransformerV2Block(32, (8, 8), 2, (4, 4), shifted=True, attention_impl="plain")
    seen = []

    class Softmaxes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten._softmax.default, torch.ops.aten._softmax_backward_data.default):
                seen.append(out.detach())
            return out

    x = torch.randn(2, 8, 8, 32, requires_grad=True)
    with Softmaxes():
        block(x).sum().backward()
    assert len(seen) == 2  # the weights and their gradient
    weights = seen[0]  # (B * nW, heads, N, N), window i using mask i % nW
    masked = (block.attn_mask != 0).unsqueeze(1).repeat(2, 1, 1, 1).expand_as(weights)
    assert masked.any()
    assert torch.equal(weights == 0, masked)
    tiny = torch.finfo(torch.float32).tiny
    for tensor in seen:
        assert not ((tensor != 0) & (tensor.abs() < tiny)).any()


# ------------------------------------------------------------------ initialisation and schedule
def test_official_initialisation():
    torch.manual_seed(0)
    model = swinv2.SwinTransformerV2(**TINY)
    for stage in model.layers:
        for block in stage.blocks:
            for norm in (block.norm1, block.norm2):  # zeroed: each block starts as the identity
                assert torch.count_nonzero(norm.weight) == 0 and torch.count_nonzero(norm.bias) == 0
            attention = block.attn
            assert torch.allclose(attention.logit_scale, torch.full_like(attention.logit_scale, math.log(10)))
            assert torch.count_nonzero(attention.q_bias) == 0 and torch.count_nonzero(attention.v_bias) == 0
            assert torch.count_nonzero(attention.proj.bias) == 0
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    assert torch.equal(model.patch_embed.norm.weight, torch.ones_like(model.patch_embed.norm.weight))
    big = swinv2.create_model("swinv2_tiny_window8_256").layers[3].blocks[0].mlp.fc1.weight
    # trunc_normal_(std=.02) with the official bounds a=-2, b=2 (absolute: 100 sigma, so no truncation in effect).
    assert abs(big.std().item() - 0.02) < 0.0005 and abs(big.mean().item()) < 0.0005


def test_every_block_starts_as_identity():
    model = swinv2.SwinTransformerV2(**TINY).eval()
    x = torch.randn(2, 16, 16, 32)
    block = model.layers[0].blocks[1]  # a shifted block
    assert torch.equal(block(x), x)


def test_drop_path_schedule_is_linear_over_all_blocks():
    model = swinv2.SwinTransformerV2(**dict(TINY, drop_path_rate=0.7))
    rates = [block.drop_path.drop_prob for stage in model.layers for block in stage.blocks]
    assert rates == pytest.approx([0.1 * i for i in range(8)])  # linspace(0, 0.7, 8)


def test_drop_path_keeps_expectation():
    from swinv2.models.blocks import DropPath

    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    out = drop(torch.ones(20000, 3))
    kept = (out[:, 0] != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.02
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / 0.75))


def test_drop_path_residual_adds_a_dropped_or_rescaled_branch_per_sample():
    """x + drop_path(branch) in one addcmul: each sample gets its branch times 0 or 1 / keep, and so does
    its gradient; the main branch's gradient passes unchanged. Without training, a plain sum."""
    from swinv2.models.blocks import DropPath

    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    x, branch = torch.randn(4000, 3, 2), torch.randn(4000, 3, 2, requires_grad=True)
    main = x.clone().requires_grad_(True)
    out = drop.residual(main, branch)
    out.backward(torch.ones_like(out))
    added = out.detach() - x
    kept = (added.abs().sum((1, 2)) != 0)
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    torch.testing.assert_close(added[kept], branch.detach()[kept] / 0.75)
    assert torch.equal(added[~kept], torch.zeros_like(added[~kept]))
    torch.testing.assert_close(branch.grad[kept], torch.full_like(branch.grad[kept], 1 / 0.75))
    assert torch.equal(branch.grad[~kept], torch.zeros_like(branch.grad[~kept]))
    assert torch.equal(main.grad, torch.ones_like(main.grad))
    assert torch.equal(drop.eval().residual(x, branch), x + branch)
    # Without autograd the sum lands in the branch's own memory: the same numbers, no new tensor.
    expected, temporary = x + branch.detach(), branch.detach().clone()
    with torch.no_grad():
        out = drop.residual(x, temporary)
    assert out.data_ptr() == temporary.data_ptr() and torch.equal(out, expected)


def test_absolute_position_embedding_option():
    model = swinv2.SwinTransformerV2(**dict(TINY, ape=True))
    assert model.absolute_pos_embed.shape == (1, 16 * 16, 32)
    assert "absolute_pos_embed" in model.state_dict()
    assert "absolute_pos_embed" not in swinv2.SwinTransformerV2(**TINY).state_dict()


def test_buffers_are_not_in_the_state_dict():
    keys = swinv2.create_model("swinv2_tiny_window8_256").state_dict().keys()
    for buffer in ("relative_coords_table", "relative_position_index", "attn_mask"):
        assert not any(buffer in key for key in keys)
    assert "layers.0.downsample.reduction.weight" in keys and "layers.3.downsample.reduction.weight" not in keys


def test_no_weight_decay_names_follow_spec():
    model = swinv2.SwinTransformerV2(**TINY)
    names = model.no_weight_decay_names()
    assert "layers.0.blocks.0.attn.logit_scale" in names
    assert "layers.0.blocks.0.attn.cpb_mlp.0.weight" in names and "layers.0.blocks.0.attn.cpb_mlp.2.weight" in names
    assert "layers.0.blocks.0.attn.q_bias" in names and "head.bias" in names and "norm.weight" in names
    assert "layers.0.blocks.0.attn.qkv.weight" not in names and "head.weight" not in names


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize(
    "name, millions",
    [
        ("swinv2_tiny_window8_256", 28.35),
        ("swinv2_small_window8_256", 49.73),
        ("swinv2_base_window8_256", 87.92),
        ("swinv2_large_window12to16_192to256", 196.74),
    ],
)
def test_parameter_counts_match_official_table(name, millions):
    model = swinv2.models.create_on_meta(name, num_classes=1000)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - millions) / millions < 0.001


@pytest.mark.parametrize("name, millions", [("swinv2_huge_window12_192", 658.0), ("swinv2_giant_window12_192", 3000.0)])
def test_huge_and_giant_match_paper_on_meta(name, millions):
    model = swinv2.models.create_on_meta(name)
    assert all(p.device.type == "meta" for p in model.parameters())
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - millions) / millions < 0.005
    # The paper's extra main-branch LayerNorm every 6 layers: 18-block stage -> after blocks 6, 12, 18.
    placed = [i for i, block in enumerate(model.layers[2].blocks) if block.main_branch_norm is not None]
    assert placed[:3] == [5, 11, 17]


def test_narrow_deep_model_with_extra_norm_trains_one_step():
    torch.manual_seed(0)
    model = swinv2.SwinTransformerV2(
        img_size=32, embed_dim=16, depths=(1, 1, 12, 1), num_heads=(1, 1, 2, 4), window_size=2,
        num_classes=3, extra_norm_period=6,
    )
    x = torch.randn(2, 3, 32, 32)
    loss = F.cross_entropy(model(x), torch.tensor([0, 2]))
    loss.backward()
    norm = model.layers[2].blocks[5].main_branch_norm
    assert norm is not None and model.layers[2].blocks[4].main_branch_norm is None
    assert norm.weight.grad is not None and torch.isfinite(norm.weight.grad).all()
    # The main branch after block 6 is normalised: zero mean, unit variance per token.
    features = {}
    model.layers[2].blocks[5].register_forward_hook(lambda module, inputs, output: features.setdefault("x", output))
    model(x)
    assert torch.allclose(features["x"].mean(-1), torch.zeros(1), atol=1e-5)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "x, words",
    [
        (torch.randn(1, 3, 32, 32), ["64x64", "32x32", "set_input_size"]),
        (torch.randn(1, 1, 64, 64), ["3 input channels", "in_chans=1"]),
        (torch.randn(3, 64, 64), ["4-D", "unsqueeze"]),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ["floating-point", "torch.uint8"]),
        (torch.randn(1, 3, 64, 64, dtype=torch.float64), ["torch.float64", "torch.float32"]),
    ],
)
def test_bad_input_says_what_was_expected(x, words):
    model = swinv2.SwinTransformerV2(**TINY)
    with pytest.raises(swinv2.InputError) as error:
        model(x)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(img_size=224, window_size=8), ["224", "not a multiple of the window"]),
        (dict(num_heads=(3, 6, 12, 25)), ["not divisible by 25 heads"]),
        (dict(img_size=30), ["patch_size 4"]),
        (dict(img_size=16), ["too small", "32x32"]),
        (dict(pretrained_window_sizes=[12, 12]), ["one entry per stage"]),
        (dict(window_sizes=8), ["unknown model arguments", "window_size"]),
    ],
)
def test_bad_config_says_what_to_change(overrides, words):
    with pytest.raises(swinv2.ConfigError) as error:
        swinv2.create_model("swinv2_tiny_window8_256", **overrides)
    for word in words:
        assert word in str(error.value)


def test_unknown_model_name_lists_choices():
    with pytest.raises(swinv2.ConfigError, match="swinv2_tiny_window8_256"):
        swinv2.create_model("swinv2_tiny")
