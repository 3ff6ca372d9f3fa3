"""The block's MLP, Linear(C, rC) -> GELU -> Linear(rC, C), and its CPU training step in row chunks.

A training step through autograd makes four (tokens, rC) tensors per MLP: fc1's output h and GELU's output
a, both kept for the backward, then the gradients of a and of h. In SwinV2-T's first stage at batch 8 each is
48 MiB, above glibc's mmap threshold (at most 32 MiB): every one is fresh memory from the kernel, zeroed
page by page on first touch, and unmapped again when freed, in every step. `ChunkedMlp` keeps h alone: the
forward applies GELU and fc2 to a few thousand rows of h at a time, the backward recomputes GELU there
and takes the gradient of h in place of a's, chunk by chunk, so the rest are chunk-sized, reused memory.
The same function (fc2 sees the same rows; the weight gradients sum the same products in chunks), and a
smaller step: a is not kept. docs/performance.md, item 23, has the measurements.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear, linear

# A chunk of the (tokens, rC) hidden layer: as many rows as hold this many elements (8 MiB in fp32).
MLP_CHUNK_ELEMENTS = 2**21


def mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None,
        approximate: str, impl: str) -> torch.Tensor:
    """fc2(GELU(fc1(x))) in plain operators."""
    return linear(F.gelu(linear(x, w1, b1, impl), approximate=approximate), w2, b2, impl)


class ChunkedMlp(torch.autograd.Function):
    """mlp() of (tokens, C) with h = fc1(x) the only (tokens, rC) tensor kept for the backward (module
    docstring). Per chunk of rows r, with g the gradient of the output:
        a_r = GELU(h_r)                    recomputed
        dW2 += g_r^T a_r                   dh_r = GELU'(h_r) * (g_r W2), in one buffer
        dW1 += dh_r^T x_r,  db1 += sum dh_r,  dx_r = dh_r W1
    and db2 = sum of g. A backward that is itself differentiated (create_graph) runs through autograd."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, approximate: str, impl: str, rows: int):
        hidden = linear(x, w1, b1, impl)  # (tokens, rC)
        ctx.save_for_backward(x, hidden, w1, b1, w2, b2)
        ctx.approximate, ctx.impl, ctx.rows = approximate, impl, rows
        return torch.cat([linear(F.gelu(part, approximate=approximate), w2, b2, impl) for part in hidden.split(rows)])

    @staticmethod
    def backward(ctx, grad):
        x, hidden, w1, b1, w2, b2 = ctx.saved_tensors
        approximate, impl = ctx.approximate, ctx.impl
        if torch.is_grad_enabled():  # create_graph=True: autograd differentiates the plain composition
            wanted = [t for t, needed in zip((x, w1, b1, w2, b2), ctx.needs_input_grad) if needed]
            with torch.enable_grad():
                found = iter(torch.autograd.grad(mlp(x, w1, b1, w2, b2, approximate, impl), wanted, grad,
                                                 create_graph=True))
            return (*(next(found) if needed else None for needed in ctx.needs_input_grad[:5]), None, None, None)
        grad = grad.contiguous()
        # The weight gradients summed in place through addmm's out= form, which FlopCounterMode counts
        # (it does not know addmm_).
        needs_x, needs_w1, needs_b1, needs_w2, needs_b2 = ctx.needs_input_grad[:5]
        grad_w1 = torch.zeros_like(w1) if needs_w1 else None
        grad_b1 = torch.zeros_like(b1) if needs_b1 else None
        grad_w2 = torch.zeros_like(w2) if needs_w2 else None
        grad_x = []
        for part, grad_part, x_part in zip(hidden.split(ctx.rows), grad.split(ctx.rows), x.split(ctx.rows)):
            if needs_w2:
                torch.addmm(grad_w2, grad_part.t(), F.gelu(part, approximate=approximate), out=grad_w2)
            grad_hidden = grad_part.mm(w2)  # (rows, rC), then GELU's backward written over it
            torch.ops.aten.gelu_backward.grad_input(grad_hidden, part, approximate=approximate, grad_input=grad_hidden)
            if needs_w1:
                torch.addmm(grad_w1, grad_hidden.t(), x_part, out=grad_w1)
            if needs_b1:
                grad_b1 += grad_hidden.sum(0)
            if needs_x:
                grad_x.append(linear(grad_hidden, w1.t(), None, impl))
        grad_b2 = grad.sum(0) if needs_b2 else None
        return (torch.cat(grad_x) if needs_x else None, grad_w1, grad_b1, grad_w2, grad_b2, None, None, None)


class Mlp(nn.Module):
    """Linear(C, rC) -> GELU -> Dropout -> Linear(rC, C) -> Dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, chunk_elements: int = MLP_CHUNK_ELEMENTS) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)
        self.chunk_elements = chunk_elements  # ChunkedMlp's chunk size in CPU training, 0 = autograd's step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_chunks(x):
            rows = max(1, self.chunk_elements // self.fc1.out_features)
            y = ChunkedMlp.apply(x.reshape(-1, x.shape[-1]), self.fc1.weight, self.fc1.bias, self.fc2.weight,
                                 self.fc2.bias, self.act.approximate, self.fc1.impl, rows)
            return y.view(*x.shape[:-1], y.shape[-1])
        hidden = self.fc1(x)
        if not torch.is_grad_enabled() and isinstance(self.act, nn.GELU):
            # Without autograd nothing reads fc1's output after GELU (its backward would): overwrite it,
            # as nn.ReLU(inplace=True) does, so that one (tokens, rC) buffer per MLP stays in cache, not two
            # (and, as with ReLU, a forward hook on fc1 that keeps its output sees it overwritten).
            hidden = torch.ops.aten.gelu_(hidden, approximate=self.act.approximate)
        else:
            hidden = self.act(hidden)
        return self.drop(self.fc2(self.drop(hidden)))

    def uses_chunks(self, x: torch.Tensor) -> bool:
        """ChunkedMlp for this call: a gradient to record, fp32 on the CPU outside autocast (GPUs' caching
        allocator reuses memory anyway, and wants large kernels), no dropout to apply, nothing hooked on the
        layers inside (which it would bypass), and not while torch.compile traces (inductor plans memory)."""
        return (self.chunk_elements > 0 and torch.is_grad_enabled() and x.device.type == "cpu"
                and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling() and isinstance(self.act, nn.GELU)
                and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
                and (self.drop.p == 0.0 or not self.training)
                and not any(m._forward_hooks or m._forward_pre_hooks for m in (self.fc1, self.act, self.fc2)))
