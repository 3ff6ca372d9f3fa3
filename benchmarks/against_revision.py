"""This checkout's model against the model of a git revision, in one process: step times and, with
--profile, where the difference lies, operator by operator.

    python benchmarks/against_revision.py --revision HEAD~1                 # training step, batch 8, fp32
    python benchmarks/against_revision.py --revision 1a4853b --mode inference --batch-size 1 8
    python benchmarks/against_revision.py --revision HEAD~1 --profile 3     # + torch.profiler, 3 steps each
    python benchmarks/against_revision.py --revision HEAD~1 --compile --warmup 3   # both under torch.compile

The revision's `src/swinv2` is extracted with `git archive` into a temporary folder and imported under
another name (the package imports itself relatively), so both models run in the same process, the same
allocator and the same moments of a noisy machine: the same weights (the revision's model loads this one's
state dict), the same step as `swinv2 benchmark` (benchmark.make_step), timed in interleaved rounds (A B,
then B A, ...: benchmark.time_interleaved) after a warm-up. The ratio is the median over rounds of the
revision's seconds over this checkout's (above 1: this checkout is faster). With --profile, the self CPU
time of every operator summed over that many profiled steps of each, matrix products apart, and the
operators whose time moved most: on a machine whose speed drifts by tens of percent between rounds, a few
percent of element-wise work shows there long before it shows in the step time."""
from __future__ import annotations

import argparse
import collections
import importlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from profile_step import MATRIX_OPERATORS
from swinv2 import create_model
from swinv2.benchmark import DEFAULT_MODEL, MODES, make_step, time_interleaved

ROOT = Path(__file__).resolve().parent.parent


def import_revision(revision: str, folder: Path):
    """The `swinv2` package as it was at `revision`, imported as `swinv2_at_revision`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src/swinv2"],
                             capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"git archive {revision} src/swinv2 failed: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "src" / "swinv2").rename(folder / "swinv2_at_revision")
    sys.path.insert(0, str(folder))
    return importlib.import_module("swinv2_at_revision")


def operator_times(step) -> collections.Counter:
    """Self CPU seconds of each operator in one profiled call of `step`."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    return collections.Counter({event.key: event.self_cpu_time_total / 1e6 for event in profiler.key_averages()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", required=True, help="a git revision of this repository, e.g. HEAD~1")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--mode", default="train", choices=MODES)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile STEPS steps of each (interleaved) and compare operators")
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--compile", action="store_true",
                        help="both models under torch.compile (they compile in the first warm-up round)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        package = import_revision(args.revision, Path(folder))
        ours = create_model(args.model)
        theirs = package.create_model(args.model)
        theirs.load_state_dict(ours.state_dict())
        name = f"at {args.revision}"
        config = ours.config
        if args.compile:
            ours, theirs = torch.compile(ours), torch.compile(theirs)
        for batch in args.batch_size:
            images = torch.randn(batch, config.in_chans, *config.img_size)
            labels = torch.randint(0, config.num_classes, (batch,))
            steps = {name: make_step(theirs, args.mode, args.precision, images, labels),
                     "this checkout": make_step(ours, args.mode, args.precision, images, labels)}
            seconds = time_interleaved(steps, args.warmup, args.repeats, torch.device("cpu"))
            ratios = [a / b for a, b in zip(seconds[name], seconds["this checkout"])]
            print(f"{args.model}{' compiled' if args.compile else ''} {args.mode} {args.precision} batch {batch}, "
                  f"{args.repeats} rounds: "
                  + ", ".join(f"{key} {statistics.median(values):.3f} s" for key, values in seconds.items())
                  + f"; {name} / this checkout {statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})")
            if not args.profile:
                continue
            times: dict[str, collections.Counter] = {key: collections.Counter() for key in steps}
            for _ in range(args.profile):  # interleaved, one profiled step at a time
                for key, step in steps.items():
                    times[key] += operator_times(step)
            for key, counter in times.items():
                total = sum(counter.values()) / args.profile
                products = sum(counter[op] for op in MATRIX_OPERATORS) / args.profile
                print(f"  {key}: {total:.3f} s profiled per step, matrix products {products:.3f} s, "
                      f"everything else {total - products:.3f} s")
            before, after = times.values()
            moved = sorted((op for op in set(before) | set(after) if op not in MATRIX_OPERATORS),
                           key=lambda op: -abs(after[op] - before[op]))
            for op in moved[:args.rows]:
                print(f"    {op:45s} {before[op] / args.profile * 1e3:8.1f} ms -> {after[op] / args.profile * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
