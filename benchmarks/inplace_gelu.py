"""GELU in place in inference (docs/performance.md, item 12): images/s with and without it.

    python benchmarks/inplace_gelu.py                      # SwinV2-T 256/w8, batch 8, fp32
    python benchmarks/inplace_gelu.py --batch-size 1 32

Two models with the same weights under `torch.no_grad()`, timed in interleaved rounds (A B, B A, ...): the
model as it is, whose MLPs overwrite fc1's output with its GELU, and the same model with each MLP's
forward replaced by the out-of-place composition fc2(GELU(fc1(x))), which gives GELU a tensor of its own.
Checks first that both give the same logits, bit for bit."""
from __future__ import annotations

import argparse
import statistics
import types

import torch

from swinv2 import create_model
from swinv2.benchmark import time_interleaved
from swinv2.models.mlp import Mlp


def out_of_place(mlp: Mlp, x: torch.Tensor) -> torch.Tensor:
    return mlp.drop(mlp.fc2(mlp.drop(mlp.act(mlp.fc1(x)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swinv2_tiny_window8_256")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.manual_seed(0)
    in_place = create_model(args.model).eval()
    separate = create_model(args.model).eval()
    separate.load_state_dict(in_place.state_dict())
    for module in separate.modules():
        if isinstance(module, Mlp):
            module.forward = types.MethodType(out_of_place, module)
    config = in_place.config
    for batch in args.batch_size:
        images = torch.randn(batch, config.in_chans, *config.img_size)
        with torch.no_grad():
            assert torch.equal(in_place(images), separate(images)), "the two models disagree"
            seconds = time_interleaved({"in place": lambda: in_place(images), "separate": lambda: separate(images)},
                                       args.warmup, args.repeats, images.device)
        ratio = statistics.median(s / i for s, i in zip(seconds["separate"], seconds["in place"]))
        print(f"batch {batch}: in place {batch / statistics.median(seconds['in place']):.2f} img/s, "
              f"separate {batch / statistics.median(seconds['separate']):.2f} img/s, "
              f"in place / separate {ratio:.3f} (median over {args.repeats} rounds)")


if __name__ == "__main__":
    main()
