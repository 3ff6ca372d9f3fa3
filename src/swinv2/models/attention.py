"""Window attention with scaled cosine similarity and a continuous position bias (paper 3.2-3.3).

    Sim(q_i, k_j) = cos(q_i, k_j) / tau + B_ij,   tau = 1 / exp(min(logit_scale, ln 100)) >= 0.01
    B = 16 * sigmoid(MLP(log-spaced offsets))
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .position_bias import relative_coordinates_table, relative_position_index

# A Python float, not a tensor: a CPU tensor bound breaks on CUDA and under graph capture.
MAX_LOGIT_SCALE = math.log(1.0 / 0.01)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (Wh, Ww) windows: (B * nW, N, C) -> (B * nW, N, C)."""

    def __init__(
        self,
        dim: int,
        window_size: tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pretrained_window_size: tuple[int, int] = (0, 0),
        chunk_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.chunk_size = chunk_size  # sequential self-attention: windows per chunk, 0 = all at once
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        # The continuous position bias: offsets (dh, dw) -> one bias per head.
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False)
        )
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            # Keys get no bias: it would add the same amount to every logit of a query.
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.set_window_size(window_size, pretrained_window_size)

    def set_window_size(self, window_size: tuple[int, int], pretrained_window_size: tuple[int, int]) -> None:
        """Rebuild the coordinate table and index for a new window; the MLP weights carry over."""
        self.window_size = tuple(window_size)
        self.pretrained_window_size = tuple(pretrained_window_size)
        device = self.logit_scale.device
        self.register_buffer(
            "relative_coords_table",
            relative_coordinates_table(self.window_size, self.pretrained_window_size).to(device),
            persistent=False,
        )
        self.register_buffer(
            "relative_position_index", relative_position_index(self.window_size).to(device), persistent=False
        )

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N): 16 * sigmoid of the MLP's bias, gathered for every query-key pair."""
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)  # ((2Wh-1)(2Ww-1), heads)
        tokens = self.window_size[0] * self.window_size[1]
        bias = table[self.relative_position_index.view(-1)].view(tokens, tokens, self.num_heads)
        return 16 * torch.sigmoid(bias.permute(2, 0, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) additive (shift and padding) or None; window i uses mask[i % nW]."""
        bias = self.position_bias()
        windows = x.shape[0]
        if self.chunk_size == 0 or windows <= self.chunk_size:
            return self.attend(x, bias, mask)
        # Sequential self-attention (paper 3.5): the (windows, heads, N, N) logits of one chunk at a time.
        outputs = []
        for start in range(0, windows, self.chunk_size):
            stop = min(start + self.chunk_size, windows)
            chunk_mask = None
            if mask is not None:
                chunk_mask = mask[torch.arange(start, stop, device=mask.device) % mask.shape[0]]
            outputs.append(self.attend(x[start:stop], bias, chunk_mask))
        return torch.cat(outputs)

    def attend(self, x: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of (windows, N, C) given the (heads, N, N) position bias."""
        windows, tokens, channels = x.shape
        head_dim = channels // self.num_heads
        qkv_bias = None
        if self.q_bias is not None:
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        qkv = qkv.reshape(windows, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (windows, heads, N, head_dim)

        # Scaled cosine attention: |logits| <= 1 / tau, whatever the activation amplitude.
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            num_masks = mask.shape[0]
            attn = attn.view(-1, num_masks, self.num_heads, tokens, tokens) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, tokens, tokens)
        attn = self.attn_drop(attn.softmax(dim=-1))

        x = (attn @ v).transpose(1, 2).reshape(windows, tokens, channels)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window_size={self.window_size}, "
            f"pretrained_window_size={self.pretrained_window_size}, num_heads={self.num_heads}"
        )
