"""Inference in chunks of whole images (`inference_chunk_tokens`): images/s and page faults per forward.

    python benchmarks/inference_chunks.py                                  # SwinV2-T 256/w8, batch 8
    python benchmarks/inference_chunks.py --batch-size 32 --chunk-tokens 0 4096 16384
    python benchmarks/inference_chunks.py --precision bf16 --chunk-tokens 1024 2048 4096   # bf16 autocast
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483648 \\
        python benchmarks/inference_chunks.py                              # an allocator that keeps freed memory

One model per chunk size, the same weights, fp32 (or bf16 autocast), `torch.no_grad()`, timed in interleaved
rounds (every size once per round, in balanced orders: benchmark.time_interleaved). Page faults are the
process's minor faults (getrusage) over one forward: glibc's malloc serves allocations above its mmap
threshold (at most 32 MiB by default) with fresh pages from the kernel, zeroed on first touch, and returns
them when freed; the stage-0 MLP of SwinV2-T at batch 8 allocates 48 MiB at a time. Chunks of whole images
keep every intermediate below the threshold, so its memory is reused instead. The GLIBC_TUNABLES line above
gives the same effect to any code (e.g. the Hugging Face peer in benchmarks/peers.py) without chunks:
compare with it to see how much of a chunking gain is the allocator. Also checks that every chunk size gives
the same logits."""
from __future__ import annotations

import argparse
import statistics

import torch

from swinv2 import create_model
from swinv2.benchmark import minor_page_faults, time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swinv2_tiny_window8_256")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-tokens", type=int, nargs="+", default=[0, 4096],
                        help="inference_chunk_tokens values to compare (0 = the whole batch at once)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: autocast, where the attention's logits are materialised (the plain kernel)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    models = {tokens: create_model(args.model, inference_chunk_tokens=tokens).eval() for tokens in args.chunk_tokens}
    first = models[args.chunk_tokens[0]]
    for model in models.values():
        model.load_state_dict(first.state_dict())
    images = torch.randn(args.batch_size, 3, *first.config.img_size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    tolerance = 1e-4 if args.precision == "fp32" else 1e-2  # bf16: the chunks' products may round differently
    with torch.no_grad(), autocast:
        reference = first(images)
        faults = {}
        for tokens, model in models.items():
            difference = (model(images) - reference).abs().max().item()
            if difference > tolerance * reference.abs().max().item():
                raise SystemExit(f"inference_chunk_tokens={tokens} changes the logits by {difference:.3g}")
            before = minor_page_faults()
            model(images)
            faults[tokens] = minor_page_faults() - before
        steps = {tokens: (lambda model=model: model(images)) for tokens, model in models.items()}
        seconds = time_interleaved(steps, args.warmup, args.repeats, torch.device("cpu"))
    print(f"{args.model}, batch {args.batch_size}, {args.precision}, {torch.get_num_threads()} threads; "
          f"{args.warmup} warm-up + {args.repeats} interleaved rounds")
    print(f"{'inference_chunk_tokens':>22}  {'img/s':>6}  {'min-max':>11}  {'vs first':>8}  {'page faults':>11}")
    base = statistics.median(args.batch_size / s for s in seconds[args.chunk_tokens[0]])
    for tokens in args.chunk_tokens:
        rates = [args.batch_size / s for s in seconds[tokens]]
        median = statistics.median(rates)
        print(f"{tokens:>22}  {median:6.2f}  {min(rates):5.2f}-{max(rates):5.2f}  {median / base:8.2f}  {faults[tokens]:>11}")


if __name__ == "__main__":
    main()
