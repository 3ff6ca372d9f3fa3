"""What a training checkpoint costs: one atomic save of SwinV2-T with its AdamW state, against a training step.

    python benchmarks/checkpoint_save.py                     # SwinV2-T 256/w8, batch 8, 5 saves
    python benchmarks/checkpoint_save.py --model swinv2_small_window8_256 --saves 3

The save is the loop's own (`CheckpointManager.save`: state dicts gathered, `torch.save` to a temporary
file, fsync, rename, latest.json, pruning), of the model, the AdamW moments (after one real step, so
they exist), the schedule and the random generators. The training step (forward, loss, backward, AdamW;
in the precision the loop picks here: bf16 autocast on CPUs with bf16 instructions, else fp32) is timed in
the same process, so the ratio says what fraction of a step one save is; a run that saves every N steps pays ratio / N."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from swinv2 import create_model
from swinv2.train.checkpointing import CheckpointManager, RandomState, TrainingProgress
from swinv2.train.distributed import Distributed
from swinv2.train.precision import autocast, resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swinv2_tiny_window8_256")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    precision = resolve_precision("auto", "cpu")
    torch.manual_seed(0)
    model = create_model(args.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = model.config.img_size
    images, labels = torch.randn(args.batch_size, 3, *size), torch.randint(0, 1000, (args.batch_size,))

    def step() -> float:
        started = time.perf_counter()
        with autocast("cpu", precision):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    step()  # warm-up, and the AdamW moments now exist
    step_seconds = statistics.median(step() for _ in range(args.steps))
    progress = TrainingProgress(step=1)
    with tempfile.TemporaryDirectory() as directory:
        manager = CheckpointManager(directory, keep_last=2)
        stateful = {"model": model, "optimizer": optimizer, "progress": progress, "rng": RandomState(Distributed())}
        save_seconds, gather_seconds = [], []
        for index in range(args.saves):
            started = time.perf_counter()
            {name: item.state_dict() for name, item in stateful.items()}
            gather_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
            path = manager.save(index + 1, stateful, {"benchmark": True})
            save_seconds.append(time.perf_counter() - started)
        megabytes = path.stat().st_size / 2**20
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    save = statistics.median(save_seconds)
    print(f"{args.model}: {parameters:.1f}M parameters, checkpoint {megabytes:.0f} MiB (model + AdamW + state), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"one save: median {save:.2f} s (min {min(save_seconds):.2f}, max {max(save_seconds):.2f}) over {args.saves}; "
          f"collecting the state dicts {statistics.median(gather_seconds) * 1000:.0f} ms")
    print(f"one training step at batch {args.batch_size} ({precision}): {step_seconds:.2f} s; "
          f"a save costs {save / step_seconds:.2f} steps")


if __name__ == "__main__":
    main()
