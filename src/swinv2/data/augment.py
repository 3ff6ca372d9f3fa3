"""Training augmentation and evaluation preprocessing on whole batches, on the device the batch is on.

`TrainAugmentation` is the official Swin recipe (timm's `create_transform` and `Mixup` as
microsoft/Swin-Transformer configures them), moved from per-image PIL work in loader processes to
batched tensor work: random resized crop (bicubic), horizontal flip, RandAugment or else colour
jitter, normalisation, random erasing with per-pixel normal noise, then Mixup or CutMix with
label-smoothed soft targets. Colour jitter and RandAugment are kornia's. The rest is written here:
kornia crops image by image (several times slower than one batched resampling), fills erased boxes
with a constant, and its mixing has neither timm's per-batch choice between Mixup and CutMix
(`switch_prob`) nor smoothed targets.

`EvalPreprocess` is the official evaluation resize (shorter side to img_size / crop_pct, bicubic with
antialiasing as Pillow does it) and centre crop on uint8 batches."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.augmentation.auto import RandAugment
from torch import nn

from ..errors import ConfigError

Size = Union[int, Sequence[int]]

# RandAugment magnitudes are given on timm's scale, where the official "rand-m9-mstd0.5-inc1" is 9 of 10;
# kornia's scale reaches the same maximum operation strength at 30 (and takes m < 30 only).
TIMM_MAGNITUDE_TO_KORNIA = 3.0
KORNIA_MAX_MAGNITUDE = 29.9
# kornia's RandAugment draws one pair of operations per call; calling it per group of this many
# images gives a batch several pairs, nearer timm's per-image choice, for a few ms per group.
RANDAUGMENT_GROUP = 32
ERASING_AREA = (0.02, 1 / 3)  # timm RandomErasing defaults: fraction of the image
ERASING_ASPECT = (0.3, 1 / 0.3)
ERASING_ATTEMPTS = 10


def pair(size: Size) -> tuple[int, int]:
    """An int or (height, width) as (height, width)."""
    if isinstance(size, numbers.Integral):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


class Normalize(nn.Module):
    """(x - mean) / std per channel; a single value applies to every channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(value <= 0 for value in std):
            raise ConfigError(f"mean {tuple(mean)} and std {tuple(std)} need one value each per channel, std > 0")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a float batch (B, C, H, W) to `size`, antialiased when shrinking: the filter
    Pillow uses (a = -0.5, support scaled with the reduction), which torch's antialias path copies."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The central `size` of (B, C, H, W), offsets rounded as torchvision rounds them."""
    height, width = images.shape[-2:]
    top = int(round((height - size[0]) / 2.0))
    left = int(round((width - size[1]) / 2.0))
    return images[..., top: top + size[0], left: left + size[1]]


def sample_crop_boxes(batch: int, height: int, width: int, scale: Sequence[float],
                      ratio: Sequence[float]) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for a whole batch: (B, 4) float (top, left, height, width).

    Up to 10 draws of area ~ U(scale) * H * W and log aspect (width / height) ~ U(log ratio); the first
    that fits is placed uniformly. Where none fits, the centre crop of the whole image clamped to `ratio`."""
    area = torch.empty(batch, 10).uniform_(*scale) * (height * width)
    aspect = torch.empty(batch, 10).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    widths = (area * aspect).sqrt().round()  # (B, 10)
    heights = (area / aspect).sqrt().round()
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first = fits.int().argmax(dim=1)  # the first draw that fits (argmax returns the first maximum)
    rows = torch.arange(batch)
    crop_height, crop_width = heights[rows, first], widths[rows, first]
    fallback_height, fallback_width = fallback_crop(height, width, ratio)
    found = fits.any(dim=1)
    crop_height = torch.where(found, crop_height, torch.tensor(float(fallback_height)))
    crop_width = torch.where(found, crop_width, torch.tensor(float(fallback_width)))
    # Offsets uniform over 0..(size - crop) inclusive, as torch.randint in torchvision; centred in the fallback.
    top = torch.where(found, (torch.rand(batch) * (height - crop_height + 1)).floor(), (height - crop_height) // 2)
    left = torch.where(found, (torch.rand(batch) * (width - crop_width + 1)).floor(), (width - crop_width) // 2)
    return torch.stack([top, left, crop_height, crop_width], dim=1)


def fallback_crop(height: int, width: int, ratio: Sequence[float]) -> tuple[int, int]:
    """torchvision's crop when no draw fits: the whole image, cut to the nearest allowed aspect ratio."""
    image_ratio = width / height
    if image_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if image_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def crop_flip_theta(boxes: torch.Tensor, flips: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) affine matrices for F.affine_grid (align_corners=False): output coordinates in [-1, 1]
    map onto the box (top, left, h, w) of an H x W image, mirrored left-right where `flips`."""
    top, left, box_height, box_width = boxes.unbind(1)
    theta = torch.zeros(len(boxes), 2, 3)
    theta[:, 0, 0] = torch.where(flips, -1.0, 1.0) * box_width / width
    theta[:, 0, 2] = (2 * left + box_width) / width - 1  # box centre, normalised
    theta[:, 1, 1] = box_height / height
    theta[:, 1, 2] = (2 * top + box_height) / height - 1
    return theta


def mirror(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image of (B, C, H, W) mirrored left-right where the (B,) boolean `flips` says so."""
    return torch.where(flips.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)


class RandomResizedCropFlip(nn.Module):
    """Random resized crop (bicubic) and horizontal flip in one resampling of the whole batch.

    kornia's RandomResizedCrop resizes crop by crop (8 to 16 ms for 256 images of 28x28 on one core);
    one batched grid_sample does the same crops, flips included, in 1 to 2 ms. `scale` None: no crop,
    a resize to `size` (antialiased) and the flips only."""

    def __init__(self, size: tuple[int, int], scale: Optional[Sequence[float]], ratio: Sequence[float],
                 hflip: float) -> None:
        super().__init__()
        self.size = tuple(size)
        self.scale = tuple(scale) if scale else None
        self.ratio = tuple(ratio)
        self.hflip = hflip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        flips = torch.rand(batch) < self.hflip
        if self.scale is None:
            return mirror(resize(x, self.size), flips)
        boxes = sample_crop_boxes(batch, height, width, self.scale, self.ratio)
        if (height, width) == self.size and bool((boxes == boxes.new_tensor([0, 0, height, width])).all()):
            # Every crop is the whole image at its own size (scale and ratio of 1, as in the Fashion-MNIST
            # recipe): a bicubic resampling would only return each pixel as it is, to float rounding.
            return mirror(x, flips)
        theta = crop_flip_theta(boxes, flips, height, width)
        grid = F.affine_grid(theta.to(x), [batch, channels, *self.size], align_corners=False)  # (B, h, w, 2)
        # border: bicubic taps just outside the image repeat the edge pixels, as Pillow's resize does.
        return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)


class ColorJitter(nn.Module):
    """kornia's ColorJitter; on grayscale batches brightness and contrast only (saturation and hue
    leave gray pixels unchanged, and skipping them saves the colour-space conversions)."""

    def __init__(self, factors: tuple[float, float, float, float]) -> None:
        super().__init__()
        brightness, contrast, saturation, hue = factors
        self.rgb = K.ColorJitter(brightness, contrast, saturation, hue, p=1.0)
        self.gray = K.ColorJitter(brightness, contrast, 0.0, 0.0, p=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rgb(x) if x.shape[1] == 3 else self.gray(x)


class AsRGB(nn.Module):
    """Runs an RGB-only kornia augmentation on grayscale batches too: the gray channel is repeated to
    three, augmented and averaged back (colour operations keep gray pixels gray)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3:
            return self.module(x)
        return self.module(x.expand(-1, 3, -1, -1).contiguous()).mean(dim=1, keepdim=True)


class GroupedRandAugment(nn.Module):
    """kornia's RandAugment applied per group of images, each group drawing its own operations."""

    def __init__(self, num_ops: int, magnitude: float) -> None:
        super().__init__()
        if not 0 < magnitude <= 10:
            raise ConfigError(f"randaugment magnitude {magnitude} is outside (0, 10] (timm's scale, official: 9)")
        self.randaugment = AsRGB(RandAugment(n=int(num_ops), m=min(magnitude * TIMM_MAGNITUDE_TO_KORNIA, KORNIA_MAX_MAGNITUDE)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.randaugment(group) for group in x.split(RANDAUGMENT_GROUP)])


def color_jitter_factors(color_jitter: Union[float, Sequence[float]]) -> tuple[float, float, float, float]:
    """(brightness, contrast, saturation, hue) from one value for the first three (timm) or a tuple of 3 or 4."""
    if isinstance(color_jitter, (int, float)):
        return float(color_jitter), float(color_jitter), float(color_jitter), 0.0
    values = tuple(float(value) for value in color_jitter)
    if len(values) not in (3, 4):
        raise ConfigError(f"color_jitter takes one value or (brightness, contrast, saturation[, hue]), got {values}")
    return values + (0.0,) * (4 - len(values))


class RandomErasing(nn.Module):
    """timm's RandomErasing(mode="pixel", max_count=1) on a normalised batch: with `probability`, one
    box of 2%..1/3 of the image, aspect 0.3..3.3 (log-uniform), of N(0, 1) noise per pixel and channel.
    Like timm, a box is drawn up to 10 times until it fits; an image where none fits is left alone."""

    def __init__(self, probability: float) -> None:
        super().__init__()
        self.probability = probability

    def sample_boxes(self, batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 4) boxes (top, left, box height, box width) and (B,) bool: erase this image."""
        area = torch.empty(batch, ERASING_ATTEMPTS).uniform_(*ERASING_AREA) * (height * width)
        aspect = torch.empty(batch, ERASING_ATTEMPTS).uniform_(*(math.log(a) for a in ERASING_ASPECT)).exp()
        box_heights = (area * aspect).sqrt().round()  # (B, attempts)
        box_widths = (area / aspect).sqrt().round()
        fits = (box_heights < height) & (box_widths < width)
        first = fits.int().argmax(dim=1)  # the first attempt that fits (argmax returns the first maximum)
        rows = torch.arange(batch)
        box_height, box_width = box_heights[rows, first], box_widths[rows, first]
        # Uniform integer offsets 0..(size - box) inclusive, as random.randint in timm.
        top = (torch.rand(batch) * (height - box_height + 1)).floor().clamp(min=0)
        left = (torch.rand(batch) * (width - box_width + 1)).floor().clamp(min=0)
        erase = (torch.rand(batch) < self.probability) & fits.any(dim=1)
        return torch.stack([top, left, box_height, box_width], dim=1).long(), erase

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        boxes, erase = self.sample_boxes(batch, height, width)
        chosen = erase.nonzero().squeeze(1)
        if chosen.numel() == 0:
            return x
        top, left, box_height, box_width = (column.to(x.device).view(-1, 1) for column in boxes[chosen].unbind(1))
        rows = torch.arange(height, device=x.device).view(1, -1)  # (1, H)
        cols = torch.arange(width, device=x.device).view(1, -1)
        in_rows = (rows >= top) & (rows < top + box_height)  # (n, H)
        in_cols = (cols >= left) & (cols < left + box_width)  # (n, W)
        mask = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # (n, 1, H, W)
        chosen = chosen.to(x.device)
        noise = torch.randn(len(chosen), channels, height, width, device=x.device, dtype=x.dtype)
        x = x.clone()
        x[chosen] = torch.where(mask, noise, x[chosen])
        return x


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(B,) -> (B, K): 1 - smoothing + smoothing / K on the label, smoothing / K elsewhere (timm)."""
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    return F.one_hot(labels, num_classes).float() * (on_value - off_value) + off_value


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """timm's rand_bbox: a box of sqrt(1 - lam) of each side, centred uniformly, clipped to the image.
    Returns (top, bottom, left, right)."""
    ratio = math.sqrt(1.0 - lam)
    cut_height, cut_width = int(height * ratio), int(width * ratio)
    centre_y = int(torch.randint(0, height, ()))
    centre_x = int(torch.randint(0, width, ()))
    top, bottom = max(centre_y - cut_height // 2, 0), min(centre_y + cut_height // 2, height)
    left, right = max(centre_x - cut_width // 2, 0), min(centre_x + cut_width // 2, width)
    return top, bottom, left, right


class MixupCutmix(nn.Module):
    """timm's Mixup in "batch" mode: each batch is mixed with its own reverse (image i with B-1-i).

    With probability `prob` a batch is mixed: by CutMix with probability `switch_prob` (when both are on),
    else by Mixup; lam ~ Beta(alpha, alpha) of the one chosen. CutMix's lam is then corrected to the
    pasted box's share of the image. Targets: lam * smoothed one-hot + (1 - lam) * the partner's."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing

    def sample_mode(self) -> tuple[float, bool]:
        """(lam, use CutMix) for one batch; lam 1.0 means no mixing."""
        if not (self.mixup_alpha or self.cutmix_alpha) or float(torch.rand(())) >= self.prob:
            return 1.0, False
        use_cutmix = not self.mixup_alpha or (self.cutmix_alpha > 0 and float(torch.rand(())) < self.switch_prob)
        alpha = torch.tensor(self.cutmix_alpha if use_cutmix else self.mixup_alpha)
        return float(torch.distributions.Beta(alpha, alpha).sample()), use_cutmix

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam, use_cutmix = self.sample_mode()
        if use_cutmix:
            top, bottom, left, right = cutmix_box(x.shape[-2], x.shape[-1], lam)
            x = x.clone()
            x[..., top:bottom, left:right] = x.flip(0)[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])
        elif lam < 1.0:
            x = x * lam + x.flip(0) * (1.0 - lam)
        targets = smoothed_one_hot(labels, self.num_classes, self.label_smoothing)  # (B, K)
        return x, targets * lam + targets.flip(0) * (1.0 - lam)


class TrainAugmentation(nn.Module):
    """uint8 (B, C, H, W) images and (B,) labels -> float normalised (B, C, img, img) and soft targets (B, K).

    0 or None switches a part off: scale (then a plain resize to img_size), hflip, color_jitter,
    randaugment ((num_ops, magnitude), magnitude on timm's 0..10 scale, official (2, 9)),
    random_erasing, mixup and cutmix (both off: no mixing), label_smoothing. As in timm, colour
    jitter only applies when RandAugment is off. Grayscale batches get the same operations, with
    colour changes reducing to brightness and contrast."""

    def __init__(
        self,
        img_size: Size,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        scale: Optional[Sequence[float]] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: Optional[float] = 0.5,
        color_jitter: Optional[Union[float, Sequence[float]]] = 0.4,
        randaugment: Optional[Sequence[float]] = None,
        random_erasing: Optional[float] = 0.25,
        mixup: Optional[float] = 0.8,
        cutmix: Optional[float] = 1.0,
        mix_prob: Optional[float] = 1.0,
        switch_prob: Optional[float] = 0.5,
        label_smoothing: Optional[float] = 0.1,
    ) -> None:
        super().__init__()
        self.size = pair(img_size)
        self.crop_flip = RandomResizedCropFlip(self.size, scale, ratio, hflip or 0.0)
        self.photometric = None
        if randaugment:
            num_ops, magnitude = randaugment
            self.photometric = GroupedRandAugment(num_ops, magnitude)
        elif color_jitter:
            self.photometric = ColorJitter(color_jitter_factors(color_jitter))
        self.normalize = Normalize(mean, std)
        self.erasing = RandomErasing(random_erasing) if random_erasing else None
        self.mix = MixupCutmix(num_classes, mixup or 0.0, cutmix or 0.0, mix_prob or 0.0, switch_prob or 0.0,
                               label_smoothing or 0.0)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float() / 255.0  # (B, C, H, W) in [0, 1]
        x = self.crop_flip(x).clamp(0.0, 1.0)  # bicubic overshoots; RandAugment's solarize and invert expect [0, 1]
        if self.photometric is not None:
            x = self.photometric(x)
        x = self.normalize(x)
        if self.erasing is not None:
            x = self.erasing(x)
        return self.mix(x, labels)


def resize_like_pillow(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a float batch in 0..255 as Pillow resizes uint8 images: the width first, rounded
    and clipped to whole levels, then the height. Done in one pass, the overshoot that Pillow clips
    between its passes would survive and, on sharp edges, differ from Pillow's result by many levels."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    wide = resize(images, (images.shape[-2], size[1])).round().clamp(0.0, 255.0)
    return resize(wide, size).round().clamp(0.0, 255.0)


class EvalPreprocess(nn.Module):
    """uint8 (B, C, H, W) -> float normalised (B, C, img, img): the official evaluation preprocessing.

    Square sizes: the shorter side is resized to int(img_size / crop_pct) (bicubic), then the centre
    img_size square is cropped; crop_pct = 1.0 on square images is a plain resize. A (height, width)
    size resizes to (int(height / crop_pct), int(width / crop_pct)) first, as timm does."""

    def __init__(self, img_size: Size, mean: Sequence[float], std: Sequence[float], crop_pct: float = 0.875) -> None:
        super().__init__()
        if not 0.0 < crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.size = pair(img_size)
        self.crop_pct = crop_pct
        self.normalize = Normalize(mean, std)

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        if self.size[0] != self.size[1]:
            return int(self.size[0] / self.crop_pct), int(self.size[1] / self.crop_pct)
        shorter = int(self.size[0] / self.crop_pct)
        if width <= height:  # the longer side truncated, as torchvision does
            return int(shorter * height / width), shorter
        return shorter, int(shorter * width / height)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()  # (B, C, H, W) in 0..255
        x = resize_like_pillow(x, self.resized_shape(*x.shape[-2:]))
        return self.normalize(center_crop(x, self.size) / 255.0)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k targets_k * log softmax(logits)_k; logits (B, K), targets (B, K)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
