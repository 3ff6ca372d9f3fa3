"""Log-spaced continuous position bias (paper section 3.3), the inputs the CPB MLP sees.

The official code, whose weights we match, normalises offsets to [-8, 8] by the pre-trained
window and then applies sign(t) * log2(1 + |t|) / log2(8); the paper's sign(x) * ln(1 + |x|)
on raw offsets is the idea, this is what the released weights expect."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def relative_coordinates_table(
    window: tuple[int, int], pretrained_window: tuple[int, int] = (0, 0), spacing: str = "log"
) -> torch.Tensor:
    """(2Wh-1, 2Ww-1, 2) float table of offsets (dh, dw), channel 0 height: log-spaced (v2), or
    "linear" (the paper's Table 1 ablation: the same normalised offsets, without the log)."""
    wh, ww = window
    offsets_h = torch.arange(-(wh - 1), wh, dtype=torch.float32)
    offsets_w = torch.arange(-(ww - 1), ww, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(offsets_h, offsets_w, indexing="ij"), dim=-1)
    # Normalise by the window the MLP was trained on, so a larger window extrapolates.
    # max(.., 1) only guards a 1-token window, whose single offset is 0 either way.
    reference = pretrained_window if pretrained_window[0] > 0 else window
    table[..., 0] /= max(reference[0] - 1, 1)
    table[..., 1] /= max(reference[1] - 1, 1)
    table = table * 8
    if spacing == "linear":
        return table
    if spacing != "log":
        raise ValueError(f"spacing must be 'log' or 'linear', got {spacing!r}")
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """(N, N) long index into the flattened table: (dh + Wh - 1) * (2Ww - 1) + (dw + Ww - 1)."""
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # (2, N)
    relative = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    return (relative[0] + wh - 1) * (2 * ww - 1) + (relative[1] + ww - 1)


def resize_bias_table(table: torch.Tensor, size: tuple[int, int], new_size: tuple[int, int]) -> torch.Tensor:
    """Swin v1's transfer of a learnt bias table to another window: the (size_h * size_w, heads) table,
    viewed as a (heads, size_h, size_w) image, resized bicubically to `new_size` ((2Wh-1, 2Ww-1))."""
    heads = table.shape[1]
    image = table.detach().t().reshape(1, heads, *size)
    image = F.interpolate(image.float(), size=new_size, mode="bicubic", align_corners=False)
    return image.reshape(heads, -1).t().to(table.dtype).contiguous()
