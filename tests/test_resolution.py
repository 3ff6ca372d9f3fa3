"""Issue 3: changing size at run time, any input size, dense features, memory savers.

Independent references: Hugging Face's Swinv2 (a separate implementation), attention written out token
by token, and each padded window recomputed on its own at a size that needs no padding."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import Swinv2Backbone, Swinv2Config, Swinv2ForImageClassification

import swinv2
from swinv2.checkpoints import from_project, to_project
from swinv2.models.attention import WindowAttention
from swinv2.models.blocks import SwinTransformerV2Block

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), num_classes=7, drop_path_rate=0.0)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights that make every part matter (the official init zeroes the post-norms)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("logit_scale"):
                parameter.copy_(math.log(10) + 0.5 * noise)
            elif parameter.ndim == 1 and ("norm" in name or "layernorm" in name) and name.endswith("weight"):
                parameter.copy_(1 + 0.2 * noise)
            else:
                parameter.copy_(0.2 * noise)
    return model.eval()


def hf_classifier(img_size: int | tuple[int, int], window: int, pretrained=(0, 0, 0, 0)) -> Swinv2ForImageClassification:
    config = Swinv2Config(image_size=img_size, window_size=window, embed_dim=TINY["embed_dim"],
                          depths=list(TINY["depths"]), num_heads=list(TINY["num_heads"]),
                          num_labels=TINY["num_classes"], pretrained_window_sizes=list(pretrained))
    return Swinv2ForImageClassification(config).eval()


# ------------------------------------------------------------------ set_input_size
def test_set_input_size_equals_model_built_at_target_and_hf():
    """192/w12-style transfer at small scale: 96 px / w6 (last stage clamped to 3) -> 192 px / w12."""
    torch.manual_seed(0)
    small = randomise(swinv2.SwinTransformerV2(img_size=96, window_size=6, **TINY))
    small.set_input_size(img_size=192, window_size=12)
    # The official default: normalise by the windows the weights were trained with, clamp included.
    assert small.config.pretrained_window_sizes == ((6, 6), (6, 6), (6, 6), (3, 3))
    built = swinv2.SwinTransformerV2(img_size=192, window_size=12, pretrained_window_sizes=[6, 6, 6, 3], **TINY)
    built.load_state_dict(small.state_dict())
    built.eval()
    hf = hf_classifier(192, 12, pretrained=(6, 6, 6, 3))
    hf.load_state_dict(from_project(small.state_dict(), "hf"))
    x = torch.randn(2, 3, 192, 192)
    with torch.no_grad():
        ours = small(x)
        assert torch.equal(ours, built(x))
        torch.testing.assert_close(ours, hf(pixel_values=x).logits, rtol=1e-4, atol=1e-4)


def test_set_input_size_explicit_pretrained_windows_and_back():
    torch.manual_seed(0)
    model = randomise(swinv2.SwinTransformerV2(img_size=64, window_size=4, **TINY))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.set_input_size(img_size=128, window_size=8, pretrained_window_sizes=[0, 0, 0, 0])  # timm's choice
        assert model.layers[0].blocks[0].attn.pretrained_window_size == (0, 0)
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 7)
        model.set_input_size(img_size=64, window_size=4, pretrained_window_sizes=[0, 0, 0, 0])
        assert torch.equal(model(x), before)


# ------------------------------------------------------------------ any input size
def test_non_strict_changes_nothing_for_divisible_inputs():
    torch.manual_seed(0)
    strict = randomise(swinv2.SwinTransformerV2(img_size=64, window_size=4, **TINY))
    loose = swinv2.SwinTransformerV2(img_size=64, window_size=4, strict_img_size=False, **TINY).eval()
    loose.load_state_dict(strict.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(strict(x), loose(x))


@pytest.mark.parametrize("img_size, window", [((128, 256), 4), ((256, 128), 4)])
def test_non_square_inputs_match_hf(img_size, window):
    """Three stages, so that no stage map has one side within the window and the other beyond it: there
    HF applies the height's clamp to both axes, while we (and timm) clamp each axis on its own."""
    torch.manual_seed(0)
    three_stages = dict(TINY, depths=(2, 2, 2), num_heads=(1, 2, 2))
    config = Swinv2Config(image_size=img_size, window_size=window, embed_dim=16, depths=[2, 2, 2],
                          num_heads=[1, 2, 2], num_labels=7)
    hf = randomise(Swinv2ForImageClassification(config))
    ours = swinv2.SwinTransformerV2(img_size=img_size, window_size=window, **three_stages).eval()
    ours.load_state_dict(to_project(hf.state_dict(), "hf"))
    x = torch.randn(2, 3, *img_size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, rtol=1e-4, atol=1e-4)


def brute_force_block_attention(block: SwinTransformerV2Block, x: torch.Tensor) -> torch.Tensor:
    """The shifted-window attention of one block for a map that needs padding, written without
    masks: after padding to whole windows and rolling by -shift, each real token attends to the real
    tokens of its window that were also its neighbours before the roll (no wrap between them)."""
    attention = block.attn
    state = {k: v.double() for k, v in attention.state_dict().items()}
    height, width, channels = x.shape
    (wh, ww), (sh, sw) = block.window_size, block.shift_size
    padded = (-(-height // wh) * wh, -(-width // ww) * ww)
    heads, head_dim = attention.num_heads, channels // attention.num_heads
    wq, wk, wv = state["qkv.weight"].chunk(3)
    x = x.double()
    q, k, v = x @ wq.T + state["q_bias"], x @ wk.T, x @ wv.T + state["v_bias"]
    scale = torch.clamp(state["logit_scale"].flatten(), max=math.log(100)).exp()
    reference_window = attention.pretrained_window_size if attention.pretrained_window_size[0] else (wh, ww)

    def log_offset(delta: int, size: int) -> float:
        t = delta / (size - 1) * 8
        return math.copysign(math.log2(abs(t) + 1) / 3, t) if t else 0.0

    def bias(dh: int, dw: int) -> torch.Tensor:
        t = torch.tensor([log_offset(dh, reference_window[0]), log_offset(dw, reference_window[1])], dtype=torch.float64)
        hidden = torch.relu(state["cpb_mlp.0.weight"] @ t + state["cpb_mlp.0.bias"])
        return 16 * torch.sigmoid(state["cpb_mlp.2.weight"] @ hidden)  # (heads,)

    out = torch.zeros(height, width, channels, dtype=torch.float64)
    for top in range(0, padded[0], wh):
        for left in range(0, padded[1], ww):
            # rolled position (r, c) holds the original token ((r + sh) % Hp, (c + sw) % Wp)
            members = []
            for r in range(top, top + wh):
                for c in range(left, left + ww):
                    original = ((r + sh) % padded[0], (c + sw) % padded[1])
                    if original[0] < height and original[1] < width:
                        members.append(((r, c), original))
            for (ri, ci), (hi, wi) in members:
                keys = [((rj, cj), (hj, wj)) for (rj, cj), (hj, wj) in members
                        if (hj - hi, wj - wi) == (rj - ri, cj - ci)]
                for head in range(heads):
                    part = slice(head * head_dim, (head + 1) * head_dim)
                    qi = q[hi, wi, part]
                    logits = torch.stack([
                        torch.dot(qi, k[hj, wj, part]) / qi.norm().clamp_min(1e-12) / k[hj, wj, part].norm().clamp_min(1e-12)
                        * scale[head] + bias(ri - rj, ci - cj)[head]
                        for (rj, cj), (hj, wj) in keys
                    ])
                    weights = torch.softmax(logits, 0)
                    out[hi, wi, part] = sum(w * v[hj, wj, part] for w, ((_, _), (hj, wj)) in zip(weights, keys))
    return out @ state["proj.weight"].T + state["proj.bias"]


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("size, window", [((6, 6), (4, 4)), ((7, 5), (4, 4)), ((7, 5), (2, 4)), ((8, 8), (4, 2))])
def test_padded_block_attention_matches_brute_force(shifted, size, window):
    torch.manual_seed(0)
    block = SwinTransformerV2Block(dim=8, input_resolution=(8, 8), num_heads=2, window_size=window, shifted=shifted)
    randomise(block)
    x = torch.randn(1, *size, 8)
    with torch.no_grad():
        ours = block.shifted_window_attention(x)[0]
    torch.testing.assert_close(ours.double(), brute_force_block_attention(block, x[0]), rtol=1e-5, atol=1e-5)


def test_padded_windows_equal_each_window_run_alone():
    """Unshifted: a 6x6 map with window 4 is the windows 4x4, 4x2, 2x4, 2x2 run at their own sizes
    (the position offsets normalised by the 4-window, as the block does), with no padding at all."""
    torch.manual_seed(0)
    block = randomise(SwinTransformerV2Block(dim=8, input_resolution=(8, 8), num_heads=2, window_size=(4, 4), shifted=False))
    x = torch.randn(1, 6, 6, 8)
    with torch.no_grad():
        ours = block.shifted_window_attention(x)
        for rows in (slice(0, 4), slice(4, 6)):
            for cols in (slice(0, 4), slice(4, 6)):
                piece = x[:, rows, cols]
                window = tuple(piece.shape[1:3])
                alone = WindowAttention(8, window, 2, pretrained_window_size=(4, 4))
                alone.load_state_dict(block.attn.state_dict())
                expected = alone.eval()(piece.reshape(1, -1, 8)).view_as(piece)
                torch.testing.assert_close(ours[:, rows, cols], expected, rtol=1e-5, atol=1e-6)


def test_any_size_with_odd_stages_runs_and_too_small_is_refused():
    model = swinv2.SwinTransformerV2(img_size=64, window_size=4, strict_img_size=False, **TINY).eval()
    with torch.no_grad():
        for size in [(70, 50), (36, 36), (4, 9)]:  # odd stage maps get padded before merging
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 7) and torch.isfinite(out).all()
    with pytest.raises(swinv2.InputError, match="minimum is one patch, 4x4"):
        model(torch.randn(1, 3, 3, 20))
    strict = swinv2.SwinTransformerV2(img_size=64, window_size=4, **TINY)
    with pytest.raises(swinv2.InputError, match="strict_img_size=False"):
        strict(torch.randn(1, 3, 70, 50))


def test_non_strict_model_accepts_sizes_its_config_could_not_divide():
    model = swinv2.create_model("swinv2_tiny_window8_256", img_size=224, strict_img_size=False, **dict(TINY, embed_dim=24, num_heads=(1, 2, 3, 6)))
    assert model.layers[1].blocks[0].attn_mask is not None  # 28x28 padded to 32x32: padding masked
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 224, 224))).all()


# ------------------------------------------------------------------ dense features
def test_features_only_matches_hf_backbone():
    torch.manual_seed(0)
    config = Swinv2Config(image_size=64, window_size=4, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    hf = randomise(Swinv2Backbone(config))
    model = swinv2.create_model("swinv2_tiny_window8_256", features_only=True, img_size=64, window_size=4,
                                **{k: v for k, v in TINY.items() if k != "num_classes"}).eval()
    state = to_project({k: v for k, v in hf.state_dict().items()}, "hf")
    model.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = model(x), hf(pixel_values=x).feature_maps
    assert [tuple(map.shape) for map in ours] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert model.feature_info.channels() == [16, 32, 64, 128]
    assert model.feature_info.reduction() == [4, 8, 16, 32]


def test_features_only_out_indices_and_any_size():
    model = swinv2.create_model("swinv2_tiny_window8_256", features_only=True, out_indices=(1, 3),
                                strict_img_size=False, img_size=512, window_size=16, pretrained_window_sizes=[8, 8, 8, 8],
                                **{k: v for k, v in TINY.items() if k != "num_classes"})
    assert model.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 100, 140))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 13, 18), (1, 128, 4, 5)]
    assert "head.weight" not in model.state_dict() and "norm.weight" not in model.state_dict()


# ------------------------------------------------------------------ memory savers
def loss_and_grads(model: torch.nn.Module, x: torch.Tensor):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    loss = (model(x) ** 2).sum()
    loss.backward()
    return loss.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("savers", [dict(use_checkpoint=True), dict(attention_chunk_size=3), dict(use_checkpoint=True, attention_chunk_size=5)])
def test_memory_savers_give_identical_results(savers):
    torch.manual_seed(0)
    plain = randomise(swinv2.SwinTransformerV2(img_size=64, window_size=4, strict_img_size=False, **TINY))
    saving = swinv2.SwinTransformerV2(img_size=64, window_size=4, strict_img_size=False, **TINY, **savers).eval()
    saving.load_state_dict(plain.state_dict())
    for size in [(64, 64), (60, 52)]:  # with and without padding (chunks then cut through the mask)
        x = torch.randn(2, 3, *size)
        loss_a, input_grad_a, grads_a = loss_and_grads(plain, x)
        loss_b, input_grad_b, grads_b = loss_and_grads(saving, x)
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(input_grad_a, input_grad_b, rtol=1e-5, atol=1e-6)
        for name in grads_a:
            # Chunks sum a parameter's gradient over windows in another order: float rounding only.
            scale = grads_a[name].abs().max().item()
            torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-5 * scale)


def test_features_only_model_loads_a_classifier_checkpoint(tmp_path):
    torch.manual_seed(0)
    classifier = randomise(swinv2.SwinTransformerV2(img_size=64, window_size=4, **TINY))
    swinv2.save_pretrained(classifier, tmp_path / "classifier")
    backbone = swinv2.create_model("swinv2_tiny_window8_256", pretrained=tmp_path / "classifier", features_only=True,
                                   img_size=64, window_size=4, **{k: v for k, v in TINY.items() if k != "num_classes"})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        last_map = backbone.eval()(x)[-1]  # (1, 128, 2, 2)
        # The classifier's logits are its head applied to the pooled, normalised last map.
        pooled = classifier.norm(last_map.permute(0, 2, 3, 1)).mean(dim=(1, 2))
        torch.testing.assert_close(classifier.head(pooled), classifier(x), rtol=1e-5, atol=1e-5)
