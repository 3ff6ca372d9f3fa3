"""`swinv2 benchmark`: images/s of this project against Hugging Face transformers' Swinv2, same weights.

For each case (inference or a training step; fp32 or bf16 autocast; a batch size) every implementation runs
in the same process, interleaved after a warm-up (every implementation once per round, in orders that vary
so that each follows each of the others equally often: a step inherits the allocator's state from the one
before it), so that a machine whose load drifts slows them alike; the table gives each one's median images/s
with the min-max, the median ratio to the first peer, and the achieved GFLOP/s against the machine's matmul
peak (torch.mm, and oneDNN's linear for fp32 and bf16 on the CPU, the faster of the two; same threads and
dtype), which is chosen at the start and re-measured in every round as one more step, so that each round's
achieved GFLOP/s is divided by that round's peak (PeakProbe); where oneDNN's is the faster, torch.mm's, the
kernel the issue names, is re-measured too and the targets divide by both. FLOPs per image come from
`torch.utils.flop_counter.FlopCounterMode` on the meta device, the counting `swinv2 info` uses (matrix
products and convolutions, 2 per multiply-add), for the forward pass and, for training, forward plus
backward. The table also gives each implementation's minor page faults per step, the median over its timed
steps (getrusage; where the platform has it): each is a page of fresh memory the kernel zeroes on first
touch, which is what glibc's malloc costs for memory it returned to the kernel (large blocks, and the top of
the heap above its trim threshold) and is then asked for again. They depend on what the process allocated
before, which is why the order of the cases can move an implementation's speed (docs/performance.md).

Implementations:
    swinv2           this project as configured (attention_impl and linear_impl "auto": docs/performance.md)
    swinv2-plain     this project with the reference attention (matmul + softmax, bias recomputed)
    swinv2-compiled  this project under torch.compile (the first calls compile, inside the warm-up)
    swinv2-frozen    the same with inductor's freezing: the weights become graph constants, folded and
                     pre-packed for the matmul library; inference only (a frozen graph would not see the
                     weights change), so it sits out the training cases
    hf               transformers.Swinv2ForImageClassification with the same config and weights
    matmul-floor     not a model: the matrix products (and the patch convolution) that this project's
                     model runs in the case, recorded once and replayed alone on tensors of the same
                     layouts, everything between them left out. No implementation that computes these
                     products with PyTorch's kernels can be faster, so `matmul-floor / hf` is the ceiling
                     of any speed-up over hf (printed under the table with the targets)
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

try:
    import resource  # getrusage's minor page faults; Unix only, the report leaves them out elsewhere
except ImportError:
    resource = None

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from . import allocator
from .errors import InputError, SwinV2Error
from .models import SwinTransformerV2, create_model
from .models.linear import LINEAR_IMPLEMENTATIONS, cpu_description, onednn_available, onednn_linear
from .train.precision import cpu_has_fast_bf16

IMPLEMENTATIONS = ("swinv2", "swinv2-plain", "swinv2-compiled", "swinv2-frozen", "hf", "matmul-floor")
PEERS_NOT_OURS = ("hf", "matmul-floor")  # the targets compare this project's peers (the others) with hf
INFERENCE_ONLY = ("swinv2-frozen",)
RATIO_TARGETS = {"inference": 1.5, "train": 1.3}  # the issue's: ours over hf, fp32, batch 8
MODES = ("inference", "train")
PRECISIONS = ("fp32", "bf16")
DEFAULT_MODEL = "swinv2_tiny_window8_256"
PEAK_STEP = "matmul peak"  # the peak's step among the implementations' in each round (PeakProbe)
# torch.mm's own, the kernel the issue names, where the fastest kernel is another (oneDNN's linear on Zen 4)
TORCH_MM_PEAK_STEP = "torch.mm peak"


@dataclass
class Result:
    """One implementation in one case: images/s over the timed repeats."""

    mode: str
    precision: str
    batch_size: int
    implementation: str
    images_per_second: list[float]
    flops_per_image: float  # of this batch size: the batch's FLOPs over its images
    peak_gflops: float  # the case's: the median of peak_per_round, or the run's one peak where there is none
    # The matmul peak re-measured in each of the case's rounds, beside the implementations (GFLOP/s); None
    # in reports written before it was (their peak was measured once, at the start of the run)
    peak_per_round: list[float] | None = None
    # torch.mm's peak in each round where the fastest kernel was another (else None), and achieved over it
    torch_mm_peak_per_round: list[float] | None = None
    fraction_of_torch_mm_peak: float | None = None
    median: float = 0.0
    minimum: float = 0.0
    maximum: float = 0.0
    gflops: float = 0.0  # achieved, at the median
    # Achieved over the peak: the median over rounds of each round's GFLOP/s over that round's peak, so that
    # a machine whose speed drifts during the run moves both alike
    fraction_of_peak: float = 0.0
    # The first implementation's images/s over this one's, the median over rounds (None on the first's row)
    ratio_to_reference: float | None = None
    # The process's minor page faults during each timed step (None where not counted: reports written before
    # they were, or a platform without getrusage)
    page_faults_per_step: list[int] | None = None

    @property
    def median_page_faults(self) -> float | None:
        return statistics.median(self.page_faults_per_step) if self.page_faults_per_step else None

    def __post_init__(self) -> None:
        self.median = statistics.median(self.images_per_second)
        self.minimum, self.maximum = min(self.images_per_second), max(self.images_per_second)
        self.gflops = self.median * self.flops_per_image / 1e9
        if self.peak_per_round:
            self.peak_gflops = statistics.median(self.peak_per_round)
            self.fraction_of_peak = self.fraction_of(self.peak_per_round)
        else:
            self.fraction_of_peak = self.gflops / self.peak_gflops if self.peak_gflops else 0.0
        if self.torch_mm_peak_per_round:
            self.fraction_of_torch_mm_peak = self.fraction_of(self.torch_mm_peak_per_round)

    def fraction_of(self, peaks: Sequence[float]) -> float:
        """The median over rounds of this round's achieved GFLOP/s over that round's peak."""
        return statistics.median(rate * self.flops_per_image / 1e9 / peak
                                 for rate, peak in zip(self.images_per_second, peaks))


@dataclass
class Report:
    model: str
    config: dict[str, Any]
    machine: dict[str, Any]
    settings: dict[str, Any]
    peak_gflops: dict[str, float]
    flops_per_image: dict[str, float]  # at batch 1, by mode
    results: list[Result] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["targets"] = targets(self)
        values["ceilings"] = ceilings(self)
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Report":
        """A report written by `to_json`; the targets and ceilings are recomputed from its rounds (and each
        result's medians and GFLOP/s by Result itself)."""
        names = {item.name for item in fields(cls)} - {"results"}
        return cls(**{name: values[name] for name in names},
                   results=[Result(**result) for result in values["results"]])

    def format(self) -> str:
        return format_report(self)


# ------------------------------------------------------------------------------------ counting
def flops_per_image(model: SwinTransformerV2, mode: str, batch_size: int = 1) -> float:
    """Matmul and convolution FLOPs per image of a batch: the forward pass, or forward + backward for
    "train". The batch's count over its images: the position-bias MLPs run once per batch, the rest per image.

    Counted on a meta copy (shapes only) with the reference attention, whose two attention products
    FlopCounterMode sees as matrix products whatever kernel runs them at benchmark time."""
    config = model.config.replace(attention_impl="plain", use_checkpoint=False)
    with torch.device("meta"):
        counted = SwinTransformerV2(config).train(mode == "train")
    image = torch.zeros(batch_size, config.in_chans, *config.img_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        if mode == "train":
            counted(image).sum().backward()
        else:
            with torch.no_grad():
                counted(image)
    return counter.get_total_flops() / batch_size


def peak_kernels(dtype: torch.dtype, device: torch.device) -> dict[str, Callable[[torch.Tensor, torch.Tensor], Any]]:
    """The matrix-product kernels the peak is the best of: torch.mm, and oneDNN's linear (a @ b^T, the same
    FLOPs) for fp32 and bf16 on CPUs where it is there, since models/linear.py may run the model's products
    through it and a peak below what the model's own kernels reach would overstate the fraction of it."""
    kernels: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] = {"torch.mm": torch.mm}
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and onednn_available():
        kernels["oneDNN linear"] = lambda a, b: onednn_linear(a, b, None)
    return kernels


def matmul_peaks(dtype: torch.dtype, device: torch.device, sizes: Sequence[int] = (1024, 2048),
                 repeats: int = 5) -> dict[str, tuple[float, int]]:
    """Each of `peak_kernels`' best median GFLOP/s over square sizes, in this process's threads, and the
    size it was reached at."""
    kernels = peak_kernels(dtype, device)
    best = dict.fromkeys(kernels, (0.0, sizes[0]))
    for size in sizes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        for name, kernel in kernels.items():
            seconds = []
            for index in range(repeats + 1):
                synchronize(device)
                start = time.perf_counter()
                kernel(a, b)
                synchronize(device)
                if index:  # the first call warms up
                    seconds.append(time.perf_counter() - start)
            best[name] = max(best[name], (2 * size**3 / statistics.median(seconds) / 1e9, size))
    return best


class PeakProbe:
    """The matmul peak as one more step of the interleaved rounds (time_interleaved): the fastest kernel at
    the size it was fastest at (or the kernel `name`, at its own best size), called enough times to take
    about `seconds`. Measured once at the start, the peak would be the machine's speed of that moment;
    machines drift by a third within a run (docs/performance.md), and a fraction of a peak read in another
    moment moves with the drift. `by_kernel`: matmul_peaks' reading at the start, measured here or given."""

    def __init__(self, dtype: torch.dtype, device: torch.device, sizes: Sequence[int], seconds: float = 0.25,
                 name: str | None = None, by_kernel: dict[str, tuple[float, int]] | None = None) -> None:
        self.by_kernel = by_kernel or matmul_peaks(dtype, device, sizes)
        self.name = name or max(self.by_kernel, key=lambda kernel: self.by_kernel[kernel][0])
        self.gflops, size = self.by_kernel[self.name]
        self.kernel = peak_kernels(dtype, device)[self.name]
        self.a = torch.randn(size, size, device=device).to(dtype)
        self.b = torch.randn(size, size, device=device).to(dtype)
        self.calls = max(1, round(seconds * self.gflops * 1e9 / (2 * size**3)))
        self.flops = self.calls * 2 * size**3

    def __call__(self) -> None:
        for _ in range(self.calls):
            self.kernel(self.a, self.b)

    def gflops_per_round(self, seconds: Sequence[float]) -> list[float]:
        """The peak of each round, from this step's seconds in it."""
        return [self.flops / s / 1e9 for s in seconds]


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, sizes: Sequence[int] = (1024, 2048),
                       repeats: int = 5) -> float:
    """The matmul peak: the fastest of `peak_kernels`."""
    return max(gflops for gflops, _ in matmul_peaks(dtype, device, sizes, repeats).values())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -------------------------------------------------------------------------------- the peers
def build_ours(model_name: str, overrides: dict[str, Any], attention_impl: str) -> SwinTransformerV2:
    return create_model(model_name, attention_impl=attention_impl, **overrides)


def build_hf(model: SwinTransformerV2) -> nn.Module:
    """transformers' Swinv2ForImageClassification with `model`'s configuration and weights."""
    try:
        from transformers import Swinv2Config, Swinv2ForImageClassification
    except ImportError as error:
        raise SwinV2Error(
            "the hf peer needs Hugging Face transformers: pip install transformers, "
            "or leave hf out of --implementations"
        ) from error
    from .checkpoints import export_state_dict
    from .checkpoints.configs import hf_config_json

    values = hf_config_json(model.config)
    values.pop("architectures")
    values.pop("model_type")
    peer = Swinv2ForImageClassification(Swinv2Config(**values))
    peer.load_state_dict(export_state_dict(model, "hf"), strict=True)
    return peer


class Logits(nn.Module):
    """HF's model returns an output object; the benchmark wants logits, as ours gives them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


class Frozen(nn.Module):
    """`model` under torch.compile with inductor's freezing. Dynamo decides on freezing while it traces, at
    the first call, and lifts the parameters as constants only if `torch._inductor.config.freezing` is set
    then; `torch.compile(model, options={"freezing": True})` alone hands the flag to inductor only, and
    with torch 2.13 compiled a graph that reads the live weights (not frozen, nothing pre-packed). So every
    call runs with the flag set. The options stay: they make this a backend of its own, without which
    Dynamo would reuse a graph that another torch.compile of the same class traced (swinv2-compiled's)
    for this one. tests/test_benchmark.py checks both peers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.compiled = torch.compile(model, options={"freezing": True})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._inductor import config as inductor_config  # imported by torch.compile, not by torch

        with inductor_config.patch(freezing=True):
            return self.compiled(x)


def build_peers(model_name: str, overrides: dict[str, Any], implementations: Sequence[str],
                attention_impl: str, device: torch.device, seed: int = 0,
                initialise: Callable[[SwinTransformerV2], Any] | None = None,
                ) -> tuple[SwinTransformerV2, dict[str, nn.Module]]:
    """Every implementation with the same weights: ours, randomly initialised with `seed`, then given to
    `initialise` if set (the default initialisation zeroes the post-norms, so every block starts as the
    identity: a check that the peers compute the same function needs other weights)."""
    torch.manual_seed(seed)
    reference = build_ours(model_name, overrides, attention_impl)
    if initialise is not None:
        initialise(reference)
    peers: dict[str, nn.Module] = {}
    for name in implementations:
        if name == "hf":
            peers[name] = Logits(build_hf(reference))
        elif name == "matmul-floor":
            # Recorded from the reference attention, whose products are matmuls the recorder sees (a fused
            # kernel would hide them); the products are the same whichever kernel runs them.
            model = build_ours(model_name, overrides, "plain")
            model.load_state_dict(reference.state_dict())
            peers[name] = MatmulFloor(model)
        else:
            impl = "plain" if name == "swinv2-plain" else attention_impl
            model = build_ours(model_name, overrides, impl)
            model.load_state_dict(reference.state_dict())
            if name == "swinv2-compiled":
                model = torch.compile(model)
            elif name == "swinv2-frozen":
                model = Frozen(model)
            peers[name] = model
    return reference, {name: model.to(device) for name, model in peers.items()}


def make_step(model: nn.Module, mode: str, precision: str, images: torch.Tensor,
              labels: torch.Tensor) -> Callable[[], None]:
    """One timed unit: a forward pass without gradients, or forward, loss, backward and a (fused) AdamW step."""
    if isinstance(model, MatmulFloor):
        return model.make_step(mode, precision, images, labels)
    device_type = images.device.type
    autocast = precision == "bf16"
    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
                model(images)

        return infer
    model.train()
    # The fused kernel (CPU and CUDA): the optimiser is the same for every peer, and the per-parameter
    # loop of the default one would add seconds of the same element-wise work to each.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def train() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train


def minor_page_faults() -> int:
    """The process's minor page faults so far (all its threads), 0 where getrusage is missing."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def balanced_orders(count: int) -> list[list[int]]:
    """Orders of `count` items, one per round, in which each item directly follows each other item equally
    often over the cycle (a Williams design: `count` orders where `count` is even, twice as many where it
    is odd): 0 1 n-1 2 n-2 ... and its shifts by 1, 2, ... modulo n, and for odd n their reverses. For two:
    A B, B A."""
    first, low, high = [0], 1, count - 1
    while len(first) < count:
        first.append(low)
        low += 1
        if len(first) < count:
            first.append(high)
            high -= 1
    orders = [[(item + shift) % count for item in first] for shift in range(count)]
    return orders + [order[::-1] for order in orders] if count % 2 else orders


def time_interleaved(steps: dict[str, Callable[[], None]], warmup: int, repeats: int,
                     device: torch.device, faults: dict[str, list[int]] | None = None) -> dict[str, list[float]]:
    """Seconds per step of each implementation: `warmup` untimed rounds, then `repeats` timed rounds,
    each round running every implementation once, in the round's order of `balanced_orders`. A step
    inherits the allocator's state from the one before it (on machine B a model's training step ran 1-4%
    faster or slower by which model preceded it: docs/performance.md), so no implementation always runs
    after the same one. With `faults`, also each timed step's minor page faults, by implementation."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    orders = balanced_orders(len(names))
    for round_index in range(warmup + repeats):
        for name in (names[index] for index in orders[round_index % len(orders)]):
            step = steps[name]
            synchronize(device)
            before, start = minor_page_faults(), time.perf_counter()
            step()
            synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - start)
                if faults is not None:
                    faults.setdefault(name, []).append(minor_page_faults() - before)
    return seconds


# --------------------------------------------------------------------------- the matmul floor
MATRIX_PRODUCTS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
                   torch.ops.aten.addmm.out,  # the chunked MLP's weight gradients (models/mlp.py)
                   torch.ops.aten.baddbmm.default, torch.ops.aten.convolution.default,
                   torch.ops.aten.convolution_backward.default,
                   # linear_impl "onednn" (models/linear.py): its operator with a gradient, and the
                   # kernel itself without autograd, where this PyTorch has it
                   torch.ops.swinv2.onednn_linear.default,
                   *((torch.ops.mkldnn._linear_pointwise.default,) if onednn_available() else ()))


@dataclass(frozen=True)
class Layout:
    """What a kernel sees of a tensor argument: its shape, strides (a transposed weight stays one), dtype.
    A frozen dataclass, not a NamedTuple: pytree would take a tuple apart instead of mapping it."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    packed: bool = False  # oneDNN's packed weight (an mkldnn tensor: Linear's kept bf16 weight), no strides

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "Layout":
        if tensor.is_mkldnn:
            return cls(tuple(tensor.shape), (), tensor.dtype, tensor.device, packed=True)
        return cls(tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype, tensor.device)

    def make(self, generator: torch.Generator) -> torch.Tensor:
        """Random values in this layout (strides of 0, from broadcasting, included)."""
        if self.packed:
            return torch.ops.mkldnn._reorder_linear_weight(torch.randn(self.shape, generator=generator).to(self.dtype))
        extent = 1 + sum((size - 1) * step for size, step in zip(self.shape, self.stride) if size > 0)
        values = torch.randn(extent, generator=generator).to(self.dtype)
        return values.to(self.device).as_strided(self.shape, self.stride)


class MatrixProductRecorder(TorchDispatchMode):
    """Notes every matrix product and convolution that runs under it (backward included), with the layouts
    of its tensor arguments, and runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATRIX_PRODUCTS:
            self.calls.append((func, *pytree.tree_map_only(torch.Tensor, Layout.of, (args, kwargs))))
        return func(*args, **kwargs)


class MatmulFloor(nn.Module):
    """The `matmul-floor` peer: `model`'s matrix products in a case, without the rest of the model.

    `make_step` runs the case once under `MatrixProductRecorder` (a forward pass without gradients, or
    forward, loss and backward), then returns a step that calls the same kernels in the same order on
    random tensors of the same layouts, each output allocated as the kernel allocates it. Inputs of equal
    layouts share one tensor, which can only make the floor faster (warmer caches): the floor stays a
    lower bound of the time of any implementation that runs these products through these kernels."""

    def __init__(self, model: SwinTransformerV2) -> None:
        super().__init__()
        self.model = model

    def record(self, mode: str, precision: str, images: torch.Tensor, labels: torch.Tensor) -> list[tuple]:
        recorder = MatrixProductRecorder()
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if mode == "inference":
                with torch.no_grad(), recorder:
                    self.model.eval()(images)
            else:
                with recorder:
                    F.cross_entropy(self.model.train()(images), labels).backward()
        self.model.zero_grad(set_to_none=True)
        return recorder.calls

    def make_step(self, mode: str, precision: str, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
        generator = torch.Generator().manual_seed(0)
        tensors: dict[Layout, torch.Tensor] = {}

        def tensor(layout: Layout) -> torch.Tensor:
            if layout not in tensors:
                tensors[layout] = layout.make(generator)
            return tensors[layout]

        calls = [(func, *pytree.tree_map_only(Layout, tensor, (args, kwargs)))
                 for func, args, kwargs in self.record(mode, precision, images, labels)]

        def replay() -> None:
            with torch.no_grad():
                for func, args, kwargs in calls:
                    func(*args, **kwargs)

        return replay


# ----------------------------------------------------------------------------------- running
def run(
    model: str = DEFAULT_MODEL,
    overrides: dict[str, Any] | None = None,
    implementations: Sequence[str] = ("swinv2", "hf"),
    modes: Sequence[str] = MODES,
    precisions: Sequence[str] = PRECISIONS,
    batch_sizes: Sequence[int] = (8,),
    train_batch_sizes: Sequence[int] = (8,),
    warmup: int = 2,
    repeats: int = 5,
    attention_impl: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    peak_sizes: Sequence[int] = (1024, 2048),
    keep_freed_memory: bool = False,
) -> Report:
    """Measure every (mode, precision, batch size) case for every implementation; see the module doc.

    `keep_freed_memory`: glibc's malloc told to keep freed memory first (swinv2.allocator), for every peer:
    the process then takes no page faults for memory it has used before."""
    check_choices(implementations, IMPLEMENTATIONS, "implementation")
    check_choices(modes, MODES, "mode")
    check_choices(precisions, PRECISIONS, "precision")
    if warmup < 0 or repeats < 1 or min([*batch_sizes, *train_batch_sizes], default=1) < 1:
        raise InputError("warm-up must be >= 0, repeats and batch sizes >= 1")
    if threads is not None:
        torch.set_num_threads(threads)
    if keep_freed_memory:
        allocator.keep_freed_memory()
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available to torch")
    reference, peers = build_peers(model, dict(overrides or {}), implementations, attention_impl, target)
    config = reference.config
    per_image = functools.cache(functools.partial(flops_per_image, reference))  # (mode, batch size) -> FLOPs
    flops = {mode: per_image(mode, 1) for mode in modes}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    probes = {precision: PeakProbe(dtypes[precision], target, peak_sizes) for precision in precisions}
    # torch.mm's own peak beside the fastest kernel's, where that is another: the definition.
    mm_probes = {precision: PeakProbe(dtypes[precision], target, peak_sizes, name="torch.mm", by_kernel=probe.by_kernel)
                 for precision, probe in probes.items() if probe.name != "torch.mm"}
    report = Report(
        model=model, config=config.to_dict(), machine=machine(target), flops_per_image=flops,
        peak_gflops={precision: probe.gflops for precision, probe in probes.items()},
        settings={"implementations": list(implementations), "warmup": warmup, "repeats": repeats,
                      "order": "balanced",  # of the rounds (balanced_orders); reports before it ran A B A B
                      "attention_impl": attention_impl, "device": str(target), "threads": torch.get_num_threads(),
                      "allocator": allocator.allocator_state(),
                      "peak_kernels": {precision: {name: gflops for name, (gflops, _) in probe.by_kernel.items()}
                                       for precision, probe in probes.items()}},
    )
    generator = torch.Generator().manual_seed(1)
    for mode in modes:
        for precision in precisions:
            for batch in batch_sizes if mode == "inference" else train_batch_sizes:
                if progress:
                    progress(f"{mode} {precision} batch {batch}")
                images = torch.randn(batch, config.in_chans, *config.img_size, generator=generator).to(target)
                labels = torch.randint(0, max(config.num_classes, 1), (batch,), generator=generator).to(target)
                steps = {name: make_step(peer, mode, precision, images, labels) for name, peer in peers.items()
                         if mode == "inference" or name not in INFERENCE_ONLY}
                probe, mm_probe = probes[precision], mm_probes.get(precision)
                peak_steps = {PEAK_STEP: probe, **({TORCH_MM_PEAK_STEP: mm_probe} if mm_probe else {})}
                faults: dict[str, list[int]] = {}
                seconds = time_interleaved({**steps, **peak_steps}, warmup, repeats, target, faults)
                peaks = probe.gflops_per_round(seconds.pop(PEAK_STEP))
                mm_peaks = mm_probe.gflops_per_round(seconds.pop(TORCH_MM_PEAK_STEP)) if mm_probe else None
                results = [Result(mode, precision, batch, name, [batch / s for s in values], per_image(mode, batch),
                                  probe.gflops, peaks, mm_peaks,
                                  page_faults_per_step=faults[name] if resource else None)
                           for name, values in seconds.items()]
                for result in results[1:]:
                    # Per round, so that load shared by the two runs of a round cancels.
                    result.ratio_to_reference = round_ratio(results[0], result)
                report.results.extend(results)
    return report


def check_choices(values: Sequence[str], allowed: Sequence[str], what: str) -> None:
    unknown = [value for value in values if value not in allowed]
    if unknown or not values:
        raise InputError(f"unknown {what} {unknown or values}; choose from {', '.join(allowed)}")


def machine(device: torch.device) -> dict[str, Any]:
    values = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                  "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_model": cpu_description()}
    if device.type == "cuda":
        values["gpu"] = torch.cuda.get_device_name(device)
    return values


# ------------------------------------------------------------------------------------ output
def find(report: Report, mode: str, precision: str, batch: int, implementation: str) -> Result | None:
    return next((r for r in report.results if (r.mode, r.precision, r.batch_size, r.implementation)
                 == (mode, precision, batch, implementation)), None)


def targets(report: Report) -> list[dict[str, Any]]:
    """The issue's targets (SwinV2-T 256/w8, fp32, batch 8) that this run measured, each with its value."""
    checks = []
    for ours in (name for name in IMPLEMENTATIONS if name not in PEERS_NOT_OURS):  # each of ours the run measured
        for mode, wanted in RATIO_TARGETS.items():
            mine, theirs = find(report, mode, "fp32", 8, ours), find(report, mode, "fp32", 8, "hf")
            if mine and theirs:
                checks.append({"target": f"{mode} fp32 batch 8: {ours} / hf >= {wanted}",
                               "value": round_ratio(mine, theirs), "wanted": wanted})
        mine = find(report, "inference", "fp32", 8, ours)
        if mine:
            checks.append({"target": f"inference fp32 batch 8: {ours} achieved / fp32 matmul peak >= 0.70",
                           "value": mine.fraction_of_peak, "wanted": 0.70})
        if mine and mine.fraction_of_torch_mm_peak is not None:
            checks.append({"target": f"inference fp32 batch 8: {ours} achieved / torch.mm's fp32 peak "
                                     "(the issue's kernel, not the fastest here) >= 0.70",
                           "value": mine.fraction_of_torch_mm_peak, "wanted": 0.70})
        low = find(report, "inference", "bf16", 8, ours)
        if mine and low:  # different cases, so different rounds: a ratio of medians
            checks.append({"target": f"inference batch 8: {ours} bf16 / {ours} fp32 >= 1.6",
                           "value": low.median / mine.median, "wanted": 1.6})
    for check in checks:
        check["met"] = check["value"] >= check["wanted"]
    return checks


def ceilings(report: Report) -> list[dict[str, Any]]:
    """For each case with both: matmul-floor's images/s over hf's, the speed-up over hf of an implementation
    that spent no time outside its matrix products (median over rounds), beside the issue's target; and each
    implementation's images/s over the floor's (1 = no time outside the products), beside the fraction of
    the floor's speed the target asks for (the target times hf's fraction)."""
    values = []
    for floor in (r for r in report.results if r.implementation == "matmul-floor"):
        theirs = find(report, floor.mode, floor.precision, floor.batch_size, "hf")
        if theirs:
            case = [r for r in report.results if (r.mode, r.precision, r.batch_size) ==
                    (floor.mode, floor.precision, floor.batch_size) and r is not floor]
            of_floor = {r.implementation: round_ratio(r, floor) for r in case}
            target = RATIO_TARGETS[floor.mode]
            values.append({"mode": floor.mode, "precision": floor.precision, "batch_size": floor.batch_size,
                           "ceiling_over_hf": round_ratio(floor, theirs), "target": target,
                           "of_floor": of_floor, "target_of_floor": target * of_floor["hf"]})
    return values


def round_ratio(a: Result, b: Result) -> float:
    """Median over the rounds of a's images/s over b's, two peers timed in the same rounds."""
    return statistics.median(x / y for x, y in zip(a.images_per_second, b.images_per_second))


def peak_label(report: Report, precision: str) -> str:
    """Which kernels a precision's peak is the best of, with each one's GFLOP/s where there are several
    (reports before item 18 measured torch.mm alone)."""
    kernels = report.settings.get("peak_kernels", {}).get(precision, ["torch.mm"])
    if not isinstance(kernels, dict):  # the names alone (the first reports with item 18)
        kernels = dict.fromkeys(kernels)
    if len(kernels) == 1:
        return next(iter(kernels))
    return "the best of " + ", ".join(name if gflops is None else f"{name} {gflops:.0f}"
                                      for name, gflops in kernels.items())


def format_report(report: Report) -> str:
    config = report.config
    lines = [
        (f"{report.model}: {config['img_size'][0]}x{config['img_size'][1]}, window {config['window_size'][0]}; "
        f"torch {report.machine['torch']}, {report.machine['device']}, {report.machine['threads']} threads"
        + (f", {report.machine['cpu_model']}" if report.machine.get("cpu_model") else "")),
        "matmul peak at the start: " + ", ".join(f"{p} {g:.0f} GFLOP/s ({peak_label(report, p)})"
                                                 for p, g in report.peak_gflops.items()),
        "FLOPs per image at batch 1: " + ", ".join(f"{m} {f / 1e9:.2f} G" for m, f in report.flops_per_image.items())
        + " (larger batches share the position-bias MLPs: a little less per image)",
        (f"{report.settings['warmup']} warm-up + {report.settings['repeats']} timed rounds, interleaved"
        + (" in balanced orders" if report.settings.get("order") == "balanced" else "") + "; "
        f"first/this = median over rounds of {report.settings['implementations'][0]}'s images/s over this one's"),
    ]
    if "allocator" in report.settings:  # reports before 2026-12-04 did not record it
        lines.append(f"allocator: {report.settings['allocator']}")
    per_round = any(r.peak_per_round for r in report.results)
    if per_round:
        lines.append("the peak re-measured in every round with the implementations (peak: the case's median); "
                     "of peak = median over rounds of achieved / that round's peak")
    if any(r.torch_mm_peak_per_round for r in report.results):
        lines.append("torch.mm's peak re-measured too where another kernel is faster; the targets divide by both")
    counted = any(r.page_faults_per_step for r in report.results)
    if counted:
        lines.append("faults/step = median over the timed steps of the process's minor page faults (fresh pages "
                     "of memory)")
    lines.append("")
    header = ("mode", "precision", "batch", "implementation", "img/s", "min-max", "first/this", "GFLOP/s",
              *(("peak",) if per_round else ()), "of peak", *(("faults/step",) if counted else ()))
    rows = [header]
    for r in report.results:
        faults = "-" if r.median_page_faults is None else f"{r.median_page_faults:,.0f}"
        rows.append((r.mode, r.precision, str(r.batch_size), r.implementation, f"{r.median:.2f}",
                     f"{r.minimum:.2f}-{r.maximum:.2f}", "-" if r.ratio_to_reference is None
                     else f"{r.ratio_to_reference:.2f}", f"{r.gflops:.0f}",
                     *((f"{r.peak_gflops:.0f}",) if per_round else ()), f"{100 * r.fraction_of_peak:.0f}%",
                     *((faults,) if counted else ())))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip())
    checks = targets(report)
    if checks:
        lines += ["", "targets:"]
        lines += [f"  {c['target']}: {c['value']:.2f} ({'met' if c['met'] else 'NOT met'})" for c in checks]
    bounds = ceilings(report)
    if bounds:
        lines += ["", "ceilings (matmul-floor / hf: the speed-up over hf with zero time outside the matrix products):"]
        lines += [f"  {b['mode']} {b['precision']} batch {b['batch_size']}: {b['ceiling_over_hf']:.2f}"
                  f" (target {b['target']}); of the floor's speed: "
                  + ", ".join(f"{name} {value:.2f}" for name, value in b["of_floor"].items())
                  + f"; the target needs {b['target_of_floor']:.2f}" for b in bounds]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- the command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model (default {DEFAULT_MODEL})")
    parser.add_argument("--img-size", type=int, metavar="N", help="input resolution (default the model's)")
    parser.add_argument("--window-size", type=int, metavar="N", help="attention window (default the model's)")
    parser.add_argument("--batch-size", "--batch-sizes", dest="batch_sizes", type=int, nargs="+", default=[8],
                        metavar="N", help="inference batch sizes (default 8)")
    parser.add_argument("--train-batch-size", "--train-batch-sizes", dest="train_batch_sizes", type=int,
                        nargs="+", default=[8], metavar="N", help="training-step batch sizes (default 8)")
    parser.add_argument("--implementations", nargs="+", default=["swinv2", "hf"], choices=IMPLEMENTATIONS,
                        metavar="NAME", help=f"peers, the first is the reference of the ratios "
                                             f"(default swinv2 hf; choices {', '.join(IMPLEMENTATIONS)})")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="default both")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS,
                        help="fp32 and/or bf16 autocast (default both where the device computes bf16 in "
                             "hardware, else fp32: emulated bf16 would take hours and measure nothing useful)")
    parser.add_argument("--attention-impl", default="auto", choices=("auto", "sdpa", "plain"),
                        help="attention of the swinv2 and swinv2-compiled peers (default auto)")
    parser.add_argument("--linear-impl", choices=LINEAR_IMPLEMENTATIONS,
                        help="linear layers' kernel of this project's peers (default the config's, auto: "
                             "oneDNN on AMD AVX-512 CPUs, F.linear elsewhere; models/linear.py)")
    parser.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed rounds first (default 2)")
    parser.add_argument("--repeats", type=int, default=5, metavar="N", help="timed rounds (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default torch's)")
    parser.add_argument("--peak-sizes", type=int, nargs="+", default=[1024, 2048], metavar="N",
                        help="square matrix sizes of the matmul peak (default 1024 2048)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc's malloc keeps freed memory for every peer: no page faults for memory used "
                             "before (swinv2.allocator; default glibc's own behaviour, or GLIBC_TUNABLES')")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    parser.add_argument("--show", metavar="PATH", help="measure nothing: print the report that --json wrote to "
                                                       "PATH, with its targets and ceilings")


def load_report(path: str) -> Report:
    try:
        with open(path) as file:
            values = json.load(file)
        return Report.from_dict(values)
    except OSError as error:
        raise InputError(f"--show {path}: cannot read it ({error.strerror})") from error
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"--show {path}: not a report written by `swinv2 benchmark --json` ({error!r})") from error


def default_precisions(device: str) -> list[str]:
    """fp32, and bf16 where the device multiplies bf16 in hardware (AMX / AVX-512 BF16 CPUs, bf16 GPUs)."""
    target = torch.device(device)
    if target.type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = target.type == "cpu" and cpu_has_fast_bf16()
    return ["fp32", "bf16"] if native else ["fp32"]


def run_from_args(args: argparse.Namespace, progress: Callable[[str], None] | None = None) -> Report:
    if args.show:
        report = load_report(args.show)
        print(report.format())
        return report
    overrides = {name: getattr(args, name) for name in ("img_size", "window_size", "linear_impl")
                 if getattr(args, name)}
    precisions = args.precisions or default_precisions(args.device)
    if precisions == ["fp32"] and not args.precisions:
        print("fp32 only: this device has no bf16 instructions (ask for bf16 with --precisions fp32 bf16)",
              file=sys.stderr)
    report = run(model=args.model, overrides=overrides, implementations=args.implementations, modes=args.modes,
                 precisions=precisions, batch_sizes=args.batch_sizes, train_batch_sizes=args.train_batch_sizes,
                 warmup=args.warmup, repeats=args.repeats, attention_impl=args.attention_impl, device=args.device,
                 threads=args.threads, progress=progress, peak_sizes=args.peak_sizes,
                 keep_freed_memory=args.keep_freed_memory)
    print(report.format())
    if args.json:
        with open(args.json, "w") as file:
            file.write(report.to_json() + "\n")
    return report
