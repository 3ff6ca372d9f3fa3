"""SimMIM (SPEC section 3): the mask generator, the mask token, the decoder, the loss with and without
normalised targets, official-layout checkpoints, fine-tuning from them, and the reconstruction picture.

Expected values are computed here independently: explicit loops over pixels in numpy for the loss,
the window statistics and the pixel shuffle, and hand-built official-layout state dicts."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from conftest import official_buffers, randomize_

import swinv2
from swinv2 import (
    CheckpointError,
    ConfigError,
    InputError,
    MaskGenerator,
    SimMIM,
    SwinTransformerV2,
    SwinV2Config,
)
from swinv2.checkpoints import detect_layout, load_pretrained
from swinv2.checkpoints.loading import load_simmim_state_dict, save_simmim
from swinv2.models.simmim import norm_target_window_for, normalized_targets
from swinv2.plots import DPI, plot_reconstructions, reconstruction_size

# 32 px images, 2 px patches: stage 0 is 16x16 tokens (window 4, shifted), stage 1 is 8x8 (window 4, shifted);
# encoder stride 2 * 2 = 4. 8 px mask patches: a 4x4 grid of them, each 4x4 tokens.
TINY = {"img_size": 32, "patch_size": 2, "embed_dim": 16, "depths": (1, 2), "num_heads": (1, 2), "window_size": 4,
        "drop_path_rate": 0.0}
MASK_PATCH = 8
BASE_NAME = "swinv2_tiny_window8_256"


def tiny_simmim(norm_target_window: int | str | None = None, seed: int = 0, **overrides) -> SimMIM:
    model = SimMIM(SwinV2Config(**{**TINY, **overrides}, num_classes=0), norm_target_window=norm_target_window,
                   mask_patch_size=MASK_PATCH)
    return randomize_(model, seed=seed).eval()


def fixed_images(batch: int = 2, channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(11))


def fixed_mask() -> torch.Tensor:
    """(2, 16, 16) tokens: sample 0 masks the top-left and bottom-right 8 px mask patches, sample 1 a column."""
    patches = torch.zeros(2, 4, 4, dtype=torch.int64)
    patches[0, 0, 0] = patches[0, 3, 3] = 1
    patches[1, :, 2] = 1
    return patches.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk: 8-byte signature, length, 'IHDR', then two big-endian ints."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


# ---------------------------------------------------------------------------------- mask generator
def test_official_mask_generator_numbers():
    # 192 px, 32 px mask patches: 6x6 = 36 patches, ceil(36 * 0.6) = 22 masked, tokens 48x48 (4 px patches).
    generator = MaskGenerator(192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6)
    assert (generator.patch_count, generator.mask_count, generator.token_shape) == (36, 22, (48, 48))
    mask = generator(batch_size=3, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (3, 48, 48) and mask.dtype == torch.int64
    assert torch.equal(mask.sum(dim=(1, 2)), torch.full((3,), 22 * 8 * 8))
    assert generator().shape == (48, 48)


@pytest.mark.parametrize("input_size, mask_patch, model_patch, ratio", [
    (32, 8, 2, 0.6),  # 16 patches, ceil(9.6) = 10
    (32, 4, 4, 0.5),  # 64 patches, 32 exactly
    ((64, 32), 16, 4, 0.3),  # non-square: 4x2 = 8 patches, ceil(2.4) = 3
])
def test_masks_count_and_align_to_mask_patches(input_size, mask_patch, model_patch, ratio):
    generator = MaskGenerator(input_size, mask_patch_size=mask_patch, model_patch_size=model_patch, mask_ratio=ratio)
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    rows, columns, scale = height // mask_patch, width // mask_patch, mask_patch // model_patch
    expected_count = math.ceil(rows * columns * ratio)
    masks = generator(batch_size=20, generator=torch.Generator().manual_seed(1))
    assert masks.shape == (20, rows * scale, columns * scale)
    for mask in masks:
        blocks = mask.view(rows, scale, columns, scale).permute(0, 2, 1, 3).reshape(rows, columns, -1)
        # Every mask patch is all masked or all visible, and exactly ceil(patches * ratio) are masked.
        assert torch.all(blocks.min(dim=-1).values == blocks.max(dim=-1).values)
        assert int(blocks[..., 0].sum()) == expected_count
        assert set(mask.unique().tolist()) <= {0, 1}


def test_every_mask_patch_is_equally_likely():
    generator = MaskGenerator(32, mask_patch_size=8, model_patch_size=2, mask_ratio=0.6)
    draws = 4000
    masks = generator(batch_size=draws, generator=torch.Generator().manual_seed(2))
    frequency = masks[:, ::4, ::4].double().mean(dim=0)  # (4, 4): one entry per mask patch
    # Each patch is masked with probability 10/16; the standard error over 4000 draws is 0.0077.
    assert torch.all((frequency - 10 / 16).abs() < 0.04), frequency
    # Different samples get different masks; the same seed gives the same masks.
    assert len({tuple(mask.flatten().tolist()) for mask in masks[:50]}) > 40
    again = generator(batch_size=draws, generator=torch.Generator().manual_seed(2))
    assert torch.equal(masks, again)


def test_mask_generator_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"28x28 is not a multiple of the 32 px mask patch.*\(4, 28\)"):
        MaskGenerator(28, mask_patch_size=32, model_patch_size=4)
    with pytest.raises(ConfigError, match="6 px mask patch is not a multiple of the model's 4 px patch"):
        MaskGenerator(24, mask_patch_size=6, model_patch_size=4)
    with pytest.raises(ConfigError, match=r"mask_ratio must be in \(0, 1\]"):
        MaskGenerator(32, mask_patch_size=8, model_patch_size=4, mask_ratio=0.0)
    with pytest.raises(ConfigError, match="32x32 is not a multiple of the 12 px mask patch"):
        SimMIM(SwinV2Config(**TINY, num_classes=0), mask_patch_size=12)


# --------------------------------------------------------------------------- encoder and mask token
def test_mask_token_replaces_exactly_the_masked_tokens():
    model = tiny_simmim()
    images, mask = fixed_images(), fixed_mask()
    plain = model.encoder.patch_embed(images)  # (2, 16, 16, 16) after the patch-embed norm
    inserted = model.encoder.embed_with_mask(images, mask)
    token = model.encoder.mask_token.view(-1)
    masked = mask.bool()
    assert torch.equal(inserted[masked], token.expand(int(masked.sum()), -1))
    assert torch.equal(inserted[~masked], plain[~masked])


def test_unmasked_encoder_is_the_plain_backbone():
    model = tiny_simmim()
    images = fixed_images()
    backbone = SwinTransformerV2(SwinV2Config(**TINY, num_classes=0)).eval()
    body = {key: value for key, value in model.encoder.state_dict().items() if key != "mask_token"}
    backbone.load_state_dict(body, strict=True)
    expected = backbone.forward_features(images).permute(0, 3, 1, 2)  # (2, 32, 8, 8)
    output = model.encoder(images, torch.zeros(2, 16, 16))
    assert output.shape == (2, 32, 8, 8)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    # And masking changes the features.
    assert not torch.allclose(model.encoder(images, fixed_mask()), expected)


def test_mask_token_initialisation_and_gradient():
    # Official: trunc_normal(std .02); the backbone keeps its own init (post-norms zero).
    encoder = SimMIM(SwinV2Config(img_size=32, embed_dim=512, depths=(1,), num_heads=(16,), window_size=8),
                     mask_patch_size=8).encoder
    assert encoder.mask_token.shape == (1, 1, 512)
    assert 0.017 < float(encoder.mask_token.detach().std()) < 0.023
    assert torch.all(encoder.layers[0].blocks[0].norm1.weight == 0)

    model = tiny_simmim()
    model(fixed_images(), fixed_mask()).backward()
    assert model.encoder.mask_token.grad.abs().sum() > 0
    model.zero_grad()
    model(fixed_images(), torch.zeros(2, 16, 16)).backward()
    assert model.encoder.mask_token.grad is None or torch.all(model.encoder.mask_token.grad == 0)


def test_no_weight_decay_covers_what_the_official_prefix_bug_misses():
    names = tiny_simmim().no_weight_decay_names()
    for name in ("encoder.mask_token", "encoder.layers.0.blocks.0.attn.cpb_mlp.0.weight",
                 "encoder.layers.1.blocks.1.attn.logit_scale", "encoder.patch_embed.norm.weight", "decoder.0.bias"):
        assert name in names
    for name in ("decoder.0.weight", "encoder.layers.0.blocks.0.attn.qkv.weight", "encoder.patch_embed.proj.weight"):
        assert name not in names


# ----------------------------------------------------------------------------------------- decoder
def test_decoder_is_a_1x1_conv_then_pixel_shuffle():
    model = tiny_simmim()
    images, mask = fixed_images(), fixed_mask()
    features = model.encoder(images, mask).detach().double().numpy()  # (2, 32, 8, 8)
    weight = model.decoder[0].weight.detach().double().numpy()[:, :, 0, 0]  # (4 * 4 * 3, 32)
    bias = model.decoder[0].bias.detach().double().numpy()
    stride = 4
    expected = np.zeros((2, 3, 32, 32))
    for b in range(2):
        for y in range(32):
            for x in range(32):
                token = features[b, :, y // stride, x // stride]
                for c in range(3):
                    # PixelShuffle: output channel c, offset (i, j) in the block comes from channel c*s*s + i*s + j.
                    row = c * stride * stride + (y % stride) * stride + (x % stride)
                    expected[b, c, y, x] = weight[row] @ token + bias[row]
    prediction = model.predict(images, mask).detach().double().numpy()
    np.testing.assert_allclose(prediction, expected, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------- loss
def masked_l1_by_hand(prediction: np.ndarray, target: np.ndarray, token_mask: np.ndarray, patch: int) -> float:
    """sum over masked pixels and channels of |target - prediction| / (masked pixels + 1e-5) / channels."""
    batch, channels, height, width = target.shape
    total, masked_pixels = 0.0, 0
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                if token_mask[b, y // patch, x // patch]:
                    masked_pixels += 1
                    total += sum(abs(target[b, c, y, x] - prediction[b, c, y, x]) for c in range(channels))
    return total / (masked_pixels + 1e-5) / channels


def window_normalised_by_hand(images: np.ndarray, window: int) -> np.ndarray:
    """Each pixel: (x - mean) / sqrt(unbiased variance + 1e-6) over the window's pixels inside the image."""
    half = window // 2
    batch, channels, height, width = images.shape
    result = np.zeros_like(images, dtype=np.float64)
    for b in range(batch):
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    values = images[b, c, max(0, y - half): y + half + 1, max(0, x - half): x + half + 1].ravel()
                    mean = values.mean()
                    variance = ((values - mean) ** 2).sum() / (len(values) - 1)
                    result[b, c, y, x] = (images[b, c, y, x] - mean) / math.sqrt(variance + 1e-6)
    return result


def test_loss_by_hand_with_raw_pixel_targets():
    model = tiny_simmim(norm_target_window=None)
    images, mask = fixed_images(), fixed_mask()
    prediction = model.predict(images, mask).detach().double().numpy()
    expected = masked_l1_by_hand(prediction, images.double().numpy(), mask.numpy(), patch=2)
    loss = model(images, mask)
    assert loss.ndim == 0
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_normalised_targets_by_hand_at_the_borders():
    # A non-square image and a window larger than one side: border windows hold fewer pixels.
    images = torch.rand(1, 2, 6, 11, generator=torch.Generator().manual_seed(3)) * 4
    for window in (3, 7):
        expected = window_normalised_by_hand(images.double().numpy(), window)
        np.testing.assert_allclose(normalized_targets(images, window).double().numpy(), expected, rtol=1e-4, atol=1e-4)
    # A flat image has no variance: the target is 0, not a division by zero.
    assert torch.equal(normalized_targets(torch.ones(1, 1, 5, 5), 3), torch.zeros(1, 1, 5, 5))


def test_loss_by_hand_with_normalised_targets():
    model = tiny_simmim(norm_target_window=5)
    images, mask = fixed_images() * 3 + 2, fixed_mask()  # away from N(0, 1), where normalising changes little
    prediction = model.predict(images, mask).detach().double().numpy()
    target = window_normalised_by_hand(images.double().numpy(), 5)
    expected = masked_l1_by_hand(prediction, target, mask.numpy(), patch=2)
    assert float(model(images, mask).detach()) == pytest.approx(expected, rel=1e-4)
    # The normalised loss differs from the raw one: the option is not ignored.
    raw = masked_l1_by_hand(prediction, images.double().numpy(), mask.numpy(), patch=2)
    assert abs(expected - raw) > 0.5


def test_norm_target_window_rule():
    # 47 at 192 px (official), nearest odd size to 47 * side / 192 elsewhere, at least 3.
    assert [norm_target_window_for(size) for size in (192, 32, 28, 64, 224, 256, 8)] == [47, 7, 7, 15, 55, 63, 3]
    assert norm_target_window_for((192, 256)) == 47  # the shorter side
    assert SimMIM(SwinV2Config(**TINY, num_classes=0), mask_patch_size=8).norm_target_window == 7  # 'auto'
    with pytest.raises(ConfigError, match="odd positive int"):
        SimMIM(SwinV2Config(**TINY, num_classes=0), norm_target_window=4, mask_patch_size=8)


# ------------------------------------------------------------------------------------- reconstruct
@pytest.mark.parametrize("window", [None, 5])
def test_reconstruct_matches_the_loss(window):
    model = tiny_simmim(norm_target_window=window)
    images, mask = fixed_images(), fixed_mask()
    reconstruction = model.reconstruct(images, mask)
    assert reconstruction.shape == images.shape and not reconstruction.requires_grad
    error = reconstruction.double().numpy() - images.double().numpy()  # in pixels
    if window is not None:
        # Both the reconstruction and the images map to the target space by (x - mean) / std with the
        # images' local statistics, so the error there is the pixel error / local std.
        error = error / local_std(images, window)
    expected = masked_l1_by_hand(error, np.zeros_like(error), mask.numpy(), patch=2)
    assert float(model(images, mask).detach()) == pytest.approx(expected, rel=1e-4)


def local_std(images: torch.Tensor, window: int) -> np.ndarray:
    """sqrt(unbiased variance + 1e-6) over each pixel's window inside the image, by hand."""
    half = window // 2
    values = images.double().numpy()
    result = np.zeros_like(values)
    for index in np.ndindex(*values.shape):
        b, c, y, x = index
        patch = values[b, c, max(0, y - half): y + half + 1, max(0, x - half): x + half + 1].ravel()
        result[index] = math.sqrt(patch.var(ddof=1) + 1e-6)
    return result


def test_input_errors_name_the_fix():
    model = tiny_simmim()
    with pytest.raises(InputError, match=r"\(2, 16, 16\) at token resolution"):
        model(fixed_images(), torch.zeros(2, 4, 4))
    with pytest.raises(InputError, match="expected 32x32 images"):
        model(torch.randn(2, 3, 64, 64), torch.zeros(2, 32, 32))
    loose = tiny_simmim(strict_img_size=False)
    with pytest.raises(InputError, match="multiple of 4 px"):
        loose(torch.randn(1, 3, 30, 30), torch.zeros(1, 15, 15))
    with pytest.raises(ConfigError, match="no classification head"):
        swinv2.create_simmim(BASE_NAME, num_classes=10)


# ------------------------------------------------------------------------------------- checkpoints
def official_simmim_dict(model: SimMIM) -> dict[str, torch.Tensor]:
    """What the official pre-training saves for this model: encoder.* with the window buffers (junk
    values here), the old `rpe_mlp` name in one block, encoder.mask_token and decoder.0.*."""
    encoder = {key: value for key, value in model.encoder.state_dict().items() if key != "mask_token"}
    encoder = official_buffers(encoder, img_size=32, window_size=4, depths=TINY["depths"], patch_size=2)
    encoder = {key.replace("layers.1.blocks.1.attn.cpb_mlp.", "layers.1.blocks.1.attn.rpe_mlp."): value
               for key, value in encoder.items()}
    state = {f"encoder.{key}": value.clone() for key, value in encoder.items()}
    state["encoder.mask_token"] = model.encoder.mask_token.detach().clone()
    state["decoder.0.weight"] = model.decoder[0].weight.detach().clone()
    state["decoder.0.bias"] = model.decoder[0].bias.detach().clone()
    return state


def assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    a, b = first.state_dict(), second.state_dict()
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_official_layout_round_trip(tmp_path, suffix):
    model = tiny_simmim(seed=1)
    path = save_simmim(model, tmp_path / f"simmim{suffix}")
    if suffix == ".pth":
        saved = torch.load(path, weights_only=True)
        assert list(saved) == ["model"]  # {'model': state}, as the official code saves
        state = saved["model"]
    else:
        state = swinv2.read_checkpoint(path)[0]
    assert detect_layout(state) == "simmim"
    assert state["encoder.mask_token"].shape == (1, 1, 16)
    assert state["decoder.0.weight"].shape == (4 * 4 * 3, 32, 1, 1)  # Conv2d(8C -> stride^2 * 3, 1x1)
    assert "encoder.layers.0.blocks.0.attn.qkv.weight" in state and not any(key.startswith("head") for key in state)
    loaded = swinv2.create_simmim(BASE_NAME, pretrained=path, norm_target_window=None, mask_patch_size=MASK_PATCH,
                                  **{key: value for key, value in TINY.items()})
    assert_same_weights(loaded, model)


def test_hand_built_official_dict_loads():
    source = tiny_simmim(seed=2)
    state = official_simmim_dict(source)
    assert any(key.endswith("relative_position_index") for key in state)
    target = tiny_simmim(seed=3)
    load_simmim_state_dict(target, state)
    assert_same_weights(target, source)
    images, mask = fixed_images(), fixed_mask()
    assert torch.equal(target(images, mask), source(images, mask))


def test_wrong_checkpoints_are_refused_with_the_reason():
    model = tiny_simmim()
    classifier = SwinTransformerV2(SwinV2Config(**TINY, num_classes=5))
    with pytest.raises(CheckpointError, match="not a SimMIM one.*create_model"):
        load_simmim_state_dict(model, classifier.state_dict())
    wider = SimMIM(SwinV2Config(**{**TINY, "embed_dim": 32, "num_heads": (1, 2)}, num_classes=0), mask_patch_size=8)
    with pytest.raises(CheckpointError, match=r"(?s)mis-shaped.*encoder.mask_token: expected \(1, 1, 16\), found \(1, 1, 32\).*embed_dim=32"):
        load_simmim_state_dict(model, wider.state_dict())


def test_fine_tuning_from_simmim_with_another_window_and_resolution(tmp_path):
    simmim = tiny_simmim(seed=4)
    path = save_simmim(simmim, tmp_path / "simmim.pth")
    # Pre-trained at 32 px / window 4; fine-tuned at 64 px / window 8 with 5 classes.
    overrides = dict(TINY, img_size=64, window_size=8, num_classes=5)
    classifier = SwinTransformerV2(SwinV2Config(**overrides))
    fresh_head = {key: value.clone() for key, value in classifier.head.state_dict().items()}
    with pytest.warns(UserWarning, match="no classification head"):
        load_pretrained(classifier, path, reset_head=True)
    encoder = simmim.encoder.state_dict()
    for key, value in classifier.state_dict().items():
        if key.startswith("head."):
            assert torch.equal(value, fresh_head[key.removeprefix("head.")])
        else:
            assert torch.equal(value, encoder[key]), key
    assert classifier.layers[1].blocks[1].window_size == (8, 8)  # 16x16 map, window 8
    logits = classifier(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()

    with pytest.warns(UserWarning, match="no classification head"):
        created = swinv2.create_model(BASE_NAME, pretrained=path, **overrides)
    for key, value in created.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, encoder[key]), key


# ------------------------------------------------------------------------------------------ picture
@pytest.mark.parametrize("channels", [3, 1])
def test_reconstruction_picture_has_the_grid_size(tmp_path, channels):
    model = tiny_simmim(norm_target_window=5, in_chans=channels)
    images = fixed_images(batch=3, channels=channels)
    mask = model.random_mask(3, generator=torch.Generator().manual_seed(0))
    mean, std = [0.5] * channels, [0.25] * channels
    png = plot_reconstructions(images, mask, model.reconstruct(images, mask), tmp_path / "pictures" / "recon.png",
                               mean=mean, std=std, max_images=8)
    width, height = reconstruction_size(3)
    assert png_size(png) == (round(width * DPI), round(height * DPI))
    with pytest.raises(ValueError, match="shape of the images"):
        plot_reconstructions(images, mask, images[:, :, :16], tmp_path / "bad.png")
