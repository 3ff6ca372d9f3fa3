"""Shifted windows: which window and shift each block uses, partitioning, and the shift mask."""
from __future__ import annotations

import torch

# Added to the logits of padded keys. Logits are bounded (|cosine| / tau <= 100, bias <= 16), so this
# drives their weight to exactly 0, while staying finite: an all-padding window still softmaxes to
# numbers, and fp16 can hold it.
PADDING_MASK_VALUE = -1.0e4
# The official shift mask's value. Not a total mask: it leaves masked pairs a weight of exp(logit - 100)
# (see attention.WindowAttention.head_masks for where that weight is not 0 in fp32).
SHIFT_MASK_VALUE = -100.0


def padded_size(resolution: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
    """The map rounded up to whole windows."""
    return tuple(-(-r // w) * w for r, w in zip(resolution, window))


def window_and_shift(
    resolution: tuple[int, int], window_size: tuple[int, int], shifted: bool
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The official rule, per axis: a map no larger than the window is covered by one window,
    and then shifting would only roll the map onto itself, so the shift is 0 (note `<=`)."""
    window = tuple(min(r, w) for r, w in zip(resolution, window_size))
    shift = tuple(0 if (not shifted or r <= w) else w // 2 for r, w in zip(resolution, window_size))
    return window, shift


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * num_windows, Wh * Ww, C), windows in row-major order."""
    batch, height, width, channels = x.shape
    wh, ww = window
    x = x.view(batch, height // wh, wh, width // ww, ww, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, channels)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """(B * num_windows, Wh * Ww, C) -> (B, H, W, C); the inverse of `window_partition`."""
    wh, ww = window
    channels = windows.shape[-1]
    x = windows.view(-1, height // wh, width // ww, wh, ww, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def window_order(resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """(H * W,) long: for each token of the map rolled by -shift and partitioned into windows, in that
    order, its index in the row-major (H, W) map. So `x.flatten(1, 2)[:, order]` is
    `window_partition(torch.roll(x, -shift), window)` in one copy (torch.roll copies once per rolled
    dimension, slowly on the CPU, and the partition once more), and `argsort(order)` undoes it."""
    height, width = resolution
    index = torch.arange(height * width).view(1, height, width, 1)
    if shift != (0, 0):
        index = torch.roll(index, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    return window_partition(index, window).flatten()


class TokenPermutation(torch.autograd.Function):
    """x.index_select(1, order) where `order` is a permutation of dimension 1 and `inverse` its argsort.
    The gradient is the inverse gather, grad.index_select(1, inverse), where autograd's index_select
    backward would zero a tensor of x's size and scatter-add into it (two passes, the second slower)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(order, inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        order, inverse = ctx.saved_tensors
        return TokenPermutation.apply(grad, inverse, order), None, None  # itself differentiable


def permute_tokens(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(B, L, C) -> (B, L, C), token i of the result being x's token order[i]: TokenPermutation where a
    gradient is recorded, a plain gather otherwise (no autograd.Function to enter)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return TokenPermutation.apply(x, order, inverse)
    return x.index_select(1, order)


def shifted_window_mask(
    resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor | None:
    """Additive mask (num_windows, N, N): SHIFT_MASK_VALUE (-100) between tokens that the cyclic roll brought
    together from different parts of the map, 0 elsewhere. None when nothing is shifted.

    Each axis splits into the slices [0, size-window), [size-window, size-shift), [size-shift, size);
    the 3x3 products label 9 regions, and tokens attend only within their own region."""
    if shift == (0, 0):
        return None
    labels = []
    for size, win, sh in zip(resolution, window, shift):
        index = torch.arange(size)
        # With sh == 0 the second comparison is never true: that axis has no wrapped slice.
        labels.append((index >= size - win).long() + (index >= size - sh).long())
    region = labels[0][:, None] * 3 + labels[1][None, :]  # (H, W), values 0..8
    region_windows = window_partition(region[None, :, :, None].float(), window).squeeze(-1)  # (nW, N)
    different = region_windows[:, :, None] != region_windows[:, None, :]
    return torch.zeros(different.shape).masked_fill(different, SHIFT_MASK_VALUE)


def window_attention_mask(
    resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor | None:
    """Everything a block adds to its logits besides the position bias, (num_windows, N, N) or None:
    the shift mask on the padded map, plus PADDING_MASK_VALUE on keys that are padding.

    Padding goes at the bottom and right, before the roll, so it rolls with the map like real tokens."""
    padded = padded_size(resolution, window)
    shift_mask = shifted_window_mask(padded, window, shift)
    if padded == tuple(resolution):
        return shift_mask
    valid = torch.zeros(padded)
    valid[: resolution[0], : resolution[1]] = 1.0
    valid = torch.roll(valid, shifts=(-shift[0], -shift[1]), dims=(0, 1))
    valid_windows = window_partition(valid[None, :, :, None], window).squeeze(-1)  # (nW, N)
    padding_mask = (1.0 - valid_windows[:, None, :]) * PADDING_MASK_VALUE  # (nW, 1, N): masks keys
    tokens = window[0] * window[1]
    padding_mask = padding_mask.expand(-1, tokens, -1)
    return padding_mask if shift_mask is None else padding_mask + shift_mask
