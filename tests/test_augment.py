"""`swinv2.data.augment`: batched training augmentation, soft targets and the evaluation preprocessing,
checked by statistics over many draws and against hand computation."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from swinv2.data import (
    DATASET_STATS,
    EvalPreprocess,
    MixupCutmix,
    RandomErasing,
    TrainAugmentation,
    soft_target_cross_entropy,
)
from swinv2.errors import ConfigError

ALL_OFF = dict(scale=None, hflip=0, color_jitter=0, randaugment=None, random_erasing=0, mixup=0, cutmix=0,
               label_smoothing=0)
# Label smoothing 0.1 over 4 classes, by hand: off = 0.1 / 4 = 0.025, on = 1 - 0.1 + 0.025 = 0.925.
OFF, ON = 0.025, 0.925


def augmentation(img_size: int, channels: int = 1, num_classes: int = 4, **parts) -> TrainAugmentation:
    """Everything off except `parts`; mean 0 and std 1, so outputs are pixels / 255."""
    return TrainAugmentation(img_size, (0.0,) * channels, (1.0,) * channels, num_classes, **{**ALL_OFF, **parts})


def random_images(count: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def constant_images(values: list[float], size: int) -> torch.Tensor:
    """(B, 1, size, size), image i filled with values[i]."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()


# ----------------------------------------------------------------------------------------------- geometry


def test_all_parts_off_is_normalisation_and_one_hot_targets():
    images = random_images(6, 3, 8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    mean, std = DATASET_STATS["imagenet"]
    inputs, targets = TrainAugmentation(8, mean, std, 4, **ALL_OFF)(images, labels)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(inputs, expected)
    assert torch.equal(targets, F.one_hot(labels, 4).float())

    _, smoothed = augmentation(8, channels=3, label_smoothing=0.1)(images, labels)
    assert smoothed[0].tolist() == pytest.approx([ON, OFF, OFF, OFF])
    assert smoothed.sum(dim=1).tolist() == pytest.approx([1.0] * 6)


def test_flip_probability_is_one_half():
    torch.manual_seed(0)
    images = random_images(400, 1, 8)
    # scale (1, 1) and ratio (1, 1): the crop is the whole image, so only the flips change anything.
    outputs = augmentation(8, hflip=0.5, scale=(1.0, 1.0), ratio=(1.0, 1.0))(images, torch.zeros(400).long())[0] * 255
    same = (outputs - images.float()).abs().amax(dim=(1, 2, 3)) < 1e-3
    mirrored = (outputs - images.float().flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-3
    assert torch.all(same ^ mirrored)  # each image exactly itself or its mirror image
    assert abs(mirrored.float().mean().item() - 0.5) < 0.1  # binomial std 0.025 over 400 images


def test_crops_are_sub_windows_placed_uniformly():
    torch.manual_seed(1)
    images = random_images(500, 1, 8)
    # Area 1/4 of 8x8 at aspect 1 is a 4x4 window; resized to 4x4 it is sampled at the pixel centres.
    outputs = augmentation(4, scale=(0.25, 0.25), ratio=(1.0, 1.0))(images, torch.zeros(500).long())[0] * 255
    positions = []
    for image, output in zip(images.float(), outputs):
        windows = image.unfold(1, 4, 1).unfold(2, 4, 1)[0]  # (5, 5, 4, 4): every 4x4 window
        error = (windows - output[0]).abs().amax(dim=(2, 3))
        top, left = divmod(int(error.argmin()), 5)
        assert error[top, left] < 1e-3
        positions.append((top, left))
    tops, lefts = np.array(positions).T
    assert len(set(positions)) == 25  # all 5 x 5 offsets occur
    assert abs(tops.mean() - 2.0) < 0.25 and abs(lefts.mean() - 2.0) < 0.25  # uniform over 0..4: mean 2


def test_crop_falls_back_to_the_centre_when_no_draw_fits():
    images = random_images(3, 1, 8)
    # Aspect 2 at full area needs 11 x 6 pixels: no draw fits an 8x8 image, and torchvision's fallback
    # keeps the full width and the height 8 / 2 = 4, centred: rows 2..5.
    outputs = augmentation((4, 8), scale=(1.0, 1.0), ratio=(2.0, 2.0))(images, torch.zeros(3).long())[0] * 255
    torch.testing.assert_close(outputs, images[:, :, 2:6, :].float(), atol=1e-3, rtol=0)


def test_random_resized_crop_area_and_aspect_stay_in_range():
    torch.manual_seed(2)
    size, out = 64, 32
    coordinates = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"))  # (2, H, W)
    images = coordinates.to(torch.uint8).expand(300, 2, size, size)  # channel 0: row index, 1: column index
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    outputs = augmentation(out, channels=2, scale=scale, ratio=ratio)(images, torch.zeros(300).long())[0] * 255
    # Output pixel j samples the source at left + (j + 0.5) * w / out - 0.5, so the sampled coordinates
    # span w * (out - 1) / out. Read in the middle, away from the clamped border taps.
    middle = out // 2
    heights = (outputs[:, 0, -1, middle] - outputs[:, 0, 0, middle]) * out / (out - 1)
    widths = (outputs[:, 1, middle, -1] - outputs[:, 1, middle, 0]) * out / (out - 1)
    area = heights * widths / size**2
    assert area.min() > scale[0] - 0.01 and area.max() < scale[1] + 0.01
    aspect = widths / heights
    assert aspect.min() > ratio[0] - 0.03 and aspect.max() < ratio[1] + 0.03
    assert area.min() < 0.15 and area.max() > 0.9  # the whole range is used


# ----------------------------------------------------------------------------------------------- Mixup / CutMix


def test_mixup_targets_are_lam_times_smoothed_one_hot_plus_the_partners():
    values = [0.0, 1.0, 2.0, 3.0]
    for seed in range(5):
        torch.manual_seed(seed)
        mix = MixupCutmix(4, mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.1)
        inputs, targets = mix(constant_images(values, 4), torch.tensor([0, 1, 2, 3]))
        # Image 0 (all 0) is mixed with image 3 (all 3): 0 * lam + 3 * (1 - lam).
        lam = 1 - inputs[0, 0, 0, 0].item() / 3
        assert 0 < lam < 1
        for i in range(4):
            torch.testing.assert_close(inputs[i], torch.full((1, 4, 4), lam * values[i] + (1 - lam) * values[3 - i]))
        partner = [3, 2, 1, 0]
        for i in range(4):
            expected = [lam * (ON if k == i else OFF) + (1 - lam) * (ON if k == partner[i] else OFF) for k in range(4)]
            assert targets[i].tolist() == pytest.approx(expected, abs=1e-6)
        assert targets.sum(dim=1).tolist() == pytest.approx([1.0] * 4)


def test_mixup_lam_follows_beta_alpha_alpha():
    torch.manual_seed(7)
    mix = MixupCutmix(4, mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.0)
    images = constant_images([0.0, 1.0, 2.0, 3.0], 1)
    lams = torch.tensor([1 - mix(images, torch.arange(4))[0][0, 0, 0, 0].item() / 3 for _ in range(1000)])
    # Beta(0.8, 0.8): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.0962 (a uniform lam would give 0.0833);
    # the sample variance of 1000 draws has a standard deviation of about 0.0025.
    assert abs(lams.mean().item() - 0.5) < 0.03
    assert abs(lams.var().item() - 1 / (4 * 2.6)) < 0.008


def test_cutmix_lam_is_the_pasted_box_share():
    for seed in range(30):
        torch.manual_seed(seed)
        mix = MixupCutmix(4, mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0)
        inputs, targets = mix(constant_images([0.0, 1.0, 2.0, 3.0], 16), torch.tensor([0, 1, 2, 3]))
        pasted = inputs[0, 0] == 3.0  # image 0 receives a box of image 3
        assert torch.all(pasted | (inputs[0, 0] == 0.0))
        rows, cols = pasted.nonzero().unbind(1)
        if rows.numel():  # the pasted pixels form one rectangle
            box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert int(box_area) == int(pasted.sum())
        own_share = 1 - pasted.float().mean().item()
        assert targets[0].tolist() == pytest.approx([own_share, 0, 0, 1 - own_share], abs=1e-6)


def test_mix_probability_and_switch_probability():
    torch.manual_seed(3)
    mix = MixupCutmix(4, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.6, switch_prob=0.5, label_smoothing=0.0)
    images = constant_images([0.0, 1.0, 2.0, 3.0], 32)
    counts = {"none": 0, "cutmix": 0, "mixup": 0}
    for _ in range(400):
        inputs, _ = mix(images, torch.arange(4))
        own, partner = inputs[0] == 0.0, inputs[0] == 3.0
        if torch.all(own):
            counts["none"] += 1
        elif torch.all(own | partner):
            counts["cutmix"] += 1
        else:
            counts["mixup"] += 1
    # Expected 0.4 / 0.3 / 0.3 (an empty CutMix box, lam > 0.996, counts as none); std <= 0.025.
    assert abs(counts["none"] / 400 - 0.4) < 0.08
    assert abs(counts["cutmix"] / 400 - 0.3) < 0.08 and abs(counts["mixup"] / 400 - 0.3) < 0.08


# ----------------------------------------------------------------------------------------------- erasing, colour


def test_random_erasing_boxes_and_probability():
    torch.manual_seed(4)
    height = width = 32
    erased = RandomErasing(1.0)(torch.zeros(300, 3, height, width))
    placements = []
    for image in erased:
        mask = (image != 0).any(dim=0)  # N(0, 1) noise is never exactly 0
        rows, cols = mask.nonzero().unbind(1)
        if rows.numel() == 0:
            continue  # no box fitted in 10 draws
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert h * w == int(mask.sum()) and torch.all(image[:, mask] != 0)  # one rectangle, every channel
        # h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)) with area in [0.02, 1/3] of the
        # image and aspect h / w in [0.3, 1 / 0.3]; the rounding moves each side by at most 1/2.
        assert (h + 0.5) * (w + 0.5) >= 0.02 * height * width and (h - 0.5) * (w - 0.5) <= height * width / 3
        assert (h + 0.5) / (w - 0.5) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3
        assert h < height and w < width
        placements += [int(rows.min()) / (height - h), int(cols.min()) / (width - w)]
    assert abs(np.mean(placements) - 0.5) < 0.05  # offsets uniform over 0..(side - box)
    noise = erased[erased != 0]
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05

    sometimes = RandomErasing(0.25)(torch.zeros(800, 1, height, width))
    share = (sometimes != 0).flatten(1).any(dim=1).float().mean().item()
    assert abs(share - 0.25) < 0.05  # binomial std 0.015; boxes that never fit are rare (< 1%)


def test_colour_jitter_keeps_gray_gray_and_pixel_order():
    torch.manual_seed(5)
    gray = random_images(16, 1, 8)
    rgb_out = augmentation(8, channels=3, color_jitter=0.4)(gray.expand(-1, 3, -1, -1), torch.zeros(16).long())[0]
    torch.testing.assert_close(rgb_out[:, 0], rgb_out[:, 1], atol=1e-5, rtol=0)  # saturation, hue: no colour
    torch.testing.assert_close(rgb_out[:, 0], rgb_out[:, 2], atol=1e-5, rtol=0)
    # Grayscale batches: brightness and contrast with positive factors never swap two pixels' order.
    out = augmentation(8, color_jitter=0.4)(gray, torch.zeros(16).long())[0]
    assert not torch.allclose(out, gray.float() / 255)
    order = gray.flatten(1).float().argsort(dim=1)
    assert torch.all(out.flatten(1).gather(1, order).diff(dim=1) >= -1e-6)


def test_randaugment_on_gray_and_rgb_batches_and_its_magnitude_scale():
    torch.manual_seed(6)
    for channels in (1, 3):
        images = random_images(70, channels, 16)  # 3 groups of up to 32 images
        out, _ = augmentation(16, channels=channels, randaugment=(2, 9))(images, torch.zeros(70).long())
        assert out.shape == images.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1  # mean 0, std 1: still pixels in [0, 1]
    with pytest.raises(ConfigError, match="timm's scale"):
        augmentation(16, randaugment=(2, 30))


# ----------------------------------------------------------------------------------------------- loss, evaluation


def test_soft_target_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    # Row 0: logsumexp = 3 + ln(1 + e^-1 + e^-2) = 3.4076059644; minus sum t * x = 2.3 -> 1.1076059644.
    # Row 1: ln 3 = 1.0986122887. Mean: 1.1031091266.
    row0 = 3 + math.log(1 + math.exp(-1) + math.exp(-2)) - 2.3
    assert row0 == pytest.approx(1.1076059644)
    assert soft_target_cross_entropy(logits, targets).item() == pytest.approx((row0 + math.log(3)) / 2, rel=1e-6)
    hard = torch.tensor([2, 0])
    torch.testing.assert_close(soft_target_cross_entropy(logits, F.one_hot(hard, 3).float()),
                               F.cross_entropy(logits, hard))


def pillow_evaluation(pixels: np.ndarray, img_size: int, crop_pct: float) -> torch.Tensor:
    """The official evaluation by hand with Pillow: shorter side to int(img_size / crop_pct), bicubic,
    then the centre crop; (C, img, img) in 0..255."""
    height, width = pixels.shape[:2]
    shorter = int(img_size / crop_pct)
    new_width, new_height = (shorter, int(shorter * height / width)) if width <= height else (int(shorter * width / height), shorter)
    image = Image.fromarray(pixels).resize((new_width, new_height), Image.BICUBIC)
    top, left = int(round((new_height - img_size) / 2)), int(round((new_width - img_size) / 2))
    cropped = np.array(image.crop((left, top, left + img_size, top + img_size)), dtype=np.float32)
    return torch.from_numpy(cropped).reshape(img_size, img_size, -1).permute(2, 0, 1)


@pytest.mark.parametrize("height, width, channels, img_size, crop_pct", [
    (50, 40, 3, 32, 0.875),  # upscaled (45 x 36), crop offsets round(6.5) = 6 and 2
    (300, 400, 3, 64, 0.875),  # downscaled with antialiasing
    (28, 28, 1, 28, 0.875),  # a Fashion-MNIST-sized grayscale image: 28 -> 32 -> centre 28
])
def test_eval_preprocess_matches_pillow(height, width, channels, img_size, crop_pct):
    rng = np.random.default_rng(height)
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    batch = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    mean, std = (0.5,) * channels, (0.25,) * channels
    output = EvalPreprocess(img_size, mean, std, crop_pct)(batch)[0]
    assert output.shape == (channels, img_size, img_size)
    levels = output * 0.25 * 255 + 0.5 * 255  # back to 0..255
    expected = pillow_evaluation(pixels[..., 0] if channels == 1 else pixels, img_size, crop_pct)
    # Pillow filters with fixed-point weights (22 bits) and rounds each pass to uint8; we round each
    # pass too, in floating point, so a value within rounding error of k + 1/2 may land one level off.
    # Noise images (the worst case for bicubic overshoot) show this on under 0.1% of pixels.
    difference = (levels - expected).abs()
    assert difference.max() <= 1 + 1e-3
    assert (difference > 0.5).float().mean() < 0.005


def test_eval_preprocess_plain_resize_and_rectangular_sizes():
    pixels = random_images(2, 3, 16)
    identity = EvalPreprocess(16, (0.0,) * 3, (1.0,) * 3, crop_pct=1.0)(pixels)
    torch.testing.assert_close(identity, pixels.float() / 255)  # nothing to resize or crop
    rectangular = EvalPreprocess((8, 12), (0.0,) * 3, (1.0,) * 3, crop_pct=1.0)(pixels)
    expected = np.array(Image.fromarray(pixels[0].permute(1, 2, 0).numpy()).resize((12, 8), Image.BICUBIC))
    assert rectangular.shape == (2, 3, 8, 12)
    assert (rectangular[0] * 255 - torch.from_numpy(expected).permute(2, 0, 1).float()).abs().max() <= 1 + 1e-3
    with pytest.raises(ConfigError, match="crop_pct"):
        EvalPreprocess(16, (0.0,), (1.0,), crop_pct=1.5)


def test_model_and_benchmark_need_no_kornia():
    """Only augmentation imports kornia: the model, inference and the benchmark run where it is missing (the GPU
    machines' image has no kornia), and asking for augmentation there names the missing package."""
    import subprocess
    import sys

    script = """
import importlib.abc, sys
class NoKornia(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "kornia":
            raise ModuleNotFoundError("No module named 'kornia'", name="kornia")
sys.meta_path.insert(0, NoKornia())
import torch, swinv2, swinv2.benchmark, swinv2.cli
model = swinv2.create_model("swinv2_tiny_window8_256", img_size=32, window_size=4, embed_dim=8, depths=(1, 1),
                            num_heads=(1, 2), num_classes=3).eval()
with torch.no_grad():
    print(tuple(model(torch.randn(2, 3, 32, 32)).shape), "kornia" in sys.modules)
try:
    swinv2.data.TrainAugmentation
except ModuleNotFoundError as error:
    print(error.name)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["(2, 3) False", "kornia"]
