"""Where a training step of a recipe's model goes: augmentation, forward, backward, optimizer, in ms per step.

    python benchmarks/train_step.py                                  # the fashion-mnist recipe (make demo)
    python benchmarks/train_step.py model.overrides.mlp_ratio=4.0    # any recipe override
    python benchmarks/train_step.py --recipe imagenet-1k-scratch --batch-size 8 --no-compile

One process, the recipe's model compiled as the loop compiles it, in the recipe's precision as the loop
resolves it (bf16 autocast on CPUs with bf16 instructions, else fp32; `--precision` to choose), random
uint8 images of the recipe's size: the numbers are for comparing shapes on one machine, run back to back.
glibc's malloc keeps freed memory as the loop has it (`run.keep_freed_memory`, on for the CPU by default:
swinv2.allocator); `run.keep_freed_memory=false` measures glibc's own behaviour, and the minor page faults
per step (getrusage) show the difference."""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from swinv2.allocator import keep_freed_memory, resolve_keep_freed_memory
from swinv2.benchmark import minor_page_faults
from swinv2.data import DATASET_STATS, TrainAugmentation, soft_target_cross_entropy
from swinv2.train.config import load_config
from swinv2.train.loop import build_model
from swinv2.train.optim import build_optimizer
from swinv2.train.precision import autocast, resolve_precision

PARTS = ("augmentation", "forward", "backward", "optimizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE")
    parser.add_argument("--recipe", default="fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--precision", default=None, help="auto, fp32 or bf16 (default: the recipe's)")
    args = parser.parse_args()
    config = load_config(args.recipe, ["optim.layer_decay=null", *args.overrides])
    if resolve_keep_freed_memory(config.run.keep_freed_memory, "cpu"):
        print(keep_freed_memory())
    torch.manual_seed(0)
    channels, classes = config.data.channels, 10
    model = build_model(config, classes, channels)
    mean, std = DATASET_STATS.get(config.data.dataset, DATASET_STATS["imagenet"])
    augmentation = TrainAugmentation(img_size=model.config.img_size, mean=mean[:channels], std=std[:channels],
                                     num_classes=classes, **dataclasses.asdict(config.augment))
    optimizer = build_optimizer(model, config.optim, 1e-3)
    forward = model if args.no_compile else torch.compile(model)
    batch = args.batch_size or config.run.batch_size
    precision = resolve_precision(args.precision or config.run.precision, "cpu")
    height, width = model.config.img_size
    images = torch.randint(0, 256, (batch, channels, height, width), dtype=torch.uint8)
    labels = torch.randint(0, classes, (batch,))

    def step(totals: dict[str, float]) -> None:
        marks = [time.perf_counter()]
        inputs, targets = augmentation(images, labels)
        marks.append(time.perf_counter())
        with autocast("cpu", precision):
            loss = soft_target_cross_entropy(forward(inputs).float(), targets)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        for part, start, stop in zip(PARTS, marks, marks[1:]):
            totals[part] += stop - start

    started = time.perf_counter()
    for _ in range(5):  # compilation and warm-up
        step(dict.fromkeys(PARTS, 0.0))
    print(f"warm-up (incl. compilation): {time.perf_counter() - started:.1f} s")
    totals = dict.fromkeys(PARTS, 0.0)
    faults, started = minor_page_faults(), time.perf_counter()
    for _ in range(args.steps):
        step(totals)
    seconds = time.perf_counter() - started
    faults = (minor_page_faults() - faults) / args.steps
    parts = ", ".join(f"{part} {totals[part] / args.steps * 1000:.1f}" for part in PARTS)
    print(f"batch {batch}, {precision}: {parts} ms/step; {args.steps * batch / seconds:.4g} images/s; "
          f"{faults:,.0f} minor page faults per step")


if __name__ == "__main__":
    main()
