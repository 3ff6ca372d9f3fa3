"""Pictures of a run for people: training curves, the confusion matrix, and a grid of predictions.

Figures are drawn on matplotlib `Figure` objects with the Agg renderer, never through pyplot: no
window opens, no display is needed, and the caller's own matplotlib backend is left alone. Sizes
are fixed in inches at DPI dots per inch and saved without trimming, so a PNG's pixel size is known."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

DPI = 100
CURVES_SIZE = (15.0, 4.5)  # inches: three panels side by side
WRONG_COLOUR = "tab:red"
RIGHT_COLOUR = "black"
# (panel title, y label, [(record key, legend label), ...]): the names the training loop logs.
CURVE_PANELS = (
    ("loss", "cross-entropy", [("train_loss", "train loss"), ("eval_loss", "eval loss")]),
    ("accuracy", "accuracy (%)", [("eval_top1", "eval top-1"), ("eval_top5", "eval top-5")]),
    ("learning rate", "learning rate", [("lr", "lr")]),
)
ANNOTATE_UP_TO = 30  # confusion cells get their numbers up to this many classes
LABEL_UP_TO = 60  # and the axes their class names


def save(figure: Figure, png: str | os.PathLike) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=DPI, format="png")
    return png


# ------------------------------------------------------------------------------------------- curves
def plot_curves(metrics_jsonl: str | os.PathLike, png: str | os.PathLike) -> Path:
    """Loss, accuracy and learning rate against the optimizer step, from a run's metrics.jsonl.

    The top axis of each panel reads in epochs when the records carry them. Missing series are left out."""
    # Imported here: swinv2.train imports this module, and an import at the top would be circular.
    from .train.metrics import read_metrics

    records = read_metrics(metrics_jsonl)
    x_key = next((key for key in ("step", "epoch") if any(key in record for record in records)), None)
    figure = Figure(figsize=CURVES_SIZE, layout="constrained")
    figure.suptitle(f"training curves: {Path(metrics_jsonl).parent.name}")
    for axes, (title, y_label, series) in zip(figure.subplots(1, len(CURVE_PANELS)), CURVE_PANELS):
        draw_panel(axes, records, x_key, series)
        axes.set_title(title)
        axes.set_ylabel(y_label)
        axes.set_xlabel(x_key or "record")
        if x_key == "step":
            add_epoch_axis(axes, records)
    return save(figure, png)


def draw_panel(axes: Axes, records: list[dict[str, Any]], x_key: str | None, series: list[tuple[str, str]]) -> None:
    drawn = False
    for key, label in series:
        points = [(record.get(x_key, index) if x_key else index, record[key])
                  for index, record in enumerate(records) if is_plottable(record.get(key))]
        if not points:
            continue
        x, y = zip(*points)
        # Evaluations are few and far apart: markers show where each one was taken.
        axes.plot(x, y, label=label, marker="o" if len(points) < 50 else None, markersize=3)
        drawn = True
    if drawn:
        axes.grid(alpha=0.3)
        axes.legend()
    else:
        axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes, color="gray")


def is_plottable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def add_epoch_axis(axes: Axes, records: list[dict[str, Any]]) -> None:
    """A secondary x axis in epochs, interpolated from the (step, epoch) pairs of the records."""
    pairs = sorted({(record["step"], record["epoch"]) for record in records
                    if is_plottable(record.get("step")) and is_plottable(record.get("epoch"))})
    if len({step for step, _ in pairs}) < 2:
        return
    steps, epochs = np.array(pairs, dtype=float).T
    if np.any(np.diff(epochs) < 0):
        return  # not monotonic (several runs appended to one log): no mapping to draw
    axes.secondary_xaxis(
        "top", functions=(lambda x: np.interp(x, steps, epochs), lambda e: np.interp(e, epochs, steps))
    ).set_xlabel("epoch")


# ---------------------------------------------------------------------------------------- confusion
def normalise_rows(confusion: torch.Tensor) -> torch.Tensor:
    """Each true class's row as fractions of its images; a class without images keeps a row of zeros."""
    counts = confusion.double()
    totals = counts.sum(dim=1, keepdim=True)
    return torch.where(totals > 0, counts / totals.clamp(min=1), torch.zeros_like(counts))


def confusion_size(num_classes: int) -> tuple[float, float]:
    """Inches: 0.6 per class between 6 and 20, plus room for the colour bar and the names."""
    side = min(max(2.0 + 0.6 * num_classes, 6.0), 20.0)
    return side + 2.0, side


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], png: str | os.PathLike) -> torch.Tensor:
    """The confusion matrix normalised per true class (rows sum to 1), with each class's image count.

    Returns the normalised matrix that was drawn."""
    confusion = torch.as_tensor(confusion).cpu()
    num_classes = len(classes)
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"a {num_classes}-class confusion matrix must be ({num_classes}, {num_classes}), "
                         f"got {tuple(confusion.shape)}")
    normalised = normalise_rows(confusion)
    totals = confusion.sum(dim=1).tolist()
    accuracy = 100.0 * float(confusion.diagonal().sum()) / max(int(confusion.sum()), 1)

    figure = Figure(figsize=confusion_size(num_classes), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(normalised.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="fraction of the true class", shrink=0.8)
    axes.set_title(f"confusion matrix, normalised per true class\n{int(confusion.sum())} images, "
                   f"top-1 {accuracy:.2f}%")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class (images)")
    if num_classes <= LABEL_UP_TO:
        ticks = range(num_classes)
        axes.set_xticks(ticks, [str(name) for name in classes], rotation=45, ha="right")
        axes.set_yticks(ticks, [f"{name} ({total})" for name, total in zip(classes, totals)])
    if num_classes <= ANNOTATE_UP_TO:
        annotate_cells(axes, confusion, normalised)
    save(figure, png)
    return normalised


def annotate_cells(axes: Axes, confusion: torch.Tensor, normalised: torch.Tensor) -> None:
    """Percent of the row and raw count in every non-empty cell, white on the dark ones."""
    size = 8 if len(confusion) <= 12 else 6
    for row in range(len(confusion)):
        for column in range(len(confusion)):
            count = int(confusion[row, column])
            if count == 0:
                continue
            fraction = float(normalised[row, column])
            axes.text(column, row, f"{100 * fraction:.0f}%\n{count}", ha="center", va="center", fontsize=size,
                      color="white" if fraction > 0.5 else "black")


# -------------------------------------------------------------------------------------- predictions
def predictions_grid(count: int) -> tuple[int, int]:
    """(rows, columns): rows of 8, wider than tall as screens are; 32 images make 4 full rows."""
    columns = min(8, max(1, count))
    return math.ceil(count / columns), columns


def plot_predictions(
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    predictions: torch.Tensor | Sequence[int],
    probabilities: torch.Tensor | Sequence[float],
    classes: Sequence[str],
    png: str | os.PathLike,
) -> Path:
    """A grid of uint8 images (B, C, H, W) titled with the predicted class, its probability and the
    true class; wrong predictions are titled and framed in red.

    `probabilities` holds the predicted class's probability per image, or (B, classes) of them all."""
    images = torch.as_tensor(images).cpu()
    labels, predictions = torch.as_tensor(labels).tolist(), torch.as_tensor(predictions).tolist()
    probabilities = torch.as_tensor(probabilities).float().cpu()
    if probabilities.ndim == 2:
        probabilities = probabilities.gather(1, torch.as_tensor(predictions).view(-1, 1)).squeeze(1)
    rows, columns = predictions_grid(len(images))
    figure = Figure(figsize=(1.8 * columns, 2.1 * rows + 0.4), layout="constrained")
    correct = sum(label == prediction for label, prediction in zip(labels, predictions))
    figure.suptitle(f"predictions: {correct} of {len(images)} correct (red: wrong)")
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for index, axes in enumerate(grid):
        if index >= len(images):
            axes.set_axis_off()
            continue
        show_image(axes, images[index])
        wrong = labels[index] != predictions[index]
        colour = WRONG_COLOUR if wrong else RIGHT_COLOUR
        axes.set_title(f"{classes[predictions[index]]} {float(probabilities[index]):.0%}\n"
                       f"true: {classes[labels[index]]}", fontsize=8, color=colour)
        for spine in axes.spines.values():
            spine.set_visible(wrong)
            spine.set_color(WRONG_COLOUR)
            spine.set_linewidth(3)
    return save(figure, png)


def show_image(axes: Axes, image: torch.Tensor) -> None:
    """(C, H, W) uint8, one or three channels, without ticks."""
    if image.shape[0] == 1:
        axes.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
    else:
        axes.imshow(image[:3].permute(1, 2, 0).numpy())
    axes.set_xticks([])
    axes.set_yticks([])


# ----------------------------------------------------------------------------------- reconstructions
RECONSTRUCTION_ROWS = ("original", "masked", "reconstruction")
RECONSTRUCTION_CELL = 1.6  # inches per image
MASKED_GREY = 0.5  # the colour masked pixels are shown in, on the 0..1 scale


def reconstruction_size(count: int) -> tuple[float, float]:
    """Inches of the reconstruction grid: one column per image, three rows, a line for the title."""
    return RECONSTRUCTION_CELL * count + 0.4, RECONSTRUCTION_CELL * len(RECONSTRUCTION_ROWS) + 0.5


def to_display(images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """Normalised (B, C, H, W) -> 0..1 pixels: undo (x - mean) / std per channel, then clip."""
    images = images.detach().float().cpu()
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        images = images * torch.as_tensor(std, dtype=torch.float32).view(shape) + torch.as_tensor(
            mean, dtype=torch.float32).view(shape)
    return images.clamp(0.0, 1.0)


def plot_reconstructions(
    images: torch.Tensor,
    mask: torch.Tensor,
    reconstructions: torch.Tensor,
    png: str | os.PathLike,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_images: int = 8,
    title: str | None = None,
) -> Path:
    """SimMIM's picture: one column per image, rows original / masked / reconstruction.

    `images` and `reconstructions` are (B, C, H, W) in the same space (e.g. `SimMIM.reconstruct`'s
    output for `images`), normalised with per-channel `mean` and `std` (pass them to undo it; without
    them the values are taken as 0..1 pixels). `mask` is (B, h, w) at token or mask-patch resolution,
    1 = masked. The masked row shows masked pixels grey; the reconstruction row shows the prediction
    on masked pixels and the original elsewhere, since only masked pixels are trained.
    The PNG is `reconstruction_size(columns)` inches at DPI dots per inch."""
    count = min(len(images), max_images)
    if count < 1:
        raise ValueError("plot_reconstructions needs at least one image")
    originals = to_display(images[:count], mean, std)
    predicted = to_display(reconstructions[:count], mean, std)
    if predicted.shape != originals.shape:
        raise ValueError(f"reconstructions {tuple(predicted.shape)} must have the shape of the images "
                         f"{tuple(originals.shape)}")
    mask = torch.as_tensor(mask[:count]).detach().cpu()
    height, width = originals.shape[-2:]
    if mask.ndim != 3 or height % mask.shape[1] or width % mask.shape[2] or height // mask.shape[1] != width // mask.shape[2]:
        raise ValueError(f"the mask (B, h, w) must divide the {height}x{width} images evenly, got {tuple(mask.shape)}")
    scale = height // mask.shape[1]
    masked = mask.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2).unsqueeze(1).bool()  # (B, 1, H, W)
    rows = (originals, torch.where(masked, MASKED_GREY, originals), torch.where(masked, predicted, originals))

    figure = Figure(figsize=reconstruction_size(count), layout="constrained")
    masked_share = float(masked.float().mean())
    figure.suptitle(title or f"SimMIM reconstructions ({masked_share:.0%} of pixels masked)")
    grid = figure.subplots(len(RECONSTRUCTION_ROWS), count, squeeze=False)
    for row, (name, pictures) in enumerate(zip(RECONSTRUCTION_ROWS, rows)):
        for column in range(count):
            axes = grid[row, column]
            picture = pictures[column]
            if picture.shape[0] == 1:
                axes.imshow(picture[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axes.imshow(picture[:3].permute(1, 2, 0).numpy())
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(name)
    return save(figure, png)
