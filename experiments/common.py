"""What every experiment shares: quiet runs, mean ± spread, and the machine line its docs page names."""
from __future__ import annotations

import contextlib
import platform
import statistics
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send a run's own printing (resolved configuration, progress lines) to its log file, and the library's
    expected warnings (a SimMIM checkpoint's missing head, a re-initialised head) with it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as file, contextlib.redirect_stdout(file), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def spread(values: list[float]) -> float:
    """Sample standard deviation; 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {spread(values):.2f}"


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
