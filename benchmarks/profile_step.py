"""Where one benchmark step spends its time: torch.profiler's operators, by self CPU time.

    python benchmarks/profile_step.py                          # swinv2, a training step at batch 8, fp32
    python benchmarks/profile_step.py --implementation hf --mode inference

The same step as `swinv2 benchmark` times (benchmark.make_step), for one implementation, after two
untimed calls; prints the operators that took the most time, and how the matrix products (mm, addmm,
bmm, oneDNN's linear, a frozen graph's packed ones, the SDPA kernel, convolutions) compare with
everything else. The profiler adds some time of its own.
Before it, the minor page faults of `--fault-steps` unprofiled steps (getrusage): each is a fresh page of
memory the kernel zeroes, what allocations above glibc's mmap threshold cost (docs/performance.md, item 10).
They depend on the allocator's state (one implementation per run here) and moved by up to half between
runs of the same code on the project's Zen 3 machine: compare several runs."""
from __future__ import annotations

import argparse
import resource
import time

import torch
from torch.profiler import ProfilerActivity, profile

from swinv2.benchmark import DEFAULT_MODEL, IMPLEMENTATIONS, MODES, build_peers, make_step

MATRIX_OPERATORS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
                    "aten::convolution_backward", "aten::_scaled_dot_product_flash_attention_for_cpu",
                    "mkldnn::_linear_pointwise",  # linear_impl "onednn" (models/linear.py)
                    # a frozen graph's pre-packed products (swinv2-frozen)
                    "mkl::_mkl_linear", "mkldnn::_convolution_pointwise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--implementation", default="swinv2", choices=[n for n in IMPLEMENTATIONS if n != "matmul-floor"])
    parser.add_argument("--mode", default="train", choices=MODES)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--fault-steps", type=int, default=3)
    args = parser.parse_args()
    reference, peers = build_peers(args.model, {}, [args.implementation], "auto", torch.device("cpu"))
    config = reference.config
    images = torch.randn(args.batch_size, config.in_chans, *config.img_size)
    labels = torch.randint(0, config.num_classes, (args.batch_size,))
    step = make_step(peers[args.implementation], args.mode, args.precision, images, labels)
    step()
    step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.fault_steps):
        step()
    after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
    steps = max(args.fault_steps, 1)
    print(f"{args.fault_steps} unprofiled steps: {elapsed / steps:.3f} s per step, "
          f"{(after.ru_minflt - before.ru_minflt) / steps:,.0f} minor page faults per step, "
          f"system CPU {(after.ru_stime - before.ru_stime) / steps:.3f} s per step")
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    events = profiler.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(event.self_cpu_time_total for event in events)
    products = sum(event.self_cpu_time_total for event in events if event.key in MATRIX_OPERATORS)
    print(f"{args.implementation} {args.mode} {args.precision} batch {args.batch_size}: {total / 1e6:.2f} s profiled, "
          f"matrix products {products / 1e6:.2f} s ({100 * products / total:.0f}%), "
          f"everything else {(total - products) / 1e6:.2f} s")
    for name in ("aten::gelu", "aten::gelu_backward", "aten::native_layer_norm", "aten::native_layer_norm_backward",
                 "aten::_softmax", "aten::_softmax_backward_data", "aten::copy_"):
        seconds = sum(event.self_cpu_time_total for event in events if event.key == name) / 1e6
        if seconds:
            print(f"  {name}: {seconds:.3f} s")


if __name__ == "__main__":
    main()
