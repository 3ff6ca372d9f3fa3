"""`swinv2` command line: info, list, convert, demo, train, pretrain, eval, predict, benchmark, experiment. Run `swinv2 COMMAND --help` for each.

Library errors (`SwinV2Error`) and file errors are printed as one line `error: ...` with exit status 2,
the status argparse uses for a bad command line: both mean "the input was wrong", not "a bug"."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from .data import evaluation_transform, load_image
from .errors import InputError, SwinV2Error
from .info import format_overview, summarize
from .models import create_model, list_models

DEFAULT_MODEL = "swinv2_tiny_window8_256"
SOURCE_LAYOUTS = ("auto", "project", "official", "timm", "hf", "simmim")
TARGET_LAYOUTS = ("project", "official", "timm", "hf", "simmim")
DATASET_KINDS = ("fashion-mnist", "folder", "list")
CLASSIFIER_HELP = "a trained classifier directory (the model/ of a `swinv2 train` run)"


# ------------------------------------------------------------------------------------- commands
def command_info(args: argparse.Namespace) -> None:
    summary = summarize(args.model, **model_overrides(args))
    print(summary.to_json() if args.json else summary.format())


def command_list(args: argparse.Namespace) -> None:
    pattern = args.pattern
    # A bare word finds every name that contains it: `swinv2 list tiny`.
    if not any(character in pattern for character in "*?["):
        pattern = f"*{pattern}*"
    names = list_models(pattern)
    if not names:
        raise SwinV2Error(f"no model matches {args.pattern!r}; `swinv2 list` shows them all")
    if args.details:
        print(format_overview([summarize(name) for name in names]))
    else:
        print("\n".join(names))


def command_convert(args: argparse.Namespace) -> None:
    # Imported here so that the other commands work whatever state the converters are in.
    from .checkpoints import convert_checkpoint

    overrides = {"img_size": args.img_size, "window_size": args.window_size}
    path = convert_checkpoint(
        args.src,
        args.dst,
        source_layout=None if args.source_layout == "auto" else args.source_layout,
        target_layout=args.target_layout,
        **{name: value for name, value in overrides.items() if value is not None},
    )
    print(f"wrote {path} ({args.target_layout} layout)")


def command_demo(args: argparse.Namespace) -> None:
    image, image_name = demo_image(args.image)
    overrides = model_overrides(args)
    print(summarize(args.model, **overrides).format())

    model = create_model(args.model, pretrained=args.pretrained, **overrides).eval()
    transform = evaluation_transform(model.config.img_size[0])
    batch = transform(image).unsqueeze(0)
    print(f"\nimage: {image_name}, {image.width}x{image.height} RGB; {transform!r}")
    print(f"input: {tuple(batch.shape)}")

    if args.pretrained:
        print(f"weights: {args.pretrained}")
    else:
        print("weights: random initialisation, UNTRAINED: the outputs show shapes and speed, not predictions "
              "(pass --pretrained PATH for real ones)")
    with torch.inference_mode():
        stages = model.forward_stages(batch)  # also warms up the kernels before the timed pass
        start = time.perf_counter()
        logits = model(batch)
        elapsed = time.perf_counter() - start
    for index, feature_map in enumerate(stages):
        print(f"stage {index} output: {tuple(feature_map.shape)} (B, H, W, C)")
    print(f"logits: {tuple(logits.shape)}")
    print(f"forward time: {elapsed * 1000:.1f} ms (one image, CPU, {torch.get_num_threads()} threads)")
    if args.pretrained:
        print_top_classes(logits[0], count=5)


def demo_image(path: str | None) -> tuple[Image.Image, str]:
    """The image to classify: a file, or the cat photo shipped with scikit-image."""
    if path:
        return load_image(path), path
    try:
        from skimage import data
    except ImportError:
        raise InputError(
            "the demo photo comes from scikit-image: pip install scikit-image, or pass --image PATH"
        ) from None
    return load_image(data.chelsea()), "skimage.data.chelsea()"


def print_top_classes(logits: torch.Tensor, count: int) -> None:
    probabilities = logits.float().softmax(dim=-1)
    top = probabilities.topk(min(count, probabilities.numel()))
    print(f"top-{len(top.indices)} classes (index: probability):")
    for probability, index in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {index:>5}: {probability:.4f}")


def command_train(args: argparse.Namespace) -> None:
    from .train.config import TrainConfig
    from .train.loop import train

    train(training_config(args, TrainConfig), progress=False if args.no_progress else None)


def command_pretrain(args: argparse.Namespace) -> None:
    from .train.config import PretrainConfig
    from .train.pretrain import pretrain

    pretrain(training_config(args, PretrainConfig), progress=False if args.no_progress else None)


def training_config(args: argparse.Namespace, kind: type) -> Any:
    """The configuration `train` and `pretrain` run: CONFIG plus overrides, --init-from and --resume."""
    from .train.config import load_config
    from .train.loop import resume_config

    source, overrides = args.config, list(args.overrides)
    if source is not None and "=" in source:  # no config named: the first word was already an override
        source, overrides = None, [source, *overrides]
    if args.init_from:
        overrides.append(f"model.init_from={args.init_from}")
    if args.resume and source is None:
        # --resume DIR alone: the run continues with the configuration saved in its checkpoint.
        return resume_config(args.resume, overrides, kind)
    config = load_config(source, overrides, kind)
    if args.resume is not None:
        # A bare --resume continues this configuration's own run directory.
        config.run.resume = args.resume or str(Path(config.run.output_dir) / config.run.name)
    return config


def command_eval(args: argparse.Namespace) -> None:
    # Imported here: the data and training stack is more than the other commands need.
    from .checkpoints.io import write_json
    from .plots import plot_confusion
    from .train.artifacts import load_classifier
    from .train.evaluate import class_index_map, evaluate, format_report
    from .train.precision import resolve_device, resolve_precision

    model, classes, preprocessing = load_classifier(args.directory)
    from .data import EvalPreprocess, build_dataset, make_loader  # after the model, which fails faster

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    dataset = build_dataset(args.dataset, args.path, split=args.split,
                            load_size=eval_load_size(args.dataset, preprocessing), channels=preprocessing["channels"])
    label_map = class_index_map(dataset.classes, classes)
    loader = make_loader(dataset, args.batch_size, shuffle=False, num_workers=args.num_workers)
    preprocess = EvalPreprocess(tuple(preprocessing["img_size"]), preprocessing["mean"], preprocessing["std"],
                                preprocessing["crop_pct"]).to(device)
    print(f"evaluating {args.directory} on {args.dataset} {args.split} ({len(dataset)} images, {device}, {precision})")
    result = evaluate(model.to(device), loader, preprocess, device, precision, len(classes),
                      progress=False if args.no_progress else None, label_map=label_map)
    print(format_report(result, classes))

    out = Path(args.out) if args.out else Path(args.directory) / f"eval-{args.split}"
    plot_confusion(result.confusion, classes, out / "confusion.png")
    source = {"model": str(args.directory), "dataset": args.dataset, "path": args.path, "split": args.split}
    write_json({**source, **result.to_dict(classes)}, out / "metrics.json")
    print(f"wrote {out / 'confusion.png'} and {out / 'metrics.json'}")


def eval_load_size(dataset: str, preprocessing: dict[str, Any]) -> int | None:
    """Image files are decoded at the size the evaluation resize makes, so that batches stack;
    Fashion-MNIST's images all have one size already."""
    if dataset == "fashion-mnist":
        return None
    return int(max(preprocessing["img_size"]) / preprocessing["crop_pct"])


def command_predict(args: argparse.Namespace) -> None:
    from .train.predict import predict

    predictions = predict(args.checkpoint, args.images, topk=args.topk)
    if args.json:
        print(json.dumps([
            {"image": image, "predictions": [{"class": name, "probability": probability} for name, probability in top]}
            for image, top in zip(args.images, predictions)
        ], indent=2))
        return
    for image, top in zip(args.images, predictions):
        width = max(len(name) for name, _ in top)
        print(image)
        for rank, (name, probability) in enumerate(top, start=1):
            print(f"  {rank}. {name:<{width}}  {probability:.4f}")


def command_benchmark(args: argparse.Namespace) -> None:
    from .benchmark import run_from_args

    run_from_args(args, progress=lambda case: print(f"measuring {case} ...", file=sys.stderr, flush=True))


def experiments_directory() -> Path:
    """The source checkout's experiments/ (the repository root's, or the working directory's)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "experiments" / "__init__.py").is_file():
            return root / "experiments"
    raise InputError("the experiments ship with the source repository, not with the installed package: "
                     "run `swinv2 experiment` inside a clone of it (or `python -m experiments.NAME` there)")


def available_experiments(directory: Path) -> dict[str, str]:
    """Experiment name (hyphenated) -> the first line of its module docstring."""
    found = {}
    for path in sorted(directory.glob("*.py")):
        if path.stem in ("__init__", "common"):
            continue
        text = path.read_text(encoding="utf-8")
        summary = text.split('"""')[1].strip().splitlines()[0] if text.startswith('"""') else ""
        found[path.stem.replace("_", "-")] = summary
    return found


def command_experiment(args: argparse.Namespace) -> None:
    import importlib

    directory = experiments_directory()
    known = available_experiments(directory)
    if args.name is None:
        width = max(map(len, known))
        for name, summary in known.items():
            print(f"{name:<{width}}  {summary}")
        print("\nrun one: swinv2 experiment NAME [--quick]; its docs page names what it measured")
        return
    name = args.name.replace("_", "-")
    if name not in known:
        raise InputError(f"no experiment named {args.name!r}; the experiments are: {', '.join(known)}")
    sys.path.insert(0, str(directory.parent))
    module = importlib.import_module(f"experiments.{name.replace('-', '_')}")
    status = module.main(args.arguments)
    if status:
        raise SystemExit(status)


# ---------------------------------------------------------------------------------------- parser
def add_model_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """The model name and the constructor overrides that `info` and `demo` share."""
    if default is None:
        parser.add_argument("model", help="a registered name (see `swinv2 list`)")
    else:
        parser.add_argument("--model", default=default, help=f"a registered name (default {default})")
    parser.add_argument("--img-size", type=int, metavar="N", help="input resolution (square)")
    parser.add_argument("--window-size", type=int, metavar="N", help="attention window")
    parser.add_argument("--pretrained-window-sizes", type=int, nargs="+", metavar="N",
                        help="window each stage was pre-trained with, one per stage (0 = own window)")
    parser.add_argument("--num-classes", type=int, metavar="N", help="classifier outputs (0 = no head)")


def add_training_arguments(parser: argparse.ArgumentParser, recipes: str, init_from: str) -> None:
    """CONFIG, overrides, --init-from, --resume and --no-progress: what `train` and `pretrain` take."""
    parser.add_argument("config", nargs="?", metavar="CONFIG", help=f"a YAML file or a recipe name: {recipes}")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE",
                        help="e.g. optim.base_lr=1e-3 run.batch_size=64 model.init_from=weights.pth")
    parser.add_argument("--init-from", metavar="CHECKPOINT", help=init_from)
    parser.add_argument("--resume", nargs="?", const="", metavar="PATH",
                        help="continue an interrupted run exactly: from PATH (a run directory, its checkpoints/ or a "
                             "checkpoint file), or without PATH from this configuration's run directory. Without "
                             "CONFIG the checkpoint's own configuration is used")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("img_size", "window_size", "pretrained_window_sizes", "num_classes")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def add_command(
    commands: argparse._SubParsersAction, name: str, function: Callable[[argparse.Namespace], None], text: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=text, description=text)
    parser.set_defaults(function=function)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swinv2", description="Swin Transformer V2: models, checkpoints, demo.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = add_command(commands, "info", command_info,
                       "parameters, FLOPs, and each stage's map, width, heads, windows and shifts")
    add_model_arguments(info)
    info.add_argument("--json", action="store_true", help="machine-readable output")

    listing = add_command(commands, "list", command_list, "registered model names")
    listing.add_argument("pattern", nargs="?", default="*", help="shell pattern or a word the name contains")
    listing.add_argument("--details", action="store_true",
                         help="input size, window, classes, parameters and GMACs of each (counted on meta)")

    convert = add_command(commands, "convert", command_convert,
                          "rewrite a checkpoint in another layout (official, timm, HF transformers, SimMIM, project)")
    convert.add_argument("src", help="checkpoint file or directory to read")
    convert.add_argument("dst", help="a .safetensors or .pth file, or (project, hf) a directory: no suffix")
    convert.add_argument("--from", dest="source_layout", choices=SOURCE_LAYOUTS, default="auto",
                         help="layout of SRC (default: detect it)")
    convert.add_argument("--to", dest="target_layout", choices=TARGET_LAYOUTS, default="project",
                         help="layout of DST (default: project)")
    # Weights do not record the resolution and window; a directory's config.json does.
    convert.add_argument("--img-size", type=int, metavar="N", help="directory outputs: input resolution for config.json")
    convert.add_argument("--window-size", type=int, metavar="N", help="directory outputs: attention window for config.json")

    demo = add_command(commands, "demo", command_demo,
                       "summarise a model and classify a photo with the official evaluation preprocessing")
    add_model_arguments(demo, default=DEFAULT_MODEL)
    demo.add_argument("--pretrained", metavar="PATH", help="checkpoint to load (any supported layout)")
    demo.add_argument("--image", metavar="PATH", help="image file (default: scikit-image's chelsea photo)")

    training = add_command(commands, "train", command_train,
                           "train or fine-tune a classifier: a YAML config or a named recipe, plus overrides")
    add_training_arguments(
        training, "fashion-mnist, imagenet-1k-scratch, imagenet-22k-to-1k",
        "fine-tune from any checkpoint create_model reads (official, timm, HF, SimMIM, a run's model/), also at "
        "another resolution or window; from a SimMIM checkpoint optim.layer_decay auto is 0.75; same as "
        "model.init_from=...")

    pretraining = add_command(commands, "pretrain", command_pretrain,
                              "SimMIM self-supervised pre-training (no labels): a YAML config or a named recipe, "
                              "plus overrides; fine-tune the result with `swinv2 train --init-from`")
    add_training_arguments(pretraining, "simmim-fashion-mnist, simmim-swinv2-base-192",
                           "continue from a SimMIM checkpoint (official layout, or a pre-training run's "
                           "model/simmim.pth); same as model.init_from=...")

    evaluation = add_command(commands, "eval", command_eval,
                             "top-1/top-5 and per-class accuracy of a trained classifier, and its confusion matrix PNG")
    evaluation.add_argument("directory", metavar="DIR", help=CLASSIFIER_HELP)
    evaluation.add_argument("--dataset", required=True, choices=DATASET_KINDS, help="how the images are stored")
    evaluation.add_argument("--path", help="the dataset: IDX files' directory, class folders, or a list file "
                                           "(fashion-mnist: default the Debian package's)")
    evaluation.add_argument("--split", default="test", help="fashion-mnist: train or test (default test)")
    evaluation.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per batch (default 256)")
    evaluation.add_argument("--num-workers", type=int, default=0, metavar="N", help="loader processes (default 0)")
    evaluation.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    evaluation.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                            help="autocast precision (default auto: bf16 on CPU, as training evaluates)")
    evaluation.add_argument("--out", metavar="DIR", help="where confusion.png and metrics.json go "
                                                         "(default DIR/eval-SPLIT)")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar")

    prediction = add_command(commands, "predict", command_predict,
                             "the most probable classes of images, from a trained classifier directory")
    prediction.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...)")
    prediction.add_argument("--checkpoint", required=True, metavar="DIR", help=CLASSIFIER_HELP)
    prediction.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image (default 5)")
    prediction.add_argument("--json", action="store_true", help="machine-readable output")

    from .benchmark import add_arguments as add_benchmark_arguments

    benchmark = add_command(commands, "benchmark", command_benchmark,
                            "images/s and GFLOP/s of inference and training steps, against Hugging Face's Swinv2")
    add_benchmark_arguments(benchmark)

    experiment = add_command(commands, "experiment", command_experiment,
                             "reproduce one of the paper's claims at small scale (from a clone of the repository); "
                             "without NAME, list them")
    experiment.add_argument("name", nargs="?", metavar="NAME", help="e.g. stability, resolution-gap, label-efficiency")
    experiment.add_argument("arguments", nargs=argparse.REMAINDER, metavar="...",
                            help="passed to the experiment, e.g. --quick")
    return parser


def one_line(text: Any) -> str:
    return " ".join(str(text).split("\n"))


def show_warning(message: Any, *_: Any, **__: Any) -> None:
    """Warnings as `warning: ...` lines, without the file and source line meant for developers."""
    print(f"warning: {one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `train` takes SECTION.KEY=VALUE words anywhere, also after options such as --no-progress.
    args, extra = parser.parse_known_args(argv)
    takes_overrides = getattr(args, "function", None) in (command_train, command_pretrain)
    if extra and takes_overrides and all("=" in word for word in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            args.function(args)
        except (SwinV2Error, OSError) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2
    return 0
