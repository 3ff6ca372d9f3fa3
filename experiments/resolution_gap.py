"""Resolution gap (paper Table 1): how each position bias transfers to larger images and windows.

    python -m experiments.resolution_gap           # ~48 min on 2 cores: writes docs/resolution-gap.md,
                                                   # docs/resolution-gap.json, docs/images/resolution-gap.png
    python -m experiments.resolution_gap --quick   # a few minutes on small budgets, under runs/resolution-gap-quick/

The paper trains SwinV2-T at 256 px with 8x8 windows and tests at up to 3x the resolution with windows grown
in proportion, without fine-tuning: Swin v1's bias table (bicubic-resized) loses 13 points at 768 px, the
linear-spaced CPB 4.1, the log-spaced CPB 2.7. Here, at small scale: Fashion-MNIST upsampled to 32 px, 4 px
patches, 4x4 windows (8x8 then 4x4 tokens over two stages), trained from scratch once per position bias and
seed; then the same weights at 64 px with 8x8 windows and at 96 px with 12x12 windows (2x and 3x, as the
paper's 512/w16 and 768/w24), first as they are and then after a short fine-tune at that size.

The transfer is the library's own: `set_input_size` for direct testing (the CPB keeps normalising offsets by
the trained window, as the official configs do, so larger windows extrapolate; the table is resized
bicubically), and `model.init_from` with the larger window for fine-tuning (the loader resizes the table).
No absolute position embedding, so the relative position bias is the only position signal."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from experiments.common import ROOT, machine, quiet, spread, summarise
from swinv2.data import DATASET_STATS, EvalPreprocess, build_dataset, make_loader
from swinv2.train.artifacts import load_classifier
from swinv2.train.config import load_config
from swinv2.train.evaluate import evaluate
from swinv2.train.loop import first, train
from swinv2.train.precision import resolve_precision

BIASES = {  # position_bias -> the paper's row name
    "table": "parameterised table (Swin v1, bicubic)",
    "cpb_linear": "linear-spaced CPB",
    "cpb_log": "log-spaced CPB (SwinV2)",
}
# Paper Table 1 (SPEC.md): SwinV2-T trained at 256/w8, top-1 at 1x, 2x (512/w16) and 3x (768/w24), no fine-tuning.
PAPER = {"table": (81.7, 77.2, 68.7), "cpb_linear": (81.7, 81.2, 77.6), "cpb_log": (81.8, 81.7, 79.1)}
TRAIN_SIZE, TRAIN_WINDOW = 32, 4
SCALES = (1, 2, 3)
TRAIN_IMAGES = 60000
MODEL = dict(patch_size=4, window_size=TRAIN_WINDOW, embed_dim=64, depths=[2, 2], num_heads=[2, 4], mlp_ratio=2.0,
             ape=False, drop_path_rate=0.05)


@dataclass
class Budget:
    """How much compute each part gets; `full` is the measured configuration, `quick` a smoke test."""

    epochs: float  # training from scratch at 32 px, over the 60,000 training images (or train_images)
    train_images: int | None
    fine_tune_steps: int  # at each larger size
    fine_tune_batch: int
    fine_tune_lr: float  # per 512 images; the recipe's from-scratch rate is 8e-3
    seeds: tuple[int, ...]
    test_images: int | None  # None: all 10,000, at every size


# Sized to the hour the experiments get on 2 cores: at 96 px the model evaluates ~165 and trains ~70 images/s,
# so the first 5,000 test images (top-1 within about ±0.5 points) and 50 fine-tune steps.
FULL = Budget(epochs=2, train_images=None, fine_tune_steps=50, fine_tune_batch=64, fine_tune_lr=2e-3,
              seeds=(0, 1, 2), test_images=5000)
QUICK = Budget(epochs=1, train_images=3000, fine_tune_steps=4, fine_tune_batch=32, fine_tune_lr=2e-3,
               seeds=(0, 1), test_images=500)


def size(scale: int) -> tuple[int, int]:
    """(image side, window side) at `scale` times the training size."""
    return TRAIN_SIZE * scale, TRAIN_WINDOW * scale


def common_overrides(budget: Budget, work: Path, name: str, seed: int, bias: str, scale: int) -> list[str]:
    image, window = size(scale)
    overrides = [f"model.overrides.{key}={value}" for key, value in MODEL.items()]
    overrides += [f"model.overrides.position_bias={bias}", f"model.overrides.window_size={window}",
                  f"data.img_size={image}", "data.crop_pct=1.0", f"run.seed={seed}", "run.compile=false",
                  # the official crops (area 8-100%): objects are seen zoomed up to ~3.5x, as the larger test sizes
                  # show them, so what the test measures is the transfer of the position bias, not of the scale
                  "augment.scale=[0.08,1.0]", "augment.ratio=[0.75,1.3333]",
                  "run.eval_every=100000", "run.keep_last=1", "run.log_every=10", f"run.output_dir={work}",
                  f"run.name={name}"]
    if budget.test_images:
        overrides.append(f"data.max_val_images={budget.test_images}")
    return overrides


def train_small(budget: Budget, work: Path, bias: str, seed: int) -> dict:
    """From scratch at 32 px with 4x4 windows: the `fashion-mnist` recipe otherwise."""
    name = f"{bias}-seed{seed}"
    overrides = common_overrides(budget, work, name, seed, bias, 1) + [
        f"schedule.epochs={budget.epochs}", f"schedule.warmup_epochs={0.1 * budget.epochs:.6g}"]
    if budget.train_images:
        overrides.append(f"data.max_train_images={budget.train_images}")
    with quiet(work / f"{name}.log"):
        result = train(load_config("fashion-mnist", overrides), progress=False)
    return {"model_dir": str(result.model_dir), "wall_seconds": result.wall_seconds, "steps": result.step}


def fine_tune(budget: Budget, work: Path, bias: str, seed: int, scale: int, model_dir: str) -> dict:
    """A short fine-tune at the larger size from the trained weights: warm-up over a tenth, then cosine."""
    name = f"{bias}-seed{seed}-x{scale}-fine-tuned"
    steps = budget.fine_tune_steps
    steps_per_epoch = TRAIN_IMAGES // budget.fine_tune_batch  # over all the training images
    overrides = common_overrides(budget, work, name, seed, bias, scale) + [
        f"model.init_from={model_dir}", f"model.overrides.pretrained_window_sizes=[{TRAIN_WINDOW},{TRAIN_WINDOW}]",
        f"run.batch_size={budget.fine_tune_batch}", f"optim.base_lr={budget.fine_tune_lr}",
        f"schedule.max_steps={steps}", f"schedule.epochs={steps / steps_per_epoch:.6g}",
        f"schedule.warmup_epochs={0.1 * steps / steps_per_epoch:.6g}"]
    with quiet(work / f"{name}.log"):
        result = train(load_config("fashion-mnist", overrides), progress=False)
    return {"top1": result.test.top1, "wall_seconds": result.wall_seconds}


def test_at(model_dir: str, scale: int, test_set, precision: str) -> float:
    """Top-1 of the trained weights moved to `scale` times the size, with no further training."""
    model, classes, _ = load_classifier(model_dir)
    image, window = size(scale)
    if scale > 1:
        model.set_input_size(img_size=image, window_size=window)
    mean, std = DATASET_STATS["fashion-mnist"]
    preprocess = EvalPreprocess(img_size=image, mean=mean, std=std, crop_pct=1.0)
    loader = make_loader(test_set, 250, shuffle=False)
    return evaluate(model, loader, preprocess, "cpu", precision, len(classes), progress=False).top1


def run(budget: Budget, work: Path) -> dict:
    started = time.perf_counter()
    test_set = first(build_dataset("fashion-mnist", None, split="test", channels=1), budget.test_images)
    precision = resolve_precision("auto", "cpu")  # as the training runs evaluate
    runs = []
    for bias in BIASES:
        for seed in budget.seeds:
            trained = train_small(budget, work, bias, seed)
            direct = {str(scale): test_at(trained["model_dir"], scale, test_set, precision) for scale in SCALES}
            tuned = {str(scale): fine_tune(budget, work, bias, seed, scale, trained["model_dir"]) for scale in SCALES[1:]}
            runs.append({"bias": bias, "seed": seed, "train_wall_seconds": trained["wall_seconds"],
                         "train_steps": trained["steps"], "direct": direct,
                         "fine_tuned": {scale: value["top1"] for scale, value in tuned.items()},
                         "fine_tune_wall_seconds": {scale: value["wall_seconds"] for scale, value in tuned.items()}})
            print(f"  {bias:>10}, seed {seed}: " + ", ".join(f"{size(s)[0]} px {direct[str(s)]:.2f}%" for s in SCALES)
                  + "; fine-tuned " + ", ".join(f"{size(s)[0]} px {tuned[str(s)]['top1']:.2f}%" for s in SCALES[1:])
                  + f" ({trained['wall_seconds']:.0f} s training)", flush=True)
    return {"budget": asdict(budget), "test_images": len(test_set), "model": MODEL, "precision": precision,
            "machine": machine(), "runs": runs, "wall_seconds": time.perf_counter() - started}


def values(results: dict, bias: str, kind: str, scale: int) -> list[float]:
    """Each seed's top-1, in seed order (scales are string keys, as JSON keeps them)."""
    return [run[kind][str(scale)] for run in results["runs"] if run["bias"] == bias]


def table(results: dict) -> str:
    sizes = [f"{size(s)[0]} px / w{size(s)[1]}" for s in SCALES]
    lines = ["| position bias | " + " | ".join(f"{label}{' (trained)' if s == 1 else ''}"
                                               for s, label in zip(SCALES, sizes))
             + " | " + " | ".join(f"{sizes[s - 1]}, fine-tuned" for s in SCALES[1:])
             + " | paper: 256/w8 | 512/w16 | 768/w24 |",
             "|---" * (1 + len(SCALES) + len(SCALES) - 1 + 3) + "|"]
    for bias, label in BIASES.items():
        direct = [summarise(values(results, bias, "direct", s)) for s in SCALES]
        tuned = [summarise(values(results, bias, "fine_tuned", s)) for s in SCALES[1:]]
        paper = [f"{value:.1f}" for value in PAPER[bias]]
        lines.append(f"| {label} | " + " | ".join(direct + tuned + paper) + " |")
    return "\n".join(lines)


def drops(results: dict) -> str:
    """Points lost from the trained size, ours (mean over seeds) beside the paper's."""
    lines = ["| position bias | 2x, ours | 3x, ours | 2x, paper | 3x, paper |", "|---|---|---|---|---|"]
    for bias, label in BIASES.items():
        base = statistics.mean(values(results, bias, "direct", 1))
        ours = [statistics.mean(values(results, bias, "direct", s)) - base for s in SCALES[1:]]
        paper = [PAPER[bias][s - 1] - PAPER[bias][0] for s in SCALES[1:]]
        lines.append(f"| {label} | " + " | ".join(f"{value:+.2f}" for value in ours)
                     + " | " + " | ".join(f"{value:+.1f}" for value in paper) + " |")
    return "\n".join(lines)


def plot(results: dict, png: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    ours, paper = figure.subplots(1, 2)
    colours = {"table": "#d62728", "cpb_linear": "#ff7f0e", "cpb_log": "#1f77b4"}
    for bias, label in BIASES.items():
        for kind, style in (("direct", "-"), ("fine_tuned", ":")):
            scales = SCALES if kind == "direct" else SCALES[1:]
            means = [statistics.mean(values(results, bias, kind, s)) for s in scales]
            errors = [spread(values(results, bias, kind, s)) for s in scales]
            ours.errorbar(scales, means, yerr=errors, capsize=3, linestyle=style, marker="o", color=colours[bias],
                          label=f"{label}{', fine-tuned' if kind == 'fine_tuned' else ''}")
        paper.plot(SCALES, PAPER[bias], marker="o", color=colours[bias], label=label)
    for axes, title in ((ours, f"ours: Fashion-MNIST, trained at {TRAIN_SIZE} px / w{TRAIN_WINDOW}"),
                        (paper, "paper Table 1: ImageNet-1K, SwinV2-T trained at 256 / w8")):
        axes.set_xticks(SCALES, [f"{s}x" for s in SCALES])
        axes.set_xlabel("test size / training size (window grown in proportion)")
        axes.set_ylabel("top-1 (%)")
        axes.set_title(title, fontsize=9)
        axes.grid(alpha=0.3)
    ours.legend(fontsize=7)
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=120)


def markdown(results: dict, command: str) -> str:
    budget = results["budget"]
    seeds = ", ".join(map(str, budget["seeds"]))
    train_seconds = statistics.mean(run["train_wall_seconds"] for run in results["runs"])
    tune_seconds = {s: statistics.mean(run["fine_tune_wall_seconds"][str(s)] for run in results["runs"]) for s in SCALES[1:]}
    image = "images/resolution-gap.png" if not results.get("quick") else "resolution-gap.png"
    return f"""# Resolution gap: position biases across window sizes (paper Table 1)

Measured by `{command}` ({results['machine']}; {results['wall_seconds'] / 60:.1f} min in all).

{table(results)}

Top-1 (%) on {results['test_images']} Fashion-MNIST test images, mean ± sample standard deviation over seeds
{seeds}; the paper's numbers are ImageNet-1K top-1 of SwinV2-T (SPEC.md, Table 1), tested without fine-tuning.

Points lost from the training size without fine-tuning:

{drops(results)}

![resolution gap]({image})

## Method

A two-stage SwinV2 (C {MODEL['embed_dim']}, depths {MODEL['depths']}, heads {MODEL['num_heads']}, MLP ratio
{MODEL['mlp_ratio']}, {MODEL['patch_size']} px patches, no absolute position embedding) is trained from scratch
on the 60,000 Fashion-MNIST training images upsampled to {TRAIN_SIZE} px, with {TRAIN_WINDOW}x{TRAIN_WINDOW}
windows ({budget['epochs']:g} epochs of the `fashion-mnist` recipe, {results['precision']}; {train_seconds:.0f} s per
run), once per position bias and seed. The same weights are then tested at 2x ({size(2)[0]} px, {size(2)[1]}x{size(2)[1]}
windows) and 3x ({size(3)[0]} px, {size(3)[1]}x{size(3)[1]} windows) through `set_input_size`: the CPB MLPs keep
normalising offsets by the {TRAIN_WINDOW}x{TRAIN_WINDOW} window they were trained on (the official fine-tune
configs' `PRETRAINED_WINDOW_SIZES`), so they meet offsets {size(2)[1] - 1} and {size(3)[1] - 1} for the first
time; the table is resized bicubically. The fine-tuned columns continue from the same weights at the larger
size (`model.init_from`, `pretrained_window_sizes` [{TRAIN_WINDOW}, {TRAIN_WINDOW}]) for {budget['fine_tune_steps']}
steps of {budget['fine_tune_batch']} images, lr {budget['fine_tune_lr']:g} per 512 images with a tenth as warm-up
then cosine ({tune_seconds[2]:.0f} s at 2x, {tune_seconds[3]:.0f} s at 3x per run). Larger test images are the
same 28 px originals resized further, so any loss comes from the model's transfer, not from new detail.

All numbers: `docs/resolution-gap.json`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes on small budgets; docs/ is left alone")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the page and plot from the measured resolution-gap.json")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    work = ROOT / "runs" / ("resolution-gap-quick" if args.quick else "resolution-gap")
    docs = work if args.quick else ROOT / "docs"
    command = "python -m experiments.resolution_gap" + (" --quick" if args.quick else "")
    if args.render:
        results = json.loads((docs / "resolution-gap.json").read_text(encoding="utf-8"))
    else:
        print(f"training at {TRAIN_SIZE} px / w{TRAIN_WINDOW}, testing at "
              + ", ".join(f"{size(s)[0]} px / w{size(s)[1]}" for s in SCALES[1:]) + ", for "
              + ", ".join(BIASES) + f" and seeds {', '.join(map(str, budget.seeds))}:", flush=True)
        results = run(budget, work)
        results["quick"] = args.quick
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "resolution-gap.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (docs / "resolution-gap.md").write_text(markdown(results, command), encoding="utf-8")
    png = docs / ("resolution-gap.png" if args.quick else "images/resolution-gap.png")
    plot(results, png)
    print(f"\n{table(results)}\n\n{drops(results)}\n\nwrote {docs / 'resolution-gap.md'}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
