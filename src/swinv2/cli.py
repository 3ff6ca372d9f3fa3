"""`swinv2` command line: info, list, convert, demo. Run `swinv2 COMMAND --help` for each.

Library errors (`SwinV2Error`) and file errors are printed as one line `error: ...` with exit status 2,
the status argparse uses for a bad command line: both mean "the input was wrong", not "a bug"."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
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
    return parser


def one_line(text: Any) -> str:
    return " ".join(str(text).split("\n"))


def show_warning(message: Any, *_: Any, **__: Any) -> None:
    """Warnings as `warning: ...` lines, without the file and source line meant for developers."""
    print(f"warning: {one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            args.function(args)
        except (SwinV2Error, OSError) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2
    return 0
