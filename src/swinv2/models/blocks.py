"""The pieces a stage is made of: patch embedding, the res-post-norm block, patch merging."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import WindowAttention
from .linear import Linear
from .mlp import MLP_CHUNK_ELEMENTS, Mlp
from .windows import padded_size, permute_tokens, window_and_shift, window_attention_mask, window_order


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability `drop_prob`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.sample_scale(x)
        return x if scale is None else x * scale

    def residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """x + self(branch) in one pass over the activations (addcmul), not a product and then a sum.
        Where nothing is dropped and autograd does not record, x is added into branch, the block's own
        temporary (the post-norm's output; in pre-norm the attention's or the MLP's, the attention's a crop
        of its padded map where the map was padded), not into a fresh tensor: one large allocation fewer per
        residual in inference (docs/performance.md, item 17)."""
        scale = self.sample_scale(branch)
        if scale is not None:
            return torch.addcmul(x, branch, scale)
        return x + branch if torch.is_grad_enabled() and branch.requires_grad else branch.add_(x)

    def sample_scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, ...): 0 for a dropped sample, 1 / keep for a kept one; None when nothing is dropped."""
        if self.drop_prob == 0.0 or not self.training:
            return None
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class PatchEmbed(nn.Module):
    """(B, in_chans, H, W) -> (B, H/p, W/p, C): a p x p strided convolution, then LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch = self.proj.kernel_size[0]
        height, width = x.shape[-2:]
        if height % patch or width % patch:  # only with strict_img_size=False: zero-pad bottom and right
            x = F.pad(x, (0, -width % patch, 0, -height % patch))
        # Channels-last input makes the convolution write (B, H/p, W/p, C) in memory, so the permute is a
        # free view; from channels-first output the norm would first copy it across strides, which took
        # longer than the convolution (SwinV2-T, batch 8, CPU: 29 -> 15 ms, docs/performance.md, item 21).
        x = x.contiguous(memory_format=torch.channels_last)
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C). V2 reduces first and normalises after (v1: the reverse),
    so the merged features enter the next stage at unit scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:  # only with strict_img_size=False: pad odd maps to even
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # Each 2x2 patch's four tokens side by side, in the official order of (row, col) offsets (0,0), (1,0),
        # (0,1), (1,1): the column offset outer, the row offset inner. One copy of a permuted view, where the
        # official concatenation of four strided slices copies each, and its backward zero-fills a map-sized
        # gradient per slice (SwinV2-T's stage-0 merge at batch 8, forward and backward: 10.5 -> 4.4 ms).
        batch, height, width, channels = x.shape
        x = x.view(batch, height // 2, 2, width // 2, 2, channels)  # (B, H/2, row, W/2, col, C)
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(batch, height // 2, width // 2, 4 * channels)
        return self.norm(self.reduction(x))


NORMS = ("res_post", "pre")


class SwinTransformerV2Block(nn.Module):
    """Residual post-norm block (paper 3.1): the branch output is normalised before it is added,
    so the main branch does not accumulate the amplitude of every branch.

        x = x + drop_path(norm1(attention(x)))
        x = x + drop_path(norm2(mlp(x)))

    norm="pre" is Swin v1's block, the ablation the paper compares with (Fig. 2, Table 6):
        x = x + drop_path(attention(norm1(x)))
        x = x + drop_path(mlp(norm2(x)))
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: tuple[int, int],
        shifted: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        pretrained_window_size: tuple[int, int] = (0, 0),
        extra_norm: bool = False,
        attention_chunk_size: int = 0,
        attention_impl: str = "auto",
        norm: str = "res_post",
        attention: str = "cosine",
        position_bias: str = "cpb_log",
        mlp_chunk_elements: int = MLP_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.dim = dim
        self.shifted = shifted
        self.norm = norm
        window, shift = window_and_shift(input_resolution, window_size, shifted)
        self.attn = WindowAttention(
            dim, window, num_heads, qkv_bias, attn_drop, drop,
            pretrained_window_size=pretrained_window_size, chunk_size=attention_chunk_size,
            attention_impl=attention_impl, attention=attention, position_bias=position_bias,
        )
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, chunk_elements=mlp_chunk_elements)
        self.norm2 = nn.LayerNorm(dim)
        # SwinV2-H/G: one more LayerNorm on the main branch itself, every few blocks.
        self.main_branch_norm = nn.LayerNorm(dim) if extra_norm else None
        self.set_input_size(input_resolution, window_size, pretrained_window_size)

    def set_input_size(
        self,
        input_resolution: tuple[int, int],
        window_size: tuple[int, int],
        pretrained_window_size: tuple[int, int],
    ) -> None:
        """Recompute this block's window, shift and mask for a map of `input_resolution`.

        Maps of other sizes (strict_img_size=False) keep this window and shift, padded to whole windows."""
        self.input_resolution = tuple(input_resolution)
        self.window_size, self.shift_size = window_and_shift(self.input_resolution, window_size, self.shifted)
        self.attn.set_window_size(self.window_size, pretrained_window_size)
        device = self.norm1.weight.device
        for name, tensor in zip(("attn_mask", "token_order", "token_order_inverse"), self.build_layout(
                *self.input_resolution)):
            self.register_buffer(name, None if tensor is None else tensor.to(device), persistent=False)
        self.other_layouts: dict[tuple, tuple] = {}  # the same for other map sizes, see window_layout

    def build_layout(self, height: int, width: int) -> tuple[torch.Tensor | None, ...]:
        """For a (height, width) map: the attention mask (nW, N, N) or None, and the token order that
        rolls and partitions the padded map into windows, with its inverse (see windows.window_order);
        both None where that order is the map's own (no shift, windows as wide as the map: e.g. one window)."""
        mask = window_attention_mask((height, width), self.window_size, self.shift_size)
        padded = padded_size((height, width), self.window_size)
        if self.shift_size == (0, 0) and self.window_size[1] == padded[1]:  # windows are whole rows of the map
            return mask, None, None
        order = window_order(padded, self.window_size, self.shift_size)
        return mask, order, torch.argsort(order)

    def window_layout(self, height: int, width: int, device: torch.device) -> tuple:
        """`build_layout` of this map: buffers for `input_resolution`; for other sizes (strict_img_size=False)
        built once per size and device. Traced fresh under torch.compile, where they become graph constants."""
        if (height, width) == self.input_resolution:
            return self.attn_mask, self.token_order, self.token_order_inverse
        key = (height, width, device)
        if torch.compiler.is_compiling() or key not in self.other_layouts:
            layout = tuple(None if t is None else t.to(device) for t in self.build_layout(height, width))
            if torch.compiler.is_compiling():
                return layout
            if len(self.other_layouts) >= 8:  # a bound for callers that feed ever new sizes
                self.other_layouts.clear()
            self.other_layouts[key] = layout
        return self.other_layouts[key]

    def shifted_window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C): pad to whole windows, roll, attend within windows (masking
        wrapped and padded tokens), roll back, crop. The roll and the partition are one gather of tokens,
        and so are their inverses."""
        batch, height, width, channels = x.shape
        mask, order, inverse = self.window_layout(height, width, x.device)
        padded_height, padded_width = padded_size((height, width), self.window_size)
        if (padded_height, padded_width) != (height, width):
            x = F.pad(x, (0, 0, 0, padded_width - width, 0, padded_height - height))
        tokens = self.window_size[0] * self.window_size[1]
        x = x.flatten(1, 2)
        if order is not None:
            x = permute_tokens(x, order, inverse)
        windows = self.attn(x.reshape(-1, tokens, channels), mask)  # (B * nW, N, C)
        x = windows.view(batch, -1, channels)
        if inverse is not None:
            x = permute_tokens(x, inverse, order)
        x = x.view(batch, padded_height, padded_width, channels)
        if (padded_height, padded_width) == (height, width):
            return x  # no crop: its backward would zero a tensor of this size and copy the gradient in
        return x[:, :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # drop_path.residual(x, branch) = x + drop_path(branch)
        if self.norm == "pre":
            x = self.drop_path.residual(x, self.shifted_window_attention(self.norm1(x)))
            x = self.drop_path.residual(x, self.mlp(self.norm2(x)))
        else:
            x = self.drop_path.residual(x, self.norm1(self.shifted_window_attention(x)))
            x = self.drop_path.residual(x, self.norm2(self.mlp(x)))
        if self.main_branch_norm is not None:
            x = self.main_branch_norm(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, input_resolution={self.input_resolution}, "
            f"window_size={self.window_size}, shift_size={self.shift_size}, norm={self.norm!r}"
        )
