"""Label efficiency of SimMIM pre-training on Fashion-MNIST, measured on 2 CPU cores in under an hour.

    python -m experiments.label_efficiency            # the full run (~35-40 min): writes docs/label-efficiency.md,
                                                      # docs/label-efficiency.json, docs/images/label-efficiency.png
    python -m experiments.label_efficiency --quick    # a few minutes: the same pipeline on small budgets,
                                                      # written under runs/label-efficiency-quick/ (docs/ untouched)

1. SimMIM pre-training (`swinv2.train.pretrain.pretrain`, recipe `simmim-fashion-mnist`) on the 60,000
   training images, their labels unused; one pre-trained encoder serves every seed (it never saw a label).
2. For each label budget (1% = 60 images per class, 10% = 600 per class) and each seed: a class-balanced
   subset drawn with that seed (`data.images_per_class`, `data.subset_seed`), then two runs of the
   `fashion-mnist` recipe's model with the same optimizer settings and the same number of optimizer steps:
   fine-tuned from the SimMIM checkpoint (`model.init_from`, layer-wise lr decay 0.75 by `optim.layer_decay:
   auto`) and trained from scratch (random initialisation).
3. Top-1 on the 10,000 test images; the table gives mean ± standard deviation over the seeds and each seed's value.

Everything goes through the library's Python API (`load_config`, `pretrain`, `train`); each run's own
output (configuration, logs, curves, checkpoints) is kept under the work directory."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.common import ROOT, machine, quiet, spread, summarise
from swinv2.train.config import PretrainConfig, load_config
from swinv2.train.loop import build_model, train
from swinv2.train.metrics import read_metrics
from swinv2.train.pretrain import SIMMIM_FILE, pretrain

TRAIN_IMAGES_PER_CLASS = 6000  # Fashion-MNIST: 60,000 training images, 10 balanced classes


@dataclass
class Budget:
    """How much compute each part gets; `full` is the measured configuration, `quick` a smoke test."""

    pretrain_epochs: float  # over the 60,000 images (pretrain_images in the quick run)
    pretrain_images: int | None
    pretrain_compile: bool
    fractions: dict[str, int]  # label budget -> images per class
    fine_tune_steps: dict[str, int]  # label budget -> optimizer steps, the same for both initialisations
    fine_tune_batch: int
    seeds: tuple[int, ...]
    test_images: int | None  # None: all 10,000
    pretrain_overrides: list[str] = field(default_factory=list)


# torch.compile is off for both: compiled, the SimMIM model trained ~30x slower on CPU in a trial, and for
# fine-tuning runs of a few minutes compiling (~40 s each) costs what it saves.
FULL = Budget(pretrain_epochs=8, pretrain_images=None, pretrain_compile=False,
              fractions={"1%": 60, "10%": 600}, fine_tune_steps={"1%": 300, "10%": 600}, fine_tune_batch=64,
              seeds=(0, 1, 2), test_images=None)
# The quick run logs the pre-training throughput every 5 steps, so that it predicts the full run's.
QUICK = Budget(pretrain_epochs=1, pretrain_images=5120, pretrain_compile=False,
               fractions={"1%": 60, "10%": 600}, fine_tune_steps={"1%": 12, "10%": 24}, fine_tune_batch=64,
               seeds=(0, 1), test_images=1000,
               pretrain_overrides=["data.max_val_images=500", "run.eval_every=1", "run.log_every=5"])


# A few hundred labelled images overfit within a few steps: both arms get mild crops, label smoothing and drop
# path, whatever the demo recipe (tuned for all 60,000 labels and 15 minutes) uses.
FINE_TUNE_REGULARISATION = ["augment.scale=[0.75,1.0]", "augment.ratio=[0.9,1.1]", "augment.label_smoothing=0.1",
                            "model.overrides.drop_path_rate=0.05"]


def images_per_second(run_dir: Path) -> float | None:
    """The median training throughput a run logged, its first (compiling) window left out."""
    rates = [record["images_per_second"] for record in read_metrics(run_dir / "metrics.jsonl")
             if "images_per_second" in record][1:]
    return statistics.median(rates) if rates else None


def run_pretraining(budget: Budget, work: Path) -> dict:
    overrides = [f"run.output_dir={work}", "run.name=pretrain", f"schedule.epochs={budget.pretrain_epochs}",
                 f"run.compile={str(budget.pretrain_compile).lower()}", "run.keep_last=1", *budget.pretrain_overrides]
    if budget.pretrain_images:
        overrides.append(f"data.max_train_images={budget.pretrain_images}")
    config = load_config("simmim-fashion-mnist", overrides, kind=PretrainConfig)
    print(f"pre-training: SimMIM on {budget.pretrain_images or 60000} training images (no labels), "
          f"{budget.pretrain_epochs:g} epochs ...", flush=True)
    with quiet(work / "pretrain.log"):
        result = pretrain(config, progress=False)
    print(f"  done in {result.wall_seconds:.0f} s: {result.step} steps, reconstruction loss {result.test.loss:.4f}",
          flush=True)
    return {"checkpoint": str(result.model_dir / SIMMIM_FILE), "wall_seconds": result.wall_seconds,
            "steps": result.step, "batch_size": config.run.batch_size, "eval_loss": result.test.loss,
            "images_per_second": images_per_second(result.run_dir)}


def run_fine_tune(budget: Budget, work: Path, fraction: str, seed: int, init_from: str | None) -> dict:
    per_class = budget.fractions[fraction]
    steps = budget.fine_tune_steps[fraction]
    steps_per_epoch = per_class * 10 // budget.fine_tune_batch
    name = f"{'simmim' if init_from else 'scratch'}-{fraction.rstrip('%')}pct-seed{seed}"
    overrides = [
        f"data.images_per_class={per_class}", f"data.subset_seed={seed}", f"run.seed={seed}",
        f"run.batch_size={budget.fine_tune_batch}", f"schedule.max_steps={steps}",
        # 10% of the steps warm up, whatever the epoch length
        f"schedule.warmup_epochs={0.1 * steps / steps_per_epoch:.6g}", f"schedule.epochs={steps / steps_per_epoch:.6g}",
        "run.eval_every=100000",  # one evaluation, at the end
        "run.compile=false", "run.keep_last=1", "run.log_every=10", *FINE_TUNE_REGULARISATION,
        f"run.output_dir={work}", f"run.name={name}", f"model.init_from={init_from or 'null'}",
    ]
    if budget.test_images:
        overrides.append(f"data.max_val_images={budget.test_images}")
    config = load_config("fashion-mnist", overrides)
    with quiet(work / f"{name}.log"):
        result = train(config, progress=False)
    print(f"  {fraction:>4} labels, seed {seed}, {'SimMIM' if init_from else 'scratch':>7}: "
          f"top-1 {result.test.top1:.2f}% ({result.wall_seconds:.0f} s)", flush=True)
    return {"fraction": fraction, "images_per_class": per_class, "seed": seed, "init": "simmim" if init_from else "scratch",
            "top1": result.test.top1, "test_images": result.test.count, "steps": result.step,
            "wall_seconds": result.wall_seconds, "images_per_second": images_per_second(result.run_dir)}


def table(results: dict) -> str:
    """The markdown table: mean ± std (sample standard deviation over seeds) and each seed's top-1."""
    runs = results["fine_tune"]
    lines = ["| labels | steps | from scratch | SimMIM pre-trained | gain | scratch per seed | SimMIM per seed |",
             "|---|---|---|---|---|---|---|"]
    for fraction, per_class in results["budget"]["fractions"].items():
        arms = {init: sorted((run for run in runs if run["fraction"] == fraction and run["init"] == init),
                             key=lambda run: run["seed"]) for init in ("scratch", "simmim")}
        top1 = {init: [run["top1"] for run in arm] for init, arm in arms.items()}
        gain = statistics.mean(top1["simmim"]) - statistics.mean(top1["scratch"])
        seeds = {init: " / ".join(f"{value:.2f}" for value in values) for init, values in top1.items()}
        lines.append(f"| {fraction} ({per_class * 10} images) | {results['budget']['fine_tune_steps'][fraction]} | "
                     f"{summarise(top1['scratch'])} | {summarise(top1['simmim'])} | {gain:+.2f} | "
                     f"{seeds['scratch']} | {seeds['simmim']} |")
    return "\n".join(lines)


def wall_times(results: dict) -> str:
    runs = results["fine_tune"]
    pre = results["pretrain"]
    lines = [(f"- pre-training: {pre['wall_seconds'] / 60:.1f} min ({pre['steps']} steps of {pre['batch_size']} images, "
              f"final reconstruction loss {pre['eval_loss']:.4f})")]
    for fraction in results["budget"]["fractions"]:
        for init in ("scratch", "simmim"):
            times = [run["wall_seconds"] for run in runs if run["fraction"] == fraction and run["init"] == init]
            lines.append(f"- {fraction} labels, {init}: {statistics.mean(times):.0f} s per run")
    lines.append(f"- whole experiment: {results['wall_seconds'] / 60:.1f} min")
    return "\n".join(lines)


def method() -> str:
    """The method paragraph, its model and recipe values read from the two recipes the runs use."""
    recipe = load_config("fashion-mnist", FINE_TUNE_REGULARISATION)
    pre = load_config("simmim-fashion-mnist", kind=PretrainConfig)
    shape = recipe.model.overrides
    tokens = shape["img_size"] // shape["patch_size"]
    parameters = sum(p.numel() for p in build_model(recipe, 10, recipe.data.channels).parameters()) / 1e6
    augment = recipe.augment
    crops = "no crops" if tuple(augment.scale) == (1.0, 1.0) else f"crops of {augment.scale[0]:g}-{augment.scale[1]:g} of the area"
    return f"""\
What is compared: the `fashion-mnist` recipe's SwinV2 ({shape['img_size']} px, {shape['patch_size']} px patches,
{tokens}x{tokens} tokens in one window, C {shape['embed_dim']}, {sum(shape['depths'])} blocks, absolute position embedding;
{parameters:.2f}M parameters) trained on a class-balanced subset of the training labels, either from a random
initialisation or fine-tuned from SimMIM pre-training on all 60,000 training images without their labels. Both
arms use the same recipe (AdamW {recipe.optim.base_lr:g} per {recipe.optim.lr_reference_batch} images, warm-up over 10% of
the steps then cosine, label smoothing {augment.label_smoothing:g}, {crops}, flips, drop path
{shape['drop_path_rate']:g}), the same batch of 64 and the
same number of optimizer steps; the fine-tuned arm adds layer-wise lr decay 0.75 (`optim.layer_decay: auto`).
Each seed draws its own subset of labelled images (the same for both arms) and its own initialisation and data
order. Top-1 is measured on the 10,000 test images. Pre-training (recipe `simmim-fashion-mnist`:
{pre.simmim.mask_patch_size} px mask patches, ratio {pre.simmim.mask_ratio:g}, targets normalised over 7x7 px, {pre.schedule.epochs:g} epochs) runs
once; the encoder saw no label, so every seed fine-tunes the same one."""


def markdown(results: dict | None) -> str:
    if results is None:
        body = ("*Not measured yet*: run `python -m experiments.label_efficiency` (about 35-40 minutes on 2 CPU cores);\n"
                "it rewrites this file with the table, the per-seed values and the wall times.")
    else:
        machine = results["machine"]
        body = (f"{table(results)}\n\nTop-1 (%) on {results['test_images']} test images, mean ± sample standard "
                f"deviation over seeds {', '.join(map(str, results['budget']['seeds']))}; per-seed values in seed order.\n\n"
                f"Wall time ({machine}):\n\n{wall_times(results)}\n\n"
                "![label efficiency](images/label-efficiency.png)\n\nAll numbers: `docs/label-efficiency.json`.")
    return (f"# Label efficiency: SimMIM pre-training on Fashion-MNIST\n\n{body}\n\n## Method\n\n{method()}\n\n"
            "## Reproduce\n\n```sh\npython -m experiments.label_efficiency          # the full run, writes docs/\n"
            "python -m experiments.label_efficiency --quick  # a few minutes, writes runs/label-efficiency-quick/\n```\n")


def bar_chart(results: dict, png: Path) -> None:
    from matplotlib.figure import Figure

    runs = results["fine_tune"]
    fractions = list(results["budget"]["fractions"])
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.subplots()
    width = 0.38
    for offset, (init, label, colour) in zip((-width / 2, width / 2), (("scratch", "from scratch", "#999999"),
                                                                       ("simmim", "SimMIM pre-trained", "#1f77b4"))):
        for index, fraction in enumerate(fractions):
            values = [run["top1"] for run in runs if run["fraction"] == fraction and run["init"] == init]
            mean = statistics.mean(values)
            axes.bar(index + offset, mean, width, yerr=spread(values), capsize=4, color=colour, label=label if index == 0 else None)
            axes.scatter([index + offset] * len(values), values, color="black", s=10, zorder=3)
    axes.set_xticks(range(len(fractions)), [f"{fraction} of the labels" for fraction in fractions])
    axes.set_ylabel(f"top-1 on {results['test_images']} test images (%)")
    low = min(run["top1"] for run in runs)
    axes.set_ylim(max(0.0, low - 10.0), 100.0)
    axes.set_title("Fashion-MNIST: fine-tuned from SimMIM vs from scratch (bars: mean ± std, dots: seeds)", fontsize=9)
    axes.legend(loc="upper left")
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=120)


def estimate_full(results: dict) -> float:
    """Seconds the full run would take on this machine, from the quick run's measured throughput."""
    pre, runs = results["pretrain"], results["fine_tune"]
    pre_rate = pre["images_per_second"] or pre["steps"] * pre["batch_size"] / pre["wall_seconds"]
    seconds = FULL.pretrain_epochs * 60000 / pre_rate
    seconds += 4 * 10  # the pre-training evaluations (2000 images each, every 2 epochs)
    fine_rate = statistics.median(run["images_per_second"] for run in runs if run["images_per_second"])
    steps = sum(FULL.fine_tune_steps.values()) * 2 * len(FULL.seeds)
    seconds += steps * FULL.fine_tune_batch / fine_rate
    test_seconds = statistics.median(run["wall_seconds"] - run["steps"] * FULL.fine_tune_batch / fine_rate for run in runs)
    seconds += 2 * len(FULL.fractions) * len(FULL.seeds) * max(test_seconds, 0.0) * 10000 / results["test_images"]
    return seconds


def write_docs(results: dict, docs: Path) -> None:
    """The page and the chart, from the measured results."""
    (docs / "label-efficiency.md").write_text(markdown(results), encoding="utf-8")
    bar_chart(results, docs / "images" / "label-efficiency.png")
    print(f"\n{table(results)}\n\n{wall_times(results)}\n")
    print(f"wrote {docs / 'label-efficiency.md'}, {docs / 'label-efficiency.json'}, "
          f"{docs / 'images' / 'label-efficiency.png'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes on small budgets; docs/ is left alone")
    parser.add_argument("--work-dir", type=Path, help="where the runs go (default runs/label-efficiency[-quick])")
    parser.add_argument("--docs", type=Path, help="where the table, JSON and chart go (default docs/, or the work "
                                                  "directory with --quick)")
    parser.add_argument("--render", action="store_true", help="only rewrite the page and chart from the measured "
                                                                "label-efficiency.json (after a change to their layout)")
    parser.add_argument("--template", action="store_true", help="only write the not-yet-measured docs page")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    work = args.work_dir or ROOT / "runs" / ("label-efficiency-quick" if args.quick else "label-efficiency")
    docs = args.docs or (work if args.quick else ROOT / "docs")
    if args.template:
        (docs / "label-efficiency.md").write_text(markdown(None), encoding="utf-8")
        return 0
    if args.render:
        write_docs(json.loads((docs / "label-efficiency.json").read_text(encoding="utf-8")), docs)
        return 0

    started = time.perf_counter()
    results = {"budget": {"pretrain_epochs": budget.pretrain_epochs, "pretrain_images": budget.pretrain_images or 60000,
                          "fractions": budget.fractions, "fine_tune_steps": budget.fine_tune_steps,
                          "fine_tune_batch": budget.fine_tune_batch, "seeds": list(budget.seeds)},
               "quick": args.quick, "test_images": budget.test_images or 10000,
               "machine": machine()}
    results["pretrain"] = run_pretraining(budget, work)
    print("fine-tuning and training from scratch, the same steps for both:", flush=True)
    results["fine_tune"] = [
        run_fine_tune(budget, work, fraction, seed, init_from)
        for fraction in budget.fractions for seed in budget.seeds
        for init_from in (results["pretrain"]["checkpoint"], None)
    ]
    results["wall_seconds"] = time.perf_counter() - started

    docs.mkdir(parents=True, exist_ok=True)
    (docs / "label-efficiency.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_docs(results, docs)
    if args.quick:
        print(f"estimated time of the full run on this machine: {estimate_full(results) / 60:.0f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
