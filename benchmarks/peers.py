"""This project against Hugging Face transformers' Swinv2, the issue-7 benchmark (docs/performance.md).

    python benchmarks/peers.py                                  # the full table: SwinV2-T 256/w8, CPU
    python benchmarks/peers.py --repeats 3 --warmup 1           # shorter
    python benchmarks/peers.py --device cuda --implementations swinv2 swinv2-compiled hf

The same as `swinv2 benchmark` with the issue's cases as defaults: inference at batch 1, 8 and 32, a
training step at batch 8, fp32 and bf16 autocast, `swinv2` against `hf`; any `swinv2 benchmark` option
overrides them (`swinv2 benchmark --help`). The report goes to stdout and, with --json, to a file.
"""
from __future__ import annotations

import argparse
import sys

from swinv2.benchmark import add_arguments, run_from_args

DEFAULTS = {"batch_sizes": [1, 8, 32], "train_batch_sizes": [8]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(**DEFAULTS)
    run_from_args(parser.parse_args(argv), progress=lambda case: print(f"measuring {case} ...", file=sys.stderr))


if __name__ == "__main__":
    main()
