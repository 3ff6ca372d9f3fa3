"""`SwinV2Config`: every constructor argument of the model, by its official name."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError
from .linear import LINEAR_IMPLEMENTATIONS, onednn_available
from .mlp import MLP_CHUNK_ELEMENTS


def to_pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a pair of ints as (height, width)."""
    if isinstance(value, int):
        return (value, value)
    try:
        height, width = value
        return (int(height), int(width))
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an int or a (height, width) pair, got {value!r}") from None


def stage_resolution(img_size: tuple[int, int], patch_size: int, stage: int) -> tuple[int, int]:
    """Token map of a stage; partial patches and odd maps are padded, hence the ceilings."""
    height, width = (-(-size // patch_size) for size in img_size)
    for _ in range(stage):
        height, width = -(-height // 2), -(-width // 2)
    return (height, width)


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
    pretrained_window_sizes: tuple[tuple[int, int], ...] | None = None  # None: 0 for every stage
    # SwinV2-H/G: a LayerNorm on the main branch after every k-th block of a stage (0 = none).
    extra_norm_period: int = 0
    # False: accept any input size, padding each stage to window multiples (padding is masked out).
    strict_img_size: bool = True
    # Memory savers (paper 3.5): recompute each block in the backward pass; attend to at most
    # this many windows at a time (0 = all at once). Neither changes the result.
    use_checkpoint: bool = False
    attention_chunk_size: int = 0
    # CPU inference (no gradients): each stage runs on whole images of at most this many tokens at a time
    # (0 = the whole batch at once). Same result; a chunk's intermediates (the MLP's 4C-wide hidden layer
    # above all) stay below glibc's mmap threshold, so their memory is reused instead of being fresh,
    # page-faulting pages on every call: 1.2x (batch 8) to 1.35x (batch 32) faster for SwinV2-T
    # (docs/performance.md). Training and GPUs run the whole batch.
    inference_chunk_tokens: int = 4096
    # CPU training in fp32: each MLP keeps only fc1's output for the backward and applies GELU and fc2, and
    # takes their gradients, on this many elements of the hidden layer at a time (0 = autograd's step on
    # the whole layer). Same result; the large intermediates are not allocated afresh in every step
    # (models/mlp.py, docs/performance.md).
    mlp_chunk_elements: int = MLP_CHUNK_ELEMENTS
    # How window attention is computed (same result): "plain" matmul + softmax, the reference; "sdpa"
    # F.scaled_dot_product_attention; "auto" the faster of the two for the device and whether
    # gradients are needed (docs/performance.md).
    attention_impl: str = "auto"
    # The linear layers' kernel (same result): "aten" F.linear; "onednn" oneDNN's matmul for fp32 on the
    # CPU; "auto" oneDNN on AMD's AVX-512 CPUs, where PyTorch's default (MKL) ran at its AVX2 speed and
    # oneDNN measured 1.11-1.33x faster, "aten" elsewhere (models/linear.py, docs/performance.md). With
    # oneDNN, eval-mode inference keeps each weight packed for it: the weights' memory once more, until train().
    linear_impl: str = "auto"
    # The paper's ablations (docs/experiments.md). Swin v1's block is norm="pre", attention="dot",
    # position_bias="table"; SwinV2 is res_post / cosine / cpb_log, the only layout its weights fit.
    norm: str = "res_post"  # "res_post" (v2) or "pre" (v1)
    attention: str = "cosine"  # "cosine" (v2, learnt temperature) or "dot" (v1, head_dim^-0.5)
    position_bias: str = "cpb_log"  # "cpb_log" (v2), "cpb_linear" (Table 1) or "table" (v1, bicubic-resized)
    # Dense tasks: forward returns the stage outputs listed in out_indices as NCHW maps.
    features_only: bool = False
    out_indices: tuple[int, ...] | None = None  # None: every stage

    def __post_init__(self) -> None:
        self.img_size = to_pair(self.img_size, "img_size")
        self.window_size = to_pair(self.window_size, "window_size")
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        if self.pretrained_window_sizes is None or isinstance(self.pretrained_window_sizes, int):
            self.pretrained_window_sizes = [self.pretrained_window_sizes or 0] * len(self.depths)
        self.pretrained_window_sizes = tuple(
            to_pair(size, "pretrained_window_sizes") for size in self.pretrained_window_sizes
        )
        if self.out_indices is None:
            self.out_indices = range(len(self.depths))
        self.out_indices = tuple(int(i) for i in self.out_indices)
        self.validate()

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def stage_dim(self, stage: int) -> int:
        return self.embed_dim * 2**stage

    def stage_resolution(self, stage: int) -> tuple[int, int]:
        return stage_resolution(self.img_size, self.patch_size, stage)

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
        if not set(self.out_indices) <= set(range(self.num_stages)) or not self.out_indices:
            raise ConfigError(f"out_indices {list(self.out_indices)} must name stages 0..{self.num_stages - 1}")
        for name, choices in (("norm", ("res_post", "pre")), ("attention", ("cosine", "dot")),
                              ("position_bias", ("cpb_log", "cpb_linear", "table"))):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {getattr(self, name)!r}")
        if self.attention_impl not in ("auto", "sdpa", "plain"):
            raise ConfigError(f"attention_impl must be 'auto', 'sdpa' or 'plain', got {self.attention_impl!r}")
        if self.linear_impl not in LINEAR_IMPLEMENTATIONS:
            raise ConfigError(f"linear_impl must be 'auto', 'aten' or 'onednn', got {self.linear_impl!r}")
        if self.linear_impl == "onednn" and not onednn_available():
            raise ConfigError("linear_impl='onednn' needs a PyTorch built with oneDNN "
                              "(torch.backends.mkldnn.is_available() is False here): use 'auto' or 'aten'")
        if self.attention_chunk_size < 0:
            raise ConfigError("attention_chunk_size must be 0 (all windows at once) or a positive window count")
        if self.mlp_chunk_elements < 0:
            raise ConfigError("mlp_chunk_elements must be 0 (autograd's MLP step) or a positive element count")
        if self.inference_chunk_tokens < 0:
            raise ConfigError("inference_chunk_tokens must be 0 (the whole batch at once) or a positive token count")
        height, width = self.img_size
        if min(height, width) < self.patch_size:
            raise ConfigError(
                f"img_size {height}x{width} is smaller than one {self.patch_size}x{self.patch_size} patch"
            )
        if not self.strict_img_size:
            return  # every stage is padded to what it needs
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"img_size {height}x{width} is not a multiple of patch_size {self.patch_size}; "
                "resize, or pass strict_img_size=False to pad"
            )
        minimum = self.patch_size * 2 ** (self.num_stages - 1)
        if min(height, width) < minimum:
            raise ConfigError(
                f"img_size {height}x{width} is too small: the last stage would have no tokens; "
                f"the minimum is {minimum}x{minimum}"
            )
        for stage in range(self.num_stages):
            resolution = self.stage_resolution(stage)
            if stage < self.num_stages - 1 and (resolution[0] % 2 or resolution[1] % 2):
                raise ConfigError(
                    f"img_size {height}x{width}: stage {stage} map {resolution[0]}x{resolution[1]} cannot be "
                    f"merged 2x2; use an img_size divisible by {minimum}, or strict_img_size=False to pad"
                )
            window = tuple(min(r, w) for r, w in zip(resolution, self.window_size))
            if resolution[0] % window[0] or resolution[1] % window[1]:
                raise ConfigError(
                    f"img_size {height}x{width} with window_size {self.window_size[0]}: stage {stage} map "
                    f"{resolution[0]}x{resolution[1]} is not a multiple of the window; choose img_size so that "
                    f"img_size/{self.patch_size}/2^stage divides by the window (e.g. 256 with window 8 or 16), "
                    "or pass strict_img_size=False to pad"
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
        if "depths" in overrides:
            # Per-stage fields still at their defaults follow the new number of stages.
            if "pretrained_window_sizes" not in overrides and not any(map(any, self.pretrained_window_sizes)):
                overrides["pretrained_window_sizes"] = None
            if "out_indices" not in overrides and self.out_indices == tuple(range(self.num_stages)):
                overrides["out_indices"] = None
        return dataclasses.replace(self, **overrides)
