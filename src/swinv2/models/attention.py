"""Window attention with scaled cosine similarity and a continuous position bias (paper 3.2-3.3).

    Sim(q_i, k_j) = cos(q_i, k_j) / tau + B_ij,   tau = 1 / exp(min(logit_scale, ln 100)) >= 0.01
    B = 16 * sigmoid(MLP(log-spaced offsets))

Both implementations normalise q and k with 1/tau folded into q, and add one (nW, heads, N, N) term, the
position bias plus the shift/padding mask, cached while the weights it comes from do not change (inference);
they differ in the kernel (docs/performance.md has the measurements):
- "plain": softmax(q @ k^T + bias) @ v in matmuls, the reference;
- "sdpa": F.scaled_dot_product_attention with the bias as its additive mask and scale 1.
"auto" picks "sdpa" where the fused kernels measured faster and "plain" where they did not (`use_sdpa`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from .cache import TensorCache
from .linear import Linear
from .position_bias import relative_coordinates_table, relative_position_index, resize_bias_table
from .windows import PADDING_MASK_VALUE, SHIFT_MASK_VALUE

# A Python float, not a tensor: a CPU tensor bound breaks on CUDA and under graph capture.
MAX_LOGIT_SCALE = math.log(1.0 / 0.01)
NORM_EPS = 1e-12  # F.normalize's: q and k shorter than this are divided by it instead
# Heads at most this hot get a total shift mask (WindowAttention.head_masks): there -100 leaves a masked
# pair at most exp(2 * 30 + 16 - 100) = e^-24 of its row's largest weight, 64 of them under fp32's rounding.
TOTAL_MASK_MAX_INVERSE_TAU = 30.0
# Windows of at most this many tokens take the plain path on the CPU also where SDPA could run (use_sdpa).
CPU_PLAIN_MAX_TOKENS = 64

# FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel, and would count the
# attention products as 0 FLOPs (`swinv2 info`, the benchmark): give it the formulas of the CUDA ones.
for operator, formula in ((torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, flop_counter.sdpa_flop),
                          (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward,
                           flop_counter.sdpa_backward_flop)):
    if operator not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(operator)(formula.__wrapped__)

ATTENTION_IMPLEMENTATIONS = ("auto", "sdpa", "plain")
# The paper's ablations (Tables 1 and 6): Swin v1's dot-product attention and parameterised bias table
# beside v2's cosine attention and continuous position bias, on linear or log-spaced offsets.
ATTENTION_KINDS = ("cosine", "dot")
POSITION_BIASES = ("cpb_log", "cpb_linear", "table")


def folds_windows_into_heads(num_masks: int, windows: int) -> bool:
    """Whether attend_sdpa folds the windows of each image into the heads, (B, nW * heads, N, head_dim), so
    that one (1, nW * heads, N, N) mask serves every image: the kernels broadcast a mask over leading
    dimensions of size 1 only, and mask i belongs to window i % nW. Not for one mask, nor for the windows of
    one image (batch 1, or the CPU's one-image inference chunks of the large maps), which line up with the
    masks as they are."""
    return 1 < num_masks < windows


def rows_for_windows(table: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The rows of a per-window table (n, ...) for windows start..stop, window i using row i % n.
    The table itself where that is the same thing (one row, or a chunk of whole images)."""
    rows = table.shape[0]
    if rows == 1 or (start % rows == 0 and (stop - start) % rows == 0):
        return table
    return table[torch.arange(start, stop, device=table.device) % rows]


class ScaledUnitVectors(torch.autograd.Function):
    """x * scale / max(|x|, eps) along the last dimension: F.normalize (same eps) times a per-head scale,
    scale None for 1. (..., d) -> (..., d); the norms are accumulated in fp32 also for bf16/fp16 x.

    Autograd would take the gradient of the norm, the quotient and the product one by one, seven passes over
    x-sized tensors; the closed form takes four. With n = max(|x|, eps), f = scale / n, y = x * f and g the
    gradient of y, r = <g, x> per vector:
        dx     = f * g - (r * f / n^2) * x     (the second term only where |x| > eps: n is constant below it)
        dscale = sum of r / n over what scale was broadcast over
    """

    @staticmethod
    def norm_and_factor(x: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        wide = torch.promote_types(x.dtype, torch.float32)
        if x.dtype == wide:
            # sqrt(max(<x, x>, eps^2)) = max(|x|, eps): vecdot's kernel ran 1.5-5x faster than vector_norm's
            # on q's and k's strided views (docs/performance.md, item 19). Clamped before the root, so that
            # a zero vector has a finite derivative (the backward differentiates this where create_graph).
            norm = torch.linalg.vecdot(x, x).unsqueeze(-1).clamp_min(NORM_EPS**2).sqrt()  # (..., 1)
        else:  # bf16/fp16: vecdot would round <x, x> to x's dtype; vector_norm accumulates and returns fp32
            norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=wide).clamp_min(NORM_EPS)
        return norm, norm.reciprocal() if scale is None else scale / norm

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor | None, keep_layout: bool = False) -> torch.Tensor:
        norm, factor = ScaledUnitVectors.norm_and_factor(x, scale)
        ctx.save_for_backward(x, scale, norm, factor)  # scale None is saved as None
        return ScaledUnitVectors.scaled(x, factor, keep_layout)

    @staticmethod
    def scaled(x: torch.Tensor, factor: torch.Tensor, keep_layout: bool) -> torch.Tensor:
        """x * factor, contiguous in x's (..., d) order, or with keep_layout in x's own order. q, k are
        strided views into the qkv linear's output, tokens first. Contiguous is what the fold in attend_sdpa
        and the matmuls take, and faster to write (docs/performance.md, item 16); the tokens-first order is
        the one SDPA on the CPU then writes its output in, which proj takes without a copy. An element-wise
        result takes the layout of its first operand where that one decides it: x first keeps x's order,
        the (..., 1) factor first decides every dimension but the last."""
        factor = factor.to(x.dtype)
        return x * factor if keep_layout else factor * x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        x, scale, norm, factor = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the backward itself is differentiated, in x and scale
            norm, factor = ScaledUnitVectors.norm_and_factor(x, scale)
        dot = torch.linalg.vecdot(grad, x, dim=-1).unsqueeze(-1).to(norm.dtype)  # r, (..., 1)
        through_norm = torch.where(norm > NORM_EPS, dot * factor / norm.square(), 0.0)
        grad_x = (grad * factor.to(grad.dtype)).addcmul_(through_norm.to(x.dtype), x, value=-1)
        grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_scale = (dot / norm).sum_to_size(scale.shape)
        return grad_x, grad_scale, None


def scaled_unit_vectors(x: torch.Tensor, scale: torch.Tensor | None, keep_layout: bool = False) -> torch.Tensor:
    """ScaledUnitVectors where a gradient is wanted; without one, its forward as plain operators (no
    autograd.Function to enter: 50 us a call, 1.6% of SwinV2-T's forward pass at batch 1)."""
    if torch.is_grad_enabled() and (x.requires_grad or (scale is not None and scale.requires_grad)):
        return ScaledUnitVectors.apply(x, scale, keep_layout)
    norm, factor = ScaledUnitVectors.norm_and_factor(x, scale)
    return ScaledUnitVectors.scaled(x, factor, keep_layout)


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
        attention_impl: str = "auto",
        attention: str = "cosine",
        position_bias: str = "cpb_log",
    ) -> None:
        super().__init__()
        for name, value, choices in (("attention_impl", attention_impl, ATTENTION_IMPLEMENTATIONS),
                                     ("attention", attention, ATTENTION_KINDS),
                                     ("position_bias", position_bias, POSITION_BIASES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.chunk_size = chunk_size  # sequential self-attention: windows per chunk, 0 = all at once
        self.attention_impl = attention_impl
        self.attention = attention
        self.position_bias_kind = position_bias
        if attention == "cosine":
            self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        else:  # Swin v1: q . k scaled by a fixed head_dim^-0.5, no learnt temperature
            self.logit_scale = None
        if position_bias == "table":
            # Swin v1: one learnt bias per head and relative offset, bicubic-resized when the window changes.
            # Initialised trunc-normal(.02) with the other weights (init_weights), as v1.
            self.bias_table_size = (2 * window_size[0] - 1, 2 * window_size[1] - 1)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(math.prod(self.bias_table_size), num_heads))
            self.cpb_mlp = None
        else:
            # The continuous position bias: offsets (dh, dw) -> one bias per head.
            self.relative_position_bias_table = None
            self.cpb_mlp = nn.Sequential(
                Linear(2, 512, bias=True), nn.ReLU(inplace=True), Linear(512, num_heads, bias=False)
            )
        self.qkv = Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            # Keys get no bias: it would add the same amount to every logit of a query.
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.bias_cache = TensorCache()  # the additive term of inference, see logit_bias
        self.set_window_size(window_size, pretrained_window_size)

    def set_window_size(self, window_size: tuple[int, int], pretrained_window_size: tuple[int, int]) -> None:
        """Rebuild the coordinate table and index for a new window; the MLP weights carry over."""
        self.window_size = tuple(window_size)
        self.pretrained_window_size = tuple(pretrained_window_size)
        device = self.qkv.weight.device
        if self.relative_position_bias_table is not None:
            self.resize_bias_table(self.window_size)
            self.relative_coords_table = None
        else:
            spacing = "log" if self.position_bias_kind == "cpb_log" else "linear"
            self.register_buffer(
                "relative_coords_table",
                relative_coordinates_table(self.window_size, self.pretrained_window_size, spacing).to(device),
                persistent=False,
            )
        self.register_buffer(
            "relative_position_index", relative_position_index(self.window_size).to(device), persistent=False
        )
        self.bias_cache.clear()  # new buffers would miss the cache anyway; this frees it now

    def resize_bias_table(self, window: tuple[int, int]) -> None:
        """Swin v1's transfer to another window: the table resized bicubically (`resize_bias_table`)."""
        table = self.relative_position_bias_table
        size = (2 * window[0] - 1, 2 * window[1] - 1)
        if size == self.bias_table_size:
            return
        resized = resize_bias_table(table, self.bias_table_size, size)
        self.relative_position_bias_table = nn.Parameter(resized, requires_grad=table.requires_grad)
        self.bias_table_size = size

    def bias_parameters(self) -> list[torch.Tensor]:
        """The learnt tensors the position bias comes from."""
        if self.cpb_mlp is None:
            return [self.relative_position_bias_table]
        return list(self.cpb_mlp.parameters())

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N): the bias of every query-key pair. v2: 16 * sigmoid of the MLP's output for the
        pair's offset (bounded, so a new window's offsets cannot blow it up); v1: the table entry itself."""
        if self.cpb_mlp is None:
            table = self.relative_position_bias_table  # ((2Wh-1)(2Ww-1), heads)
        else:
            table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        tokens = self.window_size[0] * self.window_size[1]
        bias = table[self.relative_position_index.view(-1)].view(tokens, tokens, self.num_heads).permute(2, 0, 1)
        return bias if self.cpb_mlp is None else 16 * torch.sigmoid(bias)

    def logit_bias(self, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """(nW or 1, heads, N, N) in `dtype`: the position bias plus the mask, the one term added to the logits.

        Cached when nothing needs its gradient: it depends only on the CPB MLP's weights, the coordinate
        table, the index and the mask, so it stays valid until one of them changes (`cache.TensorCache`
        says how a change is seen: optimiser steps, loads, in-place edits, new tensors)."""
        sources = [*self.bias_parameters(), self.relative_position_index]
        if self.relative_coords_table is not None:
            sources.append(self.relative_coords_table)
        if mask is not None:
            sources.append(mask)
        needs_graph = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in sources)
        if mask is not None and self.logit_scale is not None:
            sources.append(self.logit_scale)  # which heads' masks are total (head_masks), no gradient
        if (needs_graph or torch.compiler.is_compiling() or self.qkv.weight.device.type == "meta"
                or any(tensor.is_inference() for tensor in sources)):
            # Part of the autograd graph, traced into a compiled one, or shapes only: computed each call.
            return self.combine(mask, dtype)
        device_type = self.qkv.weight.device.type
        autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        return self.bias_cache.get(sources, lambda: self.combine(mask, dtype),
                                   extra=(dtype, autocast, torch.is_inference_mode_enabled()))

    def combine(self, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        bias = self.position_bias()  # (heads, N, N)
        bias = bias.unsqueeze(0) if mask is None else bias.unsqueeze(0) + self.head_masks(mask)  # (nW or 1, heads, N, N)
        return bias.to(dtype).contiguous()  # attend_sdpa views it as (1, nW * heads, N, N)

    def head_masks(self, mask: torch.Tensor) -> torch.Tensor:
        """(nW, N, N) -> (nW, heads or 1, N, N): the mask, total in the heads where the official -100 is
        total in effect.

        The shift mask's -100 leaves a masked pair the weight exp(logit - 100). Logits of cosine attention lie
        within 1/tau of 0 plus a bias in (0, 16), so relative to its row's largest weight (at least the
        query's own, never masked) a masked pair weighs at most exp(2 / tau + 16 - 100): for 1 / tau <= 30
        (logit_scale <= ln 30; it starts at ln 10) e^-24 or less, whose sum over a window is below fp32's
        rounding of the output. There the mask is made total (PADDING_MASK_VALUE), so the softmax returns
        exact zeros instead of weights of 1e-28 to 1e-45, subnormal floats, which Intel CPUs multiply and
        add 10-40x slower (SwinV2-T's training step 1.17-1.23x faster on one, docs/performance.md, item 22).
        Hotter heads keep -100, whose leak is then real and the official model's. Dot-product attention
        (v1) has unbounded logits: its mask stays as given."""
        masks = mask.unsqueeze(1)  # (nW, 1, N, N)
        if self.logit_scale is None:
            return masks
        cool = self.inverse_tau().detach() <= TOTAL_MASK_MAX_INVERSE_TAU  # (heads, 1, 1)
        total = cool & (masks <= SHIFT_MASK_VALUE)  # (nW, heads, N, N)
        return torch.where(total, masks.clamp(max=PADDING_MASK_VALUE), masks)

    def inverse_tau(self) -> torch.Tensor:
        """(heads, 1, 1): 1 / tau = exp(logit_scale), clamped at 100 (tau >= 0.01)."""
        return torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()

    def use_sdpa(self, x: torch.Tensor) -> bool:
        """The implementation for this call. "auto": the fused kernel on CUDA (its memory-efficient kernel
        also returns the mask's gradient); on the CPU only in fp32, when the mask needs no gradient
        (inference, or a frozen CPB MLP: the CPU flash kernel cannot return one, and its fallback is
        slower than the plain path), and for windows of more than 64 tokens (at 8x8 the plain path, its
        logits in place, measured 1.02x SDPA; at 16x16 0.94x: docs/performance.md, item 27); under bf16
        autocast the plain path measured faster; the
        reference elsewhere (e.g. the meta device, where FLOPs are counted)."""
        if self.attention_impl != "auto":
            return self.attention_impl == "sdpa"
        if x.device.type == "cuda":
            return True
        if x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or x.shape[1] <= CPU_PLAIN_MAX_TOKENS:
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.bias_parameters()))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) additive (shift and padding) or None; window i uses mask[i % nW]."""
        fused = self.use_sdpa(x)
        # The kernels take a mask in the dtype of q, k, v; the plain path adds it to the logits in fp32.
        dtype = x.dtype
        if fused and x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        bias = self.logit_bias(mask, dtype)  # (nW or 1, heads, N, N): position bias + mask
        windows = x.shape[0]
        if self.chunk_size == 0 or windows <= self.chunk_size:
            return self.attend(x, bias, fused)
        # Sequential self-attention (paper 3.5): the (windows, heads, N, N) logits of one chunk at a time.
        outputs = []
        for start in range(0, windows, self.chunk_size):
            stop = min(start + self.chunk_size, windows)
            outputs.append(self.attend(x[start:stop], rows_for_windows(bias, start, stop), fused))
        return torch.cat(outputs)

    def attend(self, x: torch.Tensor, bias: torch.Tensor, fused: bool) -> torch.Tensor:
        """Attention of (windows, N, C) given the additive (nW or 1, heads, N, N) bias, window i using bias[i % nW]."""
        windows, tokens, channels = x.shape
        head_dim = channels // self.num_heads
        qkv_bias = None
        if self.q_bias is not None:
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = self.qkv.product(x, qkv_bias)
        # Split on the (windows, N, 3, heads, head_dim) view itself: the backward then stacks the three
        # gradients straight into the (windows * N, 3C) layout of the linear's output, where unbinding a
        # permuted view would stack them heads-first and copy once more (37.7 MB per stage-0 block of
        # SwinV2-T at batch 8). The forward views are the same either way.
        q, k, v = (t.transpose(1, 2) for t in qkv.view(windows, tokens, 3, self.num_heads, head_dim).unbind(2))
        # each (windows, heads, N, head_dim)

        # Scaled cosine attention, |logits| <= 1 / tau whatever the activation amplitude: q and k to unit
        # length, and 1 / tau folded into q (the (windows, heads, N, N) logits are never scaled in a pass
        # of their own).
        if self.logit_scale is None:
            q = q * head_dim**-0.5  # Swin v1's dot product: logits grow with the activations
        else:
            inverse_tau = self.inverse_tau()  # (heads, 1, 1)
            # q in the order the output should have: tokens first where SDPA takes it unfolded.
            unfolded = fused and not folds_windows_into_heads(bias.shape[0], windows)
            q = scaled_unit_vectors(q, inverse_tau, keep_layout=unfolded)
            k = scaled_unit_vectors(k, None)

        x = self.attend_sdpa(q, k, v, bias) if fused else self.attend_plain(q, k, v, bias)
        return self.proj_drop(self.proj(x.reshape(windows, tokens, channels)))

    def attend_plain(self, q, k, v, bias) -> torch.Tensor:
        """The reference: softmax(q @ k^T + bias) @ v, in matmuls. Returns (windows, N, heads, head_dim)."""
        windows, heads, tokens, _ = q.shape
        num_masks = bias.shape[0]
        attn = q @ k.transpose(-2, -1)  # (windows, heads, N, N)
        if not attn.requires_grad and not self.training and not torch.compiler.is_compiling():
            # Nothing reads the logits but the softmax: bias and softmax written over them, no second and
            # third (windows, heads, N, N) tensor (under torch.compile inductor fuses the two instead).
            attn.view(-1, num_masks, heads, tokens, tokens).add_(bias)
            attn = torch.softmax(attn, dim=-1, out=attn)
        else:
            attn = (attn.view(-1, num_masks, heads, tokens, tokens) + bias).view(windows, heads, tokens, tokens)
            attn = self.attn_drop(attn.softmax(dim=-1))
        return (attn @ v).transpose(1, 2)

    def attend_sdpa(self, q, k, v, bias) -> torch.Tensor:
        """The same through F.scaled_dot_product_attention, bias as its additive mask and scale 1 (the
        kernels accumulate the softmax in fp32). Returns (windows, N, heads, head_dim)."""
        windows, heads, tokens, head_dim = q.shape
        num_masks = bias.shape[0]
        if folds_windows_into_heads(num_masks, windows):
            # Needs (windows, heads) contiguous: a copy of v (cosine attention's q and k come contiguous
            # from their normalisation).
            q, k, v = (t.contiguous().view(-1, num_masks * heads, tokens, head_dim) for t in (q, k, v))
            bias = bias.view(1, num_masks * heads, tokens, tokens)
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=1.0)
        # Back to (windows, N, heads, head_dim) in at most one copy, whichever layout the kernel wrote (the
        # CPU's follows q's): unfolding heads-first first would copy a tokens-first output twice.
        return x.unflatten(1, (-1, heads)).transpose(-3, -2).reshape(windows, tokens, heads, head_dim)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window_size={self.window_size}, "
            f"pretrained_window_size={self.pretrained_window_size}, num_heads={self.num_heads}, "
            f"attention={self.attention!r}, position_bias={self.position_bias_kind!r}, "
            f"attention_impl={self.attention_impl!r}"
        )
