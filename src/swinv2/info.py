"""Model summary: parameters and FLOPs (in total and per stage), and each stage's windows and shifts.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on one image. It counts the matrix
products and convolutions (2 FLOPs per multiply-add): the patch-embedding convolution, every Linear
(including the small continuous-position-bias MLP), and the two attention products q @ k^T and
attn @ v. Element-wise work (norms, softmax, GELU, bias additions) is not counted. GMACs = FLOPs / 2,
the unit of the papers' tables. On the meta device shapes are known and nothing is computed or
allocated, so SwinV2-G at 640 px is summarised in about a second."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.hooks import RemovableHandle

from .models import SwinTransformerV2, create_on_meta
from .models.registry import SIZES

# A real model above this size is counted on a meta copy: a CPU forward pass of SwinV2-L or larger
# takes seconds to minutes and only the shapes matter.
LARGE_MODEL_PARAMETERS = 100_000_000

# The paper's counts for the sizes that have no official release (Table 2), shown beside ours.
PAPER_PARAMETERS = {"huge": "658M", "giant": "3.0B"}


@dataclass
class BlockSummary:
    index: int
    window_size: tuple[int, int]
    shift_size: tuple[int, int]
    pretrained_window_size: tuple[int, int]
    main_branch_norm: bool


@dataclass
class PartSummary:
    """One row of the table: the patch embedding, a stage (with its patch merging), or the head."""

    name: str
    parameters: int
    flops: int
    resolution: tuple[int, int] | None = None
    dim: int | None = None
    heads: int | None = None
    blocks: list[BlockSummary] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass
class ModelSummary:
    name: str
    config: dict[str, Any]
    parameters: int
    flops: int
    parts: list[PartSummary]
    counted_on: str
    paper_parameters: str | None = None

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9

    @property
    def stages(self) -> list[PartSummary]:
        return [part for part in self.parts if part.blocks]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["gmacs"] = self.gmacs
        for part, part_values in zip(self.parts, values["parts"]):
            part_values["depth"] = part.depth
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        return format_summary(self)


# ---------------------------------------------------------------------------------------- counting
Owned = list[Union[nn.Module, nn.Parameter]]


def model_parts(model: SwinTransformerV2) -> list[tuple[str, Owned]]:
    """The table's rows and what each one owns; together they own every parameter.
    A stage owns its patch merging, which sits at its end as in the official checkpoints."""
    embedding: Owned = [model.patch_embed]
    if model.absolute_pos_embed is not None:
        embedding.append(model.absolute_pos_embed)
    stages: list[tuple[str, Owned]] = [(f"stage {index}", [stage]) for index, stage in enumerate(model.layers)]
    head = [module for module in (model.norm, model.head) if module is not None]  # None: features_only
    return [("patch_embed", embedding), *stages, ("head", head)]


def count_parameters(owned: Owned) -> int:
    return sum(
        parameter.numel()
        for item in owned
        for parameter in (item.parameters() if isinstance(item, nn.Module) else [item])
    )


def count_flops(model: SwinTransformerV2) -> tuple[int, dict[str, int]]:
    """FLOPs of one image through `model`, in total and per row of `model_parts`.

    Each row's share is the counter's running total after its modules ran minus before, taken with
    forward hooks, so it does not depend on how FlopCounterMode names modules."""
    counter = FlopCounterMode(display=False)
    per_part: dict[str, int] = {}
    hooks = []
    for name, owned in model_parts(model):
        per_part[name] = 0
        for module in owned:
            if isinstance(module, nn.Module):
                hooks.extend(track_flops(module, name, counter, per_part))
    config = model.config
    parameter = next(model.parameters())
    image = torch.zeros(1, config.in_chans, *config.img_size, dtype=parameter.dtype, device=parameter.device)
    try:
        with counter, torch.no_grad():
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops(), per_part


def track_flops(
    module: nn.Module, name: str, counter: FlopCounterMode, per_part: dict[str, int]
) -> list[RemovableHandle]:
    """Hooks that add what `module`'s forward pass counted to `per_part[name]`."""
    start = {}

    def before(*_: Any) -> None:
        start["flops"] = counter.get_total_flops()

    def after(*_: Any) -> None:
        per_part[name] += counter.get_total_flops() - start["flops"]

    return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def meta_copy(model: SwinTransformerV2) -> SwinTransformerV2:
    """The same architecture on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return type(model)(model.config)


# ----------------------------------------------------------------------------------- summarising
def summarize(model: SwinTransformerV2 | str, **overrides: Any) -> ModelSummary:
    """Summarise a model instance, or a registered name (built on meta: nothing is allocated).

    `overrides` (img_size, window_size, num_classes, ...) apply to a name only. A real model with
    more than LARGE_MODEL_PARAMETERS parameters is counted on a meta copy of its configuration."""
    if isinstance(model, str):
        name = model
        model = create_on_meta(name, **overrides)
    else:
        if overrides:
            raise TypeError("overrides apply to a model name; pass a model built with them instead")
        name = type(model).__name__
    counted = model
    if model.patch_embed.proj.weight.device.type != "meta" and count_parameters([model]) > LARGE_MODEL_PARAMETERS:
        counted = meta_copy(model)
    flops, flops_per_part = count_flops(counted)

    parts = []
    for part_name, owned in model_parts(model):
        part = PartSummary(part_name, count_parameters(owned), flops_per_part[part_name])
        if part_name == "patch_embed":
            part.resolution, part.dim = model.config.stage_resolution(0), model.config.embed_dim
        elif part_name == "head":
            part.dim = model.num_features
        else:
            describe_stage(part, model, int(part_name.split()[1]))
        parts.append(part)
    return ModelSummary(
        name=name,
        config=model.config.to_dict(),
        parameters=count_parameters([model]),
        flops=flops,
        parts=parts,
        counted_on=counted.patch_embed.proj.weight.device.type,
        paper_parameters=paper_parameters(model),
    )


def describe_stage(part: PartSummary, model: SwinTransformerV2, index: int) -> None:
    config = model.config
    part.resolution = config.stage_resolution(index)
    part.dim = config.stage_dim(index)
    part.heads = config.num_heads[index]
    part.blocks = [
        BlockSummary(
            index=block_index,
            window_size=tuple(block.window_size),
            shift_size=tuple(block.shift_size),
            pretrained_window_size=tuple(block.attn.pretrained_window_size),
            main_branch_norm=block.main_branch_norm is not None,
        )
        for block_index, block in enumerate(model.layers[index].blocks)
    ]


def paper_parameters(model: SwinTransformerV2) -> str | None:
    """The paper's count when the model has the width and depth of SwinV2-H or -G."""
    config = model.config
    for size, count in PAPER_PARAMETERS.items():
        shape = SIZES[size]
        if (config.embed_dim, config.depths, config.num_heads) == (
            shape["embed_dim"], shape["depths"], shape["num_heads"]
        ):
            return count
    return None


# ------------------------------------------------------------------------------------ formatting
def human_count(value: float) -> str:
    """28347154 -> '28.35M', 3001940680 -> '3.00B'."""
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return str(int(value))


def pair_text(pair: tuple[int, int]) -> str:
    """(8, 8) -> '8', (8, 6) -> '8x6'."""
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def distinct_text(values: list[tuple[int, int]]) -> str:
    """The distinct values in block order: '0/4' for a stage that alternates unshifted and shifted."""
    ordered = list(dict.fromkeys(values))
    return "/".join(pair_text(value) for value in ordered) if ordered else "-"


def part_row(part: PartSummary) -> list[str]:
    blocks = part.blocks
    # (0, 0) means "normalised by the block's own window": nothing to report.
    pretrained = [block.pretrained_window_size for block in blocks if block.pretrained_window_size != (0, 0)]
    return [
        part.name,
        f"{part.resolution[0]}x{part.resolution[1]}" if part.resolution else "-",
        str(part.dim) if part.dim else "-",
        str(part.heads) if part.heads else "-",
        str(part.depth) if blocks else "-",
        distinct_text([block.window_size for block in blocks]),
        distinct_text([block.shift_size for block in blocks]),
        distinct_text(pretrained),
        human_count(part.parameters),
        f"{part.flops / 2e9:.3f}",
    ]


HEADER = ["part", "map", "dim", "heads", "depth", "window", "shift", "pretrained window", "params", "GMACs"]


def format_table(rows: list[list[str]], numeric_columns: int = 2) -> str:
    """Columns padded to their widest cell; text left-aligned, the last `numeric_columns` right-aligned."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    first_numeric = len(widths) - numeric_columns
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if column >= first_numeric else cell.ljust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_overview(summaries: list[ModelSummary]) -> str:
    """One line per model: the variant table of `swinv2 list --details`."""
    rows = [["model", "img", "window", "classes", "params", "GMACs"]]
    for summary in summaries:
        config = summary.config
        rows.append([
            summary.name,
            pair_text(tuple(config["img_size"])),
            pair_text(tuple(config["window_size"])),
            str(config["num_classes"]),
            human_count(summary.parameters),
            f"{summary.gmacs:.2f}",
        ])
    return format_table(rows)


def format_summary(summary: ModelSummary) -> str:
    config = summary.config
    height, width = config["img_size"]
    parameters = f"{human_count(summary.parameters)} ({summary.parameters:,})"
    if summary.paper_parameters:
        parameters += f"; paper: {summary.paper_parameters}"
    head = "no head (features_only)" if config.get("features_only") else f"{config['num_classes']} classes"
    rows = [HEADER, *(part_row(part) for part in summary.parts)]
    rows.append(["total", "", "", "", str(sum(config["depths"])), "", "", "",
                 human_count(summary.parameters), f"{summary.gmacs:.3f}"])
    return "\n".join([
        f"{summary.name}: {height}x{width} input, {head}, "
        f"window {pair_text(tuple(config['window_size']))}",
        f"parameters  {parameters}",
        f"FLOPs       {summary.flops / 1e9:.2f}G = {summary.gmacs:.2f} GMACs per image "
        f"(FlopCounterMode on {summary.counted_on}: convolutions and matrix products)",
        "",
        format_table(rows),
        "",
        "A stage's params and GMACs include its patch merging. Shift '0/s': even blocks unshifted, odd",
        "blocks rolled by s; a stage whose map is no larger than the window is one unshifted window.",
        *extra_norm_note(config.get("extra_norm_period", 0)),
    ])


def extra_norm_note(period: int) -> list[str]:
    if not period:
        return []
    return [f"A LayerNorm on the main branch after every {period}th block of a stage (SwinV2-H/G, paper)."]
