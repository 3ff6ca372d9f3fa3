"""SimMIM's random masks, as the official `MaskGenerator` draws them.

The image is cut into square mask patches (32 px in the official configs); ceil(patches * ratio) of
them, chosen uniformly at random without replacement, are masked. The mask is returned at token
resolution (one entry per model patch, 4 px in the standard models), which is what `SimMIM.forward`
takes: each mask patch becomes a block of (mask_patch_size / model_patch_size)^2 equal entries."""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..models.config import to_pair


class MaskGenerator:
    """Draws (h, w) or (B, h, w) masks of 0 (visible) and 1 (masked) at token resolution.

        generator = MaskGenerator(input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6)
        mask = generator(batch_size=128)   # (128, 48, 48), 22 of the 36 mask patches masked in each

    Small images need small mask patches: 32 px images with 4 or 8 px mask patches."""

    def __init__(
        self,
        input_size: int | tuple[int, int] = 192,
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.6,
    ) -> None:
        height, width = to_pair(input_size, "input_size")
        if mask_patch_size < 1 or model_patch_size < 1:
            raise ConfigError(
                f"mask_patch_size ({mask_patch_size}) and model_patch_size ({model_patch_size}) must be positive"
            )
        if height % mask_patch_size or width % mask_patch_size:
            divisors = [size for size in range(model_patch_size, min(height, width) + 1, model_patch_size)
                        if height % size == 0 and width % size == 0]
            raise ConfigError(
                f"input size {height}x{width} is not a multiple of the {mask_patch_size} px mask patch; "
                f"use a mask_patch_size that divides it and is a multiple of the model's {model_patch_size} px "
                f"patch ({', '.join(map(str, divisors)) or 'none exists: resize the images'})"
            )
        if mask_patch_size % model_patch_size:
            raise ConfigError(
                f"the {mask_patch_size} px mask patch is not a multiple of the model's {model_patch_size} px patch, "
                "so a mask patch would cut tokens in two; use a multiple of "
                f"{model_patch_size} (e.g. {model_patch_size * max(1, round(mask_patch_size / model_patch_size))})"
            )
        if not 0.0 < mask_ratio <= 1.0:
            raise ConfigError(f"mask_ratio must be in (0, 1], got {mask_ratio}; the official value is 0.6")
        self.input_size = (height, width)
        self.mask_patch_size = mask_patch_size
        self.model_patch_size = model_patch_size
        self.mask_ratio = mask_ratio
        self.grid = (height // mask_patch_size, width // mask_patch_size)  # mask patches per column, per row
        self.scale = mask_patch_size // model_patch_size  # tokens per mask patch side
        self.token_shape = (self.grid[0] * self.scale, self.grid[1] * self.scale)
        self.patch_count = self.grid[0] * self.grid[1]
        # The official count, float product and all: ceil(36 * 0.6) = 22 at 192 px.
        self.mask_count = math.ceil(self.patch_count * mask_ratio)

    def __call__(
        self, batch_size: int | None = None, generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """One (h, w) mask, or (batch_size, h, w) independent ones; int64 0/1 at token resolution."""
        count = 1 if batch_size is None else batch_size
        # Ranking uniform noise gives each sample a uniformly random permutation; its first
        # mask_count entries are a uniform subset drawn without replacement.
        chosen = torch.rand(count, self.patch_count, generator=generator).argsort(dim=1)[:, : self.mask_count]
        mask = torch.zeros(count, self.patch_count, dtype=torch.int64)
        mask.scatter_(1, chosen, 1)
        mask = mask.view(count, *self.grid)  # (B, rows, columns) of mask patches
        mask = mask.repeat_interleave(self.scale, dim=1).repeat_interleave(self.scale, dim=2)  # (B, h, w) tokens
        if device is not None:
            mask = mask.to(device)
        return mask[0] if batch_size is None else mask

    def __repr__(self) -> str:
        return (
            f"MaskGenerator(input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
            f"model_patch_size={self.model_patch_size}, mask_ratio={self.mask_ratio}: "
            f"{self.mask_count} of {self.patch_count} mask patches, masks of {self.token_shape[0]}x{self.token_shape[1]} tokens)"
        )
