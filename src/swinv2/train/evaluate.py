"""Evaluation of a classifier over a loader: loss, top-1 and top-5 accuracy, per-class accuracy, confusion matrix.

Accuracies are percentages (0 to 100), as the official code and timm print them. Everything is
counted in integers (the confusion matrix and the top-k hits) and divided once at the end, so the
result does not depend on how the images were split into batches."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import DataError, InputError
from .precision import autocast

TOP_K = 5


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per image, in nats
    top1: float  # percent of images whose highest logit is the true class
    top5: float  # percent with the true class among the top min(5, classes) logits
    per_class: list[float]  # percent correct among each true class's images; nan for a class with none
    confusion: torch.Tensor  # (classes, classes) int64: row = true class, column = predicted class
    count: int  # images evaluated
    skipped: int = 0  # unreadable images the loader left out
    topk: int = TOP_K  # the k of `top5`: fewer than 5 when there are fewer classes
    class_counts: list[int] = field(default_factory=list)  # images of each true class

    def to_dict(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Plain JSON values; nan (a class without images) becomes null, which JSON can hold."""
        values: dict[str, Any] = {
            "loss": self.loss, "top1": self.top1, "top5": self.top5, "topk": self.topk, "count": self.count,
            "skipped": self.skipped, "per_class": [json_number(value) for value in self.per_class],
            "class_counts": self.class_counts, "confusion": self.confusion.tolist(),
        }
        if classes is not None:
            values["classes"] = list(classes)
        return values


def json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Tally:
    """Running integer counts over batches: the confusion matrix, top-k hits and summed loss."""

    def __init__(self, num_classes: int, topk: int = TOP_K) -> None:
        self.num_classes = num_classes
        self.topk = min(topk, num_classes)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.topk_hits = 0
        self.loss_sum = 0.0
        self.skipped = 0

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return percent(int(self.confusion.diagonal().sum()), self.count)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        check_batch(logits, labels, self.num_classes)
        logits, labels = logits.float(), labels.long()
        self.loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        predictions = logits.argmax(dim=-1)
        # One bincount over true * K + predicted fills the whole matrix at once.
        cells = torch.bincount(labels * self.num_classes + predictions, minlength=self.num_classes**2)
        self.confusion += cells.view(self.num_classes, self.num_classes).cpu()
        top = logits.topk(self.topk, dim=-1).indices
        self.topk_hits += int((top == labels.unsqueeze(-1)).any(dim=-1).sum())

    def result(self) -> EvalResult:
        count = self.count
        if count == 0:
            raise DataError("nothing to evaluate: the loader gave no images (check the dataset path and split)")
        correct = self.confusion.diagonal().tolist()
        totals = self.confusion.sum(dim=1).tolist()
        return EvalResult(
            loss=self.loss_sum / count,
            top1=self.top1,
            top5=percent(self.topk_hits, count),
            per_class=[percent(hits, total) if total else math.nan for hits, total in zip(correct, totals)],
            confusion=self.confusion.clone(),
            count=count,
            skipped=self.skipped,
            topk=self.topk,
            class_counts=totals,
        )


def percent(part: int, whole: int) -> float:
    return 100.0 * part / whole


def check_batch(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise InputError(
            f"the model gave logits of shape {tuple(logits.shape)}, expected (batch, {num_classes}): "
            "its class count differs from the dataset's"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"labels range from {int(labels.min())} to {int(labels.max())}, outside 0..{num_classes - 1}: "
            "the dataset has more classes than the model"
        )


def unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images, labels, skipped) from a swinv2.data Batch or a plain (images, labels) pair."""
    if hasattr(batch, "images"):
        return batch.images, batch.labels, int(getattr(batch, "skipped", 0))
    images, labels = batch[0], batch[1]
    return images, labels, 0


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
    device: str | torch.device,
    precision: str,
    num_classes: int,
    progress: bool | None = None,
    description: str = "eval",
    label_map: torch.Tensor | None = None,
) -> EvalResult:
    """Top-1/top-5, per-class accuracy, confusion matrix and mean loss of `model` over `loader`.

    The loader yields swinv2.data Batches or (images, labels) pairs; `preprocess` turns the images,
    moved to `device`, into model inputs (None: they already are). `precision` is auto, fp32, bf16 or fp16.
    The model runs in eval mode without gradients and is put back in the mode it was in.
    `progress`: None shows a tqdm bar only on a terminal, False never, True always.
    `label_map`: dataset label -> model output index (see `class_index_map`); None when they agree."""
    device = torch.device(device)
    tally = Tally(num_classes)
    was_training = model.training
    model.eval()
    bar = tqdm(loader, desc=description, unit="batch", leave=False, dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:
        with torch.no_grad():
            for batch in bar:
                images, labels, skipped = unpack(batch)
                tally.skipped += skipped
                if label_map is not None:
                    labels = label_map[labels]
                inputs = images.to(device, non_blocking=True)
                if preprocess is not None:
                    inputs = preprocess(inputs)
                with autocast(device, precision):
                    logits = model(inputs)
                tally.update(logits, labels.to(device))
                bar.set_postfix(top1=f"{tally.top1:.2f}%" if tally.count else "-", refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    return tally.result()


def class_index_map(dataset_classes: Sequence[str], model_classes: Sequence[str]) -> torch.Tensor | None:
    """The model's output index of each dataset class, matched by name; None when the lists are equal.

    A test folder may hold only some of the classes, and then its sorted sub-folders number them
    differently from the training set: comparing indices would score the wrong classes."""
    if list(dataset_classes) == list(model_classes):
        return None
    unknown = [name for name in dataset_classes if name not in model_classes]
    if unknown:
        raise DataError(
            f"the dataset has classes the model was not trained on: {first_names(unknown)}; "
            f"the model knows {first_names(model_classes)}"
        )
    return torch.tensor([list(model_classes).index(name) for name in dataset_classes])


def first_names(names: Sequence[str], most: int = 10) -> str:
    return ", ".join(map(repr, names[:most])) + (" ..." if len(names) > most else "")


def format_report(result: EvalResult, classes: Sequence[str]) -> str:
    """Top-1/top-5 and loss, then a table of each class's accuracy and image count."""
    width = max([len("class"), *(len(name) for name in classes)])
    lines = [
        f"top-1: {result.top1:.2f}%  top-{result.topk}: {result.top5:.2f}%  loss: {result.loss:.4f}  "
        f"on {result.count} images" + (f" ({result.skipped} unreadable skipped)" if result.skipped else ""),
        "",
        f"{'class':<{width}}  {'accuracy':>8}  {'correct':>7}  {'images':>6}",
    ]
    for index, name in enumerate(classes):
        accuracy, total = result.per_class[index], result.class_counts[index]
        shown = f"{accuracy:7.2f}%" if total else f"{'-':>8}"
        lines.append(f"{name:<{width}}  {shown}  {int(result.confusion[index, index]):>7}  {total:>6}")
    return "\n".join(lines)
