"""The metrics log of a run: one JSON object per line in metrics.jsonl, and TensorBoard scalars.

Records are flat dicts. The training loop writes `step` (optimizer steps so far) in every record,
`epoch`, and either `train_loss`, `lr`, `images_per_second` or `eval_loss`, `eval_top1`, `eval_top5`
(percent); `swinv2.plots.plot_curves` draws those names. Each line is flushed as it is written,
so `tail -f` and a crashed run both see every record logged so far."""
from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Any

import torch

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    """Appends records to `run_dir`/metrics.jsonl and, when tensorboard is installed, writes every
    numeric field as a scalar at the record's `step` to `run_dir`/tensorboard. A missing or broken
    tensorboard only turns the scalars off: it never stops a run."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_NAME
        self.records = 0
        self.file = open(self.path, "a", encoding="utf-8")
        self.writer = open_summary_writer(self.run_dir / TENSORBOARD_DIR) if tensorboard else None
        # Where the event files are, for `tensorboard --logdir`; None when none are written.
        self.tensorboard_dir = self.run_dir / TENSORBOARD_DIR if self.writer is not None else None

    def log(self, record: dict[str, Any]) -> None:
        record = {key: plain(value) for key, value in record.items()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            step = record.get("step", self.records)
            for key, value in record.items():
                if key != "step" and is_number(value):
                    self.writer.add_scalar(key, value, global_step=step)
            self.writer.flush()
        self.records += 1

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def open_summary_writer(log_dir: Path) -> Any:
    """A TensorBoard SummaryWriter, or None when tensorboard cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it, naming tensorboard, when the package is missing
        return None
    return SummaryWriter(log_dir=str(log_dir))


def plain(value: Any) -> Any:
    """Tensors and numpy scalars as the Python numbers json can write."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()  # numpy scalar
    return value


def is_number(value: Any) -> bool:
    # bool is an int in Python, but a flag plotted as 0/1 over time says nothing.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line cut short by a crash (the last one) is ignored."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
