"""The pieces a stage is made of: patch embedding, the res-post-norm block, patch merging."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import WindowAttention
from .windows import padded_size, window_and_shift, window_attention_mask, window_partition, window_reverse


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability `drop_prob`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class Mlp(nn.Module):
    """Linear(C, rC) -> GELU -> Dropout -> Linear(rC, C) -> Dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


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
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C). V2 reduces first and normalises after (v1: the reverse),
    so the merged features enter the next stage at unit scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:  # only with strict_img_size=False: pad odd maps to even
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # The official order: (row, col) offsets (0,0), (1,0), (0,1), (1,1).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.norm(self.reduction(x))


class SwinTransformerV2Block(nn.Module):
    """Residual post-norm block (paper 3.1): the branch output is normalised before it is added,
    so the main branch does not accumulate the amplitude of every branch.

        x = x + drop_path(norm1(attention(x)))
        x = x + drop_path(norm2(mlp(x)))
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
    ) -> None:
        super().__init__()
        self.dim = dim
        self.shifted = shifted
        window, shift = window_and_shift(input_resolution, window_size, shifted)
        self.attn = WindowAttention(
            dim, window, num_heads, qkv_bias, attn_drop, drop,
            pretrained_window_size=pretrained_window_size, chunk_size=attention_chunk_size,
        )
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
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
        mask = window_attention_mask(self.input_resolution, self.window_size, self.shift_size)
        self.register_buffer(
            "attn_mask", None if mask is None else mask.to(self.norm1.weight.device), persistent=False
        )

    def shifted_window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C): pad to whole windows, roll, attend within windows (masking
        wrapped and padded tokens), roll back, crop."""
        _, height, width, _ = x.shape
        if (height, width) == self.input_resolution:
            mask = self.attn_mask
        else:
            mask = window_attention_mask((height, width), self.window_size, self.shift_size)
            mask = None if mask is None else mask.to(x.device)
        padded_height, padded_width = padded_size((height, width), self.window_size)
        if (padded_height, padded_width) != (height, width):
            x = F.pad(x, (0, 0, 0, padded_width - width, 0, padded_height - height))
        shift = self.shift_size
        if shift != (0, 0):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = self.attn(window_partition(x, self.window_size), mask)
        x = window_reverse(windows, self.window_size, padded_height, padded_width)
        if shift != (0, 0):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.norm1(self.shifted_window_attention(x)))
        x = x + self.drop_path(self.norm2(self.mlp(x)))
        if self.main_branch_norm is not None:
            x = self.main_branch_norm(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, input_resolution={self.input_resolution}, "
            f"window_size={self.window_size}, shift_size={self.shift_size}"
        )
