"""Training stability (paper Fig. 2, Table 6): activation amplitude across depth, pre-norm vs res-post-norm.

The amplitude of the main branch across depth, pre-norm vs residual post-norm, for a deep narrow SwinV2 on
Fashion-MNIST.

    python -m experiments.stability            # ~21 min on 2 cores: writes docs/stability.md,
                                               # docs/stability.json, docs/images/stability.png
    python -m experiments.stability --quick    # a minute: the same on a few steps, under runs/stability-quick/

For each block variant (Swin v1's block: pre-norm, dot product, bias table; pre-norm with v2's cosine
attention and log-CPB; SwinV2's residual post-norm, cosine, log-CPB) one 24-block, 64-wide model (one stage of
7x7 tokens, the `fashion-mnist` recipe's layout) is trained with the same recipe and seed, and on a fixed
batch of test images the mean |x| of the main branch after every block is recorded at initialisation and
after training. The paper's measure of trouble is the ratio of the largest to the smallest of these
amplitudes (about 10^4 for pre-norm at large sizes); res-post-norm keeps it near 1."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from experiments.common import ROOT, machine  # noqa: E402
from swinv2.data import DATASET_STATS, EvalPreprocess, build_dataset  # noqa: E402
from swinv2.train.artifacts import load_classifier  # noqa: E402
from swinv2.train.config import load_config  # noqa: E402
from swinv2.train.loop import build_model, seed_everything, train  # noqa: E402

VARIANTS = {  # label -> model overrides
    "pre-norm, dot, table (Swin v1 block)": dict(norm="pre", attention="dot", position_bias="table"),
    "pre-norm, cosine, log-CPB": dict(norm="pre", attention="cosine", position_bias="cpb_log"),
    "res-post-norm, cosine, log-CPB (SwinV2)": dict(norm="res_post", attention="cosine", position_bias="cpb_log"),
}
# One stage of 7x7 tokens of 4x4 px in one 7x7 window, whatever the demo recipe's own shape.
DEEP_NARROW = dict(patch_size=4, window_size=7, ape=True, embed_dim=64, depths=[24], num_heads=[2], mlp_ratio=4.0,
                   drop_path_rate=0.1)
PROBE_IMAGES = 256


def config_for(variant: dict, steps: int, work: Path, name: str, seed: int):
    overrides = [f"model.overrides.{key}={value}" for key, value in {**DEEP_NARROW, **variant}.items()]
    return load_config("fashion-mnist", [
        *overrides, f"schedule.max_steps={steps}", f"schedule.epochs={steps / 468:.6g}",
        f"schedule.warmup_epochs={0.1 * steps / 468:.6g}", "run.compile=false", "run.eval_every=100000",
        "run.keep_last=1", f"run.seed={seed}", f"run.output_dir={work}", f"run.name={name}",
        "data.max_val_images=2000",
    ])


@torch.no_grad()
def amplitudes(model, images: torch.Tensor) -> list[float]:
    """Mean |x| of the main branch after each block (what the next block and the residual sum carry)."""
    values: list[float] = []
    hooks = [block.register_forward_hook(lambda _module, _inputs, output: values.append(output.abs().mean().item()))
             for stage in model.layers for block in stage.blocks]
    model.eval()(images)
    for hook in hooks:
        hook.remove()
    return values


def ratio(values: list[float]) -> float:
    return max(values) / min(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, written under runs/stability-quick/")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps or (10 if args.quick else 400)
    work = ROOT / "runs" / ("stability-quick" if args.quick else "stability")
    out_dir = work if args.quick else ROOT / "docs"
    started = time.perf_counter()

    test_set = build_dataset("fashion-mnist", None, split="test", channels=1)
    preprocess = EvalPreprocess(img_size=28, mean=DATASET_STATS["fashion-mnist"][0],
                                std=DATASET_STATS["fashion-mnist"][1], crop_pct=1.0)
    probe = preprocess(torch.stack([test_set[i][0] for i in range(PROBE_IMAGES)]))

    results = []
    for label, variant in VARIANTS.items():
        name = "-".join(variant.values())
        config = config_for(variant, steps, work, name, args.seed)
        seed_everything(args.seed)
        initial = amplitudes(build_model(config, 10, 1), probe)
        print(f"{label}: training {steps} steps ...", flush=True)
        result = train(config, progress=False)
        trained = amplitudes(load_classifier(result.model_dir)[0], probe)
        results.append(dict(variant=label, overrides=variant, initial=initial, trained=trained,
                            initial_ratio=ratio(initial), trained_ratio=ratio(trained), top1=result.test.top1,
                            test_images=result.test.count, wall_seconds=result.wall_seconds))
        print(f"  max/min amplitude: {ratio(initial):.3g} at init, {ratio(trained):.3g} trained; "
              f"top-1 {result.test.top1:.2f}% ({result.wall_seconds:.0f} s)", flush=True)

    command = "python -m experiments.stability" + (" --quick" if args.quick else "")
    write_outputs(results, out_dir, steps, args.seed, command, time.perf_counter() - started)


def write_outputs(results: list[dict], out_dir: Path, steps: int, seed: int, command: str, wall: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stability.json").write_text(json.dumps(dict(steps=steps, seed=seed, results=results), indent=1))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, key, title in ((axes[0], "initial", "at initialisation"), (axes[1], "trained", f"after {steps} steps")):
        for result in results:
            axis.plot(range(1, len(result[key]) + 1), result[key], marker="o", markersize=3, label=result["variant"])
        axis.set_yscale("log")
        axis.set_xlabel("block")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean |x| of the main branch")
    axes[1].legend(fontsize=8)
    figure.suptitle(f"24-block, 64-wide SwinV2 on Fashion-MNIST ({command})")
    figure.tight_layout()
    image = out_dir / ("images/stability.png" if out_dir.name == "docs" else "stability.png")
    image.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(image, dpi=110)
    plt.close(figure)

    rows = [f"| {r['variant']} | {r['initial'][0]:.3g} / {r['initial'][-1]:.3g} | {r['initial_ratio']:.3g} | "
            f"{r['trained'][0]:.3g} / {r['trained'][-1]:.3g} | {r['trained_ratio']:.3g} | {r['top1']:.2f} | "
            f"{r['wall_seconds']:.0f} |" for r in results]
    text = "\n".join([
        "# Training stability: activation amplitude across depth",
        "",
        f"Measured by `{command}` (seed {seed}, {steps} optimizer steps of batch 128 per variant, "
        f"{wall / 60:.1f} min in all; {machine()}). Each model: one stage of 7x7 tokens, 24 blocks, width 64,",
        "2 heads, drop path 0.1, the `fashion-mnist` recipe otherwise. Amplitude: mean |x| of the main branch after",
        f"each block on {PROBE_IMAGES} test images; top-1 on {results[0]['test_images']} test images.",
        "",
        "| block | amplitude block 1 / 24, init | max/min, init | block 1 / 24, trained | max/min, trained "
        "| top-1 % | s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"![amplitude across depth]({'images/stability.png' if out_dir.name == 'docs' else 'stability.png'})",
        "",
    ])
    (out_dir / "stability.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
