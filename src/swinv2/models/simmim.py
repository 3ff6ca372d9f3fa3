"""SimMIM (Xie et al., CVPR 2022): masked-image pre-training of a Swin Transformer V2, as the official
`models/simmim.py` of microsoft/Swin-Transformer does it.

    encoder  the backbone without its head; a learnable mask token replaces the masked patch tokens
             right after the patch embedding and its norm
    decoder  Conv2d(8C, stride^2 * in_chans, 1) -> PixelShuffle(stride): every last-stage token
             predicts the stride x stride pixels it covers (stride 32 in the standard models)
    loss     L1 between prediction and target on masked pixels, / (masked pixels + 1e-5) / in_chans;
             the target is the image, or with `norm_target_window` the image normalised by the mean
             and variance of a window around each pixel (SwinV2's SimMIM configs: 47 px at 192 px)

The state dict is the official SimMIM layout (`encoder.*`, `encoder.mask_token`, `decoder.0.*`), so
official pre-training checkpoints load, and ours load wherever theirs do (a fine-tuning classifier
takes the encoder: `create_model(name, pretrained=simmim_checkpoint, window_size=...)`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.masking import MaskGenerator
from ..errors import ConfigError, InputError
from .backbone import SwinTransformerV2
from .config import SwinV2Config
from .registry import get_config

# SwinV2's SimMIM configs normalise targets over 47 x 47 pixels of a 192 px image.
OFFICIAL_NORM_TARGET_WINDOW = 47
OFFICIAL_NORM_TARGET_IMAGE = 192
VARIANCE_EPSILON = 1e-6  # official norm_targets: / sqrt(var + 1e-6)
MASK_EPSILON = 1e-5  # official loss: / (mask.sum() + 1e-5)


# ------------------------------------------------------------------------------ normalised targets
def norm_target_window_for(img_size: int | tuple[int, int]) -> int:
    """The window for normalised targets at `img_size`: 47 px at 192 px (official), scaled with the
    shorter image side to the nearest odd size, at least 3 (32 px -> 7, 64 -> 15, 224 -> 55, 256 -> 63).

    The window keeps covering the same fraction of the image (about a quarter of its side), so small
    images are normalised by local statistics as 192 px images are, not by nearly global ones."""
    side = min(img_size) if isinstance(img_size, (tuple, list)) else img_size
    scaled = OFFICIAL_NORM_TARGET_WINDOW * side / OFFICIAL_NORM_TARGET_IMAGE
    half = int((scaled - 1) / 2 + 0.5)  # round half up: the nearest odd size
    return max(2 * half + 1, 3)


def check_window(window: int) -> None:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1 or window % 2 == 0:
        raise ConfigError(
            f"norm_target_window must be an odd positive int (the window is centred on each pixel), got {window!r}; "
            "use 'auto' for the scaled official 47, or None for raw pixel targets"
        )


def local_statistics(images: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel (mean, std) over the window x window neighbourhood inside the image, per channel.

    As the official `norm_targets`: pixels outside the image are not counted (count_include_pad=False),
    the variance is the unbiased one of the n pixels the window covers there (n = window^2 inside,
    fewer at the borders), clamped at 0, and std = sqrt(variance + 1e-6). Computed in float32."""
    check_window(window)
    images = images.float()  # (B, C, H, W)
    pool = {"kernel_size": window, "stride": 1, "padding": window // 2}
    mean = F.avg_pool2d(images, count_include_pad=False, **pool)
    mean_of_squares = F.avg_pool2d(images * images, count_include_pad=False, **pool)
    # Pixels each window covers inside the image: (1, 1, H, W), the same for every image and channel.
    ones = images.new_ones(1, 1, *images.shape[-2:])
    count = F.avg_pool2d(ones, count_include_pad=True, **pool) * window**2
    # A 1 x 1 window (count 1) has no spread to estimate: its variance is 0, not 0/0.
    variance = (mean_of_squares - mean * mean) * (count / (count - 1).clamp(min=1))
    return mean, (variance.clamp(min=0.0) + VARIANCE_EPSILON).sqrt()


def normalized_targets(images: torch.Tensor, window: int) -> torch.Tensor:
    """(x - local mean) / local std per pixel and channel (see `local_statistics`); (B, C, H, W) float32."""
    mean, std = local_statistics(images, window)
    return (images.float() - mean) / std


def pixel_mask(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Token mask (B, h, w) -> pixel mask (B, 1, h * patch, w * patch), as float."""
    return mask.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2).unsqueeze(1).float()


# ---------------------------------------------------------------------------------------- encoder
class SwinTransformerV2ForSimMIM(SwinTransformerV2):
    """The backbone without a head, plus a mask token (1, 1, C) that replaces masked patch tokens.

    forward(images (B, in_chans, H, W), mask (B, H/patch, W/patch)) -> (B, 8C, H/32, W/32) for the
    standard models: the final-norm last-stage map, channels first for the convolutional decoder."""

    def __init__(self, config: SwinV2Config | None = None, **overrides: Any) -> None:
        config = (config or SwinV2Config()).replace(**overrides) if overrides else (config or SwinV2Config())
        if config.num_classes != 0 or config.features_only:
            raise ConfigError(
                f"a SimMIM encoder has no classification head and returns its last map: it needs num_classes=0 "
                f"and features_only=False (got num_classes={config.num_classes}, features_only={config.features_only})"
            )
        super().__init__(config)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # official: trunc_normal_(mean 0, std .02)

    def no_weight_decay_names(self) -> set[str]:
        return super().no_weight_decay_names() | {"mask_token"}

    def check_mask(self, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        expected = (tokens.shape[0], *tokens.shape[1:3])  # (B, h, w)
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != expected:
            found = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise InputError(
                f"the mask must be (batch, height / patch, width / patch) = {expected} at token resolution "
                f"({self.config.patch_size} px tokens), got {found}; draw it with "
                f"MaskGenerator(input_size=..., model_patch_size={self.config.patch_size}) or model.mask_generator"
            )

    def embed_with_mask(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, h, w, C) after the patch-embed norm, the masked ones replaced by the mask token."""
        self.check_input(images)
        tokens = self.patch_embed(images)  # (B, h, w, C)
        self.check_mask(mask, tokens)
        weight = mask.unsqueeze(-1).to(tokens.dtype)  # (B, h, w, 1): 1 where masked
        return tokens * (1.0 - weight) + self.mask_token.view(1, 1, 1, -1).to(tokens.dtype) * weight

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        last = self.forward_tokens(self.embed_with_mask(images, mask))[-1]  # (B, h/2^(S-1), w/2^(S-1), 8C)
        return self.norm(last).permute(0, 3, 1, 2).contiguous()  # (B, 8C, H/stride, W/stride)


# ------------------------------------------------------------------------------------------ SimMIM
class SimMIM(nn.Module):
    """Encoder, pixel-shuffle decoder and masked L1 loss; see the module's docstring.

    `SimMIM(config)` or `SimMIM(embed_dim=..., ...)` with the backbone's arguments (num_classes is
    always 0). `norm_target_window`: 'auto' (`norm_target_window_for(img_size)`, 47 at 192 px), an
    odd int, or None for raw pixel targets. `mask_patch_size` and `mask_ratio` configure
    `model.mask_generator`, which draws masks for the model's img_size."""

    def __init__(
        self,
        config: SwinV2Config | None = None,
        norm_target_window: int | str | None = "auto",
        mask_patch_size: int = 32,
        mask_ratio: float = 0.6,
        **overrides: Any,
    ) -> None:
        super().__init__()
        config = (config or SwinV2Config(num_classes=0)).replace(num_classes=0, **overrides)
        self.encoder = SwinTransformerV2ForSimMIM(config)
        # Each last-stage token covers stride x stride pixels: 4 * 2^3 = 32 in the standard models.
        self.encoder_stride = config.patch_size * 2 ** (config.num_stages - 1)
        self.decoder = nn.Sequential(
            nn.Conv2d(self.encoder.num_features, self.encoder_stride**2 * config.in_chans, kernel_size=1),
            nn.PixelShuffle(self.encoder_stride),
        )  # PyTorch's default Conv2d initialisation, as the official decoder
        if norm_target_window == "auto":
            norm_target_window = norm_target_window_for(config.img_size)
        elif norm_target_window is not None:
            check_window(norm_target_window)
        self.norm_target_window = norm_target_window
        self.mask_generator = MaskGenerator(config.img_size, mask_patch_size, config.patch_size, mask_ratio)

    @property
    def config(self) -> SwinV2Config:
        return self.encoder.config

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def in_chans(self) -> int:
        return self.config.in_chans

    def no_weight_decay_names(self) -> set[str]:
        """The encoder's (1-D tensors, biases, position embedding, CPB MLP, logit scale, mask token) under
        `encoder.`, and the decoder's bias. The official SimMIM prefixes its keyword list with `encoder.`
        too, so that `cpb_mlp` and `logit_scale` never match and are decayed; here they are not."""
        names = {"encoder." + name for name in self.encoder.no_weight_decay_names()}
        return names | {name for name, parameter in self.decoder.named_parameters(prefix="decoder") if parameter.ndim <= 1}

    def random_mask(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch_size, h, w) masks from `mask_generator`, on the model's device."""
        return self.mask_generator(batch_size, generator=generator, device=self.decoder[0].weight.device)

    # ------------------------------------------------------------------------------------ forward
    def check_size(self, images: torch.Tensor) -> None:
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            height, width = images.shape[-2:]
            if height % self.encoder_stride or width % self.encoder_stride:
                raise InputError(
                    f"SimMIM reconstructs {self.encoder_stride} x {self.encoder_stride} pixel blocks, so images must "
                    f"be a multiple of {self.encoder_stride} px on each side, got {height}x{width}; resize or crop them"
                )

    def predict(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The decoder's output (B, in_chans, H, W): the prediction of the target (normalised pixels
        when `norm_target_window` is set), at every pixel; only masked pixels are trained."""
        self.check_size(images)
        return self.decoder(self.encoder(images, mask))

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """What the decoder learns to predict: the images, or their locally normalised version."""
        if self.norm_target_window is None:
            return images.float()
        return normalized_targets(images, self.norm_target_window)

    def masked_loss(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean absolute error over masked pixels and channels: sum(|target - prediction| * m) / (sum(m) + 1e-5) / C."""
        weights = pixel_mask(mask, self.patch_size)  # (B, 1, H, W)
        error = F.l1_loss(prediction.float(), target, reduction="none")  # (B, C, H, W)
        return (error * weights).sum() / (weights.sum() + MASK_EPSILON) / self.in_chans

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """images (B, in_chans, H, W), mask (B, H/patch, W/patch) of 0/1 (1 = masked) -> scalar loss."""
        return self.masked_loss(self.predict(images, mask), self.targets(images), mask)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted images (B, in_chans, H, W), in the pixel space of `images`, at every pixel.

        With normalised targets the prediction is mapped back with the local mean and std of `images`
        themselves, the statistics its target was made with; they include the masked pixels, so
        this is for looking at, not for measuring. Call it in eval mode for deterministic output."""
        prediction = self.predict(images, mask).float()
        if self.norm_target_window is None:
            return prediction
        mean, std = local_statistics(images, self.norm_target_window)
        return prediction * std + mean

    def extra_repr(self) -> str:
        return (f"encoder_stride={self.encoder_stride}, norm_target_window={self.norm_target_window}, "
                f"mask_patch_size={self.mask_generator.mask_patch_size}, mask_ratio={self.mask_generator.mask_ratio}")


def create_simmim(
    name: str,
    pretrained: str | os.PathLike | None = None,
    norm_target_window: int | str | None = "auto",
    mask_patch_size: int = 32,
    mask_ratio: float = 0.6,
    **model_overrides: Any,
) -> SimMIM:
    """A SimMIM model around the registered backbone `name` (see `SimMIM`).

    `model_overrides` are the backbone's arguments by their official names (img_size, window_size,
    in_chans, drop_path_rate, ...; the registry's drop_path_rate is the fine-tuning one, the official
    SimMIM SwinV2 configs pre-train with 0.1). `pretrained`: a SimMIM checkpoint in the official layout
    (ours or the official release's), e.g. to continue pre-training."""
    if model_overrides.get("num_classes", 0) != 0:
        raise ConfigError("a SimMIM model has no classification head; leave num_classes out")
    config = get_config(name, **{**model_overrides, "num_classes": 0})
    model = SimMIM(config, norm_target_window=norm_target_window, mask_patch_size=mask_patch_size,
                   mask_ratio=mask_ratio)
    if pretrained is not None:
        from ..checkpoints.loading import load_simmim

        load_simmim(model, Path(pretrained))
    return model
