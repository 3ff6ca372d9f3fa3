"""`SwinV2Config`: every constructor argument of the model, by its official name."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError


def to_pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a pair of ints as (height, width)."""
    if isinstance(value, int):
        return (value, value)
    try:
        height, width = value
        return (int(height), int(width))
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an int or a (height, width) pair, got {value!r}") from None


@dataclass
class SwinV2Config:
    """Shape and regularisation of a Swin Transformer V2; defaults are SwinV2-T 256/w8."""

    img_size: tuple[int, int] = (256, 256)
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: tuple[int, int] = (8, 8)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    ape: bool = False
    patch_norm: bool = True
    # Window size each stage was pre-trained with; 0 means "this model's own window".
    # The position-bias coordinates are normalised by it, so a w12 MLP sees w24 offsets
    # as extrapolations of the range it learned (the official fine-tune configs do this).
    pretrained_window_sizes: tuple[tuple[int, int], ...] = ((0, 0), (0, 0), (0, 0), (0, 0))
    # SwinV2-H/G: a LayerNorm on the main branch after every k-th block of a stage (0 = none).
    extra_norm_period: int = 0

    def __post_init__(self) -> None:
        self.img_size = to_pair(self.img_size, "img_size")
        self.window_size = to_pair(self.window_size, "window_size")
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        if isinstance(self.pretrained_window_sizes, int):
            self.pretrained_window_sizes = [self.pretrained_window_sizes] * len(self.depths)
        self.pretrained_window_sizes = tuple(
            to_pair(size, "pretrained_window_sizes") for size in self.pretrained_window_sizes
        )
        self.validate()

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def stage_dim(self, stage: int) -> int:
        return self.embed_dim * 2**stage

    def stage_resolution(self, stage: int) -> tuple[int, int]:
        height, width = self.img_size
        return (height // self.patch_size // 2**stage, width // self.patch_size // 2**stage)

    def validate(self) -> None:
        if len(self.num_heads) != len(self.depths):
            raise ConfigError(
                f"depths {list(self.depths)} and num_heads {list(self.num_heads)} must have one entry per stage"
            )
        if len(self.pretrained_window_sizes) != len(self.depths):
            raise ConfigError(
                f"pretrained_window_sizes needs one entry per stage ({len(self.depths)}), "
                f"got {[list(p) for p in self.pretrained_window_sizes]}"
            )
        for stage, heads in enumerate(self.num_heads):
            if heads <= 0 or self.stage_dim(stage) % heads:
                raise ConfigError(
                    f"stage {stage}: width {self.stage_dim(stage)} (embed_dim {self.embed_dim} * 2^{stage}) "
                    f"is not divisible by {heads} heads; pick num_heads that divide it"
                )
        if min(self.window_size) < 1 or self.patch_size < 1 or self.in_chans < 1:
            raise ConfigError("window_size, patch_size and in_chans must be positive")
        height, width = self.img_size
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"img_size {height}x{width} is not a multiple of patch_size {self.patch_size}"
            )
        minimum = self.patch_size * 2 ** (self.num_stages - 1)
        if min(self.stage_resolution(self.num_stages - 1)) < 1:
            raise ConfigError(
                f"img_size {height}x{width} is too small: the last stage would have no tokens; "
                f"the minimum is {minimum}x{minimum}"
            )
        for stage in range(self.num_stages):
            resolution = self.stage_resolution(stage)
            if stage < self.num_stages - 1 and (resolution[0] % 2 or resolution[1] % 2):
                raise ConfigError(
                    f"img_size {height}x{width}: stage {stage} map {resolution[0]}x{resolution[1]} cannot be "
                    f"merged 2x2; use an img_size divisible by {minimum}"
                )
            window = tuple(min(r, w) for r, w in zip(resolution, self.window_size))
            if resolution[0] % window[0] or resolution[1] % window[1]:
                raise ConfigError(
                    f"img_size {height}x{width} with window_size {self.window_size[0]}: stage {stage} map "
                    f"{resolution[0]}x{resolution[1]} is not a multiple of the window; choose img_size so that "
                    f"img_size/{self.patch_size}/2^stage divides by the window (e.g. 256 with window 8 or 16)"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists)."""
        def plain(value: Any) -> Any:
            return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SwinV2Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; valid fields are {sorted(known)}")
        return cls(**values)

    def replace(self, **overrides: Any) -> "SwinV2Config":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown model arguments {unknown}; valid arguments are {sorted(known)}")
        return dataclasses.replace(self, **overrides)
