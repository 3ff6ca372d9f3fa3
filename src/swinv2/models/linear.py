"""The linear layers' matrix product, y = x W^T + b, through PyTorch's default kernel or oneDNN's.

On x86 CPUs PyTorch computes an fp32 `F.linear` with MKL's sgemm. On an AMD AVX-512 CPU (Zen 4) MKL ran
at its AVX2 speed whatever MKL_ENABLE_INSTRUCTIONS allowed, while oneDNN's matmul, which PyTorch also
ships (inductor calls it for bf16), runs its AVX-512 kernel there: it ran SwinV2-T's forward products at
1.11-1.33x MKL's speed (three runs, the gap widest when the machine was slow), with the bias added inside
the product instead of in a pass of its own (docs/performance.md, item 18). On the AVX2 Zen 3 the two
measured the same. Same function either way: both accumulate in fp32 (tests compare them with F.linear,
forward and gradients).

    linear_impl "aten"    F.linear, everywhere
                "onednn"  oneDNN for fp32 CPU tensors outside autocast (also under torch.compile, below);
                          in eager inference (eval mode, no autograd), in fp32 and under the CPU's bf16
                          autocast, from a copy of the weight packed in oneDNN's layout (below); F.linear
                          for the rest (CUDA, bf16 training, the meta device, graphs traced for inductor's
                          freezing or for torch.export)
                "auto"    "onednn" on AMD CPUs with AVX-512, where it measured faster; "aten" elsewhere

With autograd, and under torch.compile, the product is an operator of its own, `swinv2::onednn_linear` (a
torch.library custom op with its gradient), which torch.compile keeps as one node and calls as it is:
inductor has no lowering of oneDNN's linear for weights that change, and compiled graphs with F.linear ran
MKL's products at their AVX2 speed on the Zen 4: with the op the compiled training step there ran at
1.14-1.17x the eager one, against 1.02x before (docs/performance.md, item 26). Graphs traced for inductor's
freezing keep F.linear, whose weights freezing packs for MKL (benchmark.Frozen), and so do torch.export's,
which should hold standard operators (ONNX).

In inference each layer keeps its weight packed in oneDNN's blocked layout, which the kernel otherwise
reorders a plain weight into in every call, and in bf16 rounded as well: autocast would cast every fp32
weight to bf16 in every forward pass, and `addmm` writes the bias into its output in a pass of its own.
From the kept bf16 copy oneDNN's linear ran SwinV2-T's bf16 inference 1.38x / 1.10x / 1.08x faster at
batch 1 / 8 / 32 on the Zen 4 (docs/performance.md, item 20), the packed fp32 copy its fp32 inference
1.04x-1.07x (item 28). The copy costs the weights' memory once more (half of it in bf16) while the model is
in eval mode: it is made at the first call in eval mode, made again when the weight changes, and dropped by
`train()`; `linear_impl="aten"` keeps none.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from .cache import TensorCache

LINEAR_IMPLEMENTATIONS = ("auto", "aten", "onednn")


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear kernel and its weight packing (the x86 and aarch64
    wheels do)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def onednn_linear_flops(x_shape, weight_shape, *args, **kwargs) -> int:
    """(..., in) @ (out, in)^T: 2 FLOPs per multiply-add, as FlopCounterMode counts F.linear's addmm."""
    return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * weight_shape[0]


# FlopCounterMode does not know oneDNN's linear and would count a CPU model's products as 0 FLOPs.
if onednn_available() and torch.ops.mkldnn._linear_pointwise not in flop_counter.flop_registry:
    flop_counter.register_flop_formula(torch.ops.mkldnn._linear_pointwise)(onednn_linear_flops)


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("vendor_id", "cpu family", "model", ...), read once;
    empty where there is none (not Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as lines:
            for line in lines:
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_vendor() -> str:
    """The CPU's vendor ("AuthenticAMD", "GenuineIntel"), "" where unknown."""
    return cpuinfo().get("vendor_id", "")


def cpu_description() -> str:
    """Vendor, family and model, as the benchmark's reports name the machine (AMD family 25 model 17 is Zen 4,
    family 26 Zen 5: the same AVX-512 BF16 instructions, measured here at twice Zen 4's fp32 matmul peak)."""
    fields = cpuinfo()
    if "vendor_id" not in fields:
        return ""
    return f"{fields['vendor_id']} family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"


# cpu_prefers_onednn's answer once known. A plain module global, not functools.cache, whose wrapper
# torch.compile cannot trace through (it would break the graph in every compiled linear layer); it reads
# this list as a constant, and the import fills it, so that a graph traced first finds it filled.
_prefers_onednn: list[bool] = []


def cpu_prefers_onednn() -> bool:
    """The "auto" rule: oneDNN on AMD CPUs with AVX-512, where MKL ran at its AVX2 speed."""
    if not _prefers_onednn:
        _prefers_onednn.append(onednn_available() and cpu_vendor() == "AuthenticAMD"
                               and torch.backends.cpu.get_cpu_capability() == "AVX512")
    return _prefers_onednn[0]


cpu_prefers_onednn()


def selects_onednn(impl: str) -> bool:
    """Whether `impl` asks for oneDNN's kernel on this CPU."""
    return impl == "onednn" or (impl == "auto" and cpu_prefers_onednn())


def records_gradient(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records a product of these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def uses_onednn(x: torch.Tensor, weight: torch.Tensor, impl: str) -> bool:
    """Whether `linear` takes oneDNN's fp32 kernel for this call. Under torch.compile not while it traces
    for inductor's freezing or for torch.export (module docstring)."""
    if not (selects_onednn(impl) and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")):
        return False
    return not torch.compiler.is_compiling() or not (torch.compiler.is_exporting() or traces_for_freezing())


def traces_for_freezing() -> bool:
    """Whether torch.compile traces a graph whose weights inductor will freeze: Dynamo reads the global flag
    while it traces (benchmark.Frozen). Imported here, not at the top: torch.compile has imported inductor's
    configuration by then, and `import swinv2` should not (a second)."""
    from torch._inductor import config

    return config.freezing


def packed_inference_dtype(x: torch.Tensor, layer: "Linear") -> torch.dtype | None:
    """The dtype in which `layer` computes this call from its packed copy of the weight, or None: eager
    inference (eval mode, no autograd) on the CPU, fp32 outside autocast and bf16 under the CPU's bf16
    autocast (module docstring)."""
    if (layer.training or torch.is_grad_enabled() or not selects_onednn(layer.impl) or torch.compiler.is_compiling()
            or x.device.type != "cpu" or layer.weight.dtype != torch.float32):
        return None
    if not torch.is_autocast_enabled("cpu"):
        return torch.float32 if x.dtype == torch.float32 else None
    if torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16):
        return torch.bfloat16
    return None


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) @ weight (out, in)^T + bias (out), in one oneDNN call. `weight` may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], None)


def _fake_onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _save_inputs(ctx, inputs, output) -> None:
    x, weight, _bias = inputs
    ctx.save_for_backward(x, weight)


def _gradients(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """x (tokens, in), grad (tokens, out): dx = g W through oneDNN as well (the weight as a transposed view),
    dW = g^T x through torch.mm (a product over all tokens, which oneDNN would take only after copying an
    operand transposed: measured slower, docs/performance.md, item 18) and db = sum of g over tokens.
    Written in operators that have gradients themselves, so a backward can be differentiated again."""
    x, weight = ctx.saved_tensors
    needs_x, needs_weight, needs_bias = ctx.needs_input_grad  # needs_bias is False where bias is None
    grad_x = torch.ops.swinv2.onednn_linear(grad, weight.t(), None) if needs_x else None
    grad_weight = grad.t().mm(x) if needs_weight else None
    grad_bias = grad.sum(0) if needs_bias else None
    return grad_x, grad_weight, grad_bias


# `torch.ops.swinv2.onednn_linear(x, weight, bias)`: onednn_linear of (tokens, in) as an operator with a
# gradient, which autograd records and torch.compile keeps whole. Defined once per process: a second copy
# of this module (benchmarks/against_revision.py imports another revision's) takes the first one's.
if not hasattr(torch.ops.swinv2, "onednn_linear"):
    _operator = torch.library.custom_op("swinv2::onednn_linear", onednn_linear, mutates_args=(),
                                        schema="(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
    _operator.register_fake(_fake_onednn_linear)
    _operator.register_autograd(_gradients, setup_context=_save_inputs)
    flop_counter.register_flop_formula(torch.ops.swinv2.onednn_linear)(onednn_linear_flops)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """F.linear(x, weight, bias), through oneDNN where `impl` selects it for this call (module docstring)."""
    if not uses_onednn(x, weight, impl):
        return F.linear(x, weight, bias)
    if records_gradient(x, weight, bias) or torch.compiler.is_compiling():
        # The operator, which a compiled graph calls as it is. On (tokens, in): the kernel returns an N-D
        # result as a view of its 2-D one, and a custom operator's output must not be a view (an in-place op
        # on it, ReLU's, would bypass the backward).
        y = torch.ops.swinv2.onednn_linear(x.reshape(-1, x.shape[-1]), weight, bias)
        if x.dim() == 2:
            return y
        # Reshaped as torch.matmul reshapes its N-D result: not a view for autograd, so that wrappers that
        # hook a module's output (FSDP2 warned that the model "returned a view tensor", whose in-place
        # edits would skip its hooks) see a tensor of its own.
        return torch.ops.aten._unsafe_view(y, (*x.shape[:-1], y.shape[-1]))
    return onednn_linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear, the same parameters and state dict, whose product goes through `linear`, or in eager
    inference through oneDNN from a kept packed copy of the weight (`packed_inference_dtype`). `impl` is
    set for the whole model by SwinTransformerV2 from its config's linear_impl."""

    impl: str = "auto"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.packed_cache = TensorCache()  # the weight packed for oneDNN, see packed_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x, self.bias)

    def product(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x @ weight^T + bias, with this layer's own bias or one its caller assembles (the attention's
        q and v biases around a zero one for k)."""
        dtype = packed_inference_dtype(x, self)
        if dtype is None:
            return linear(x, self.weight, bias, self.impl)
        # What F.linear (under autocast: autocast's) computes: x, weight and bias in `dtype`, one
        # fp32-accumulated product.
        bias = None if bias is None else bias.to(dtype)
        return onednn_linear(x.to(dtype), self.packed_weight(dtype), bias)

    def packed_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight in `dtype`, packed in oneDNN's blocked layout (an opaque mkldnn tensor, which only
        oneDNN's kernels read), made again when the weight changes (`cache.TensorCache`)."""
        weight = self.weight
        return self.packed_cache.get(
            [weight], lambda: torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype)), extra=(dtype,))

    def train(self, mode: bool = True) -> "Linear":
        if mode:
            self.packed_cache.clear()  # a model that trains again does not keep a second copy of its weights
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl!r}"
