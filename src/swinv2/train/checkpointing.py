"""Training checkpoints: everything a run needs to continue exactly where it stopped.

    RUN_DIR/checkpoints/
      step-00001200.pt   one file per save, the newest `keep_last` kept
      latest.json        {"file": "step-00001200.pt", "step": 1200}: the newest complete save
      best.pt            a hard link to (or copy of) the save with the best evaluation so far

A checkpoint file is one `torch.save` of plain containers and tensors, read back with
weights_only=True (no pickled code):

    format, version      "swinv2-training-checkpoint", 1
    step                 optimizer steps done
    metadata             what must match to resume (the resolved configuration, the dataset's size
                         and classes, the number of processes) and the loop's position
    <name>               the state dict of each stateful object the loop passes: "model" (the bare
                         model's tensors, so `model.init_from` and `swinv2 convert` read the file as a
                         checkpoint), "optimizer", "schedule", "scaler", "ema", "rng", ...

The manager knows nothing about classifiers: a loop hands it a mapping of objects with state_dict()
and load_state_dict(), so pre-training reuses it as it is. Each file is written through
`atomic_path` (temporary file, fsync, rename), the pointer after the file, and old files are deleted
only after the pointer names the new one: a process killed at any moment leaves the previous
checkpoint loadable, and a failed write (a full disk) leaves it untouched."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..checkpoints.io import atomic_path, read_torch, sniff, write_json, write_torch
from ..errors import CheckpointError
from .distributed import Distributed

CHECKPOINT_DIR = "checkpoints"
FORMAT = "swinv2-training-checkpoint"
VERSION = 1
LATEST_NAME = "latest.json"
BEST_NAME = "best.pt"
STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


def step_file_name(step: int) -> str:
    return f"step-{step:08d}.pt"


# ------------------------------------------------------------------------------------------------ RNG
def capture_rng() -> dict[str, Any]:
    """Python's, NumPy's and torch's (CPU and every GPU) generator states, as tensors and plain values."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["numpy"]
    np.random.set_state({
        "bit_generator": saved["bit_generator"],
        "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]},
        "has_gauss": saved["has_gauss"],
        "gauss": saved["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomState:
    """Every process's random generators: augmentation, drop path and Mixup draw from torch's global
    generator, each process from its own stream, so all of them are saved and each gets its own back."""

    def __init__(self, distributed: Distributed) -> None:
        self.distributed = distributed

    def state_dict(self) -> dict[str, Any]:
        return {"processes": self.distributed.gather(capture_rng())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        processes = state["processes"]
        if len(processes) != self.distributed.world_size:
            raise CheckpointError(
                f"the checkpoint holds the random state of {len(processes)} processes, this run has "
                f"{self.distributed.world_size}: resume with the same number of processes"
            )
        restore_rng(processes[self.distributed.rank])


# -------------------------------------------------------------------------------------- compatibility
def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"overrides": {"depths": [2]}}} -> {"model.overrides.depths": [2]}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def differences(saved: Mapping[str, Any], current: Mapping[str, Any], ignored: frozenset[str] = frozenset()) -> list[str]:
    """"key (checkpoint A, now B)" for every field that differs, nested mappings compared field by field."""
    saved_flat, current_flat = flatten(saved), flatten(current)
    found = []
    for key in sorted(set(saved_flat) | set(current_flat)):
        if key in ignored:
            continue
        before, after = saved_flat.get(key, "unset"), current_flat.get(key, "unset")
        if before != after:
            found.append(f"{key} (checkpoint {before!r}, now {after!r})")
    return found


def check_compatible(checkpoint: Mapping[str, Any], expected: Mapping[str, Any], path: Path,
                     ignored: frozenset[str] = frozenset()) -> None:
    """CheckpointError naming every field of the checkpoint's metadata["compatibility"] that differs."""
    found = differences(checkpoint["metadata"]["compatibility"], expected, ignored)
    if found:
        raise CheckpointError(
            f"cannot resume from {path}: this run differs from the checkpoint's in {len(found)} field(s): "
            f"{'; '.join(found)}. Resume with the checkpoint's settings (`swinv2 train --resume DIR` without a "
            f"CONFIG uses its configuration), or start a new run from its weights with model.init_from={path}"
        )


# ------------------------------------------------------------------------------------------- finding
def checkpoint_directory(path: str | os.PathLike) -> Path:
    """A run directory, its checkpoints/ directory, or a checkpoint file's directory."""
    path = Path(path)
    if path.is_file():
        return path.parent
    return path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path


def step_files(directory: Path) -> list[Path]:
    """step-N.pt files, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), entry) for entry in directory.iterdir() if (match := STEP_FILE.match(entry.name))]
    return [entry for _, entry in sorted(found, reverse=True)]


def candidates(directory: Path) -> list[Path]:
    """Files to try, best first: the one latest.json names, then the step files newest first."""
    files = step_files(directory)
    try:
        named = directory / json.loads((directory / LATEST_NAME).read_text())["file"]
    except (OSError, ValueError, KeyError, TypeError):
        named = None  # no pointer, or one cut short: the step files alone decide
    if named is not None and named in files:
        files.remove(named)
        files.insert(0, named)
    return files


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """One training checkpoint, with weights_only=True; CheckpointError for anything else."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}: check the path")
    loaded = read_torch(path, sniff(path))
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a swinv2 training checkpoint (no {FORMAT!r} format mark): to start a new run from "
            f"its weights pass it as model.init_from instead of --resume"
        )
    if loaded.get("version") != VERSION:
        raise CheckpointError(f"{path} is a version {loaded.get('version')} training checkpoint; this swinv2 reads "
                              f"version {VERSION}")
    return loaded


def load_latest(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The newest complete checkpoint under `path` (a run directory, its checkpoints/, or a file).

    A file that does not load (cut short by a crash outside our writer, a bad disk) is skipped with a
    warning in favour of the next older one; a directory without any complete checkpoint is an error
    that says what is there."""
    path = Path(path)
    if path.is_file():
        return path, read_checkpoint_file(path)
    directory = checkpoint_directory(path)
    if not directory.is_dir():
        raise CheckpointError(f"cannot resume: {path} does not exist; pass a run directory, its checkpoints/ "
                              "directory or a checkpoint file")
    problems = []
    for candidate in candidates(directory):
        try:
            return candidate, read_checkpoint_file(candidate)
        except CheckpointError as error:
            problems.append(str(error))
            warnings.warn(f"skipping checkpoint {candidate}: {error}", stacklevel=2)
    leftovers = sorted(entry.name for entry in directory.iterdir() if entry.name.endswith(".tmp"))
    found = (f"{len(problems)} unreadable checkpoint file(s)" if problems else
             f"only {len(leftovers)} temporary file(s) of interrupted saves ({', '.join(leftovers[:3])})" if leftovers
             else "no step-N.pt files")
    raise CheckpointError(
        f"no complete checkpoint in {directory}: {found}. Nothing to resume from; start the run without "
        "--resume (or point --resume at another run directory)"
    )


# -------------------------------------------------------------------------------------------- saving
@dataclass
class TrainingProgress:
    """Where a training loop stands; saved in every checkpoint as "progress"."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (from 0)
    batches_done: int = 0  # batches of that epoch consumed; the loader skips them on resume
    images_seen: int = 0
    skipped_images: int = 0

    def state_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for item in dataclasses.fields(self):
            setattr(self, item.name, int(state[item.name]))


class CheckpointManager:
    """Saves training state every time the loop asks, keeping the newest `keep_last` files and the best.

    `save` gathers the state on every process (under FSDP that is a collective) and writes on the main
    process only; a failed write raises the same CheckpointError on every process."""

    def __init__(self, directory: str | os.PathLike, keep_last: int, distributed: Distributed | None = None) -> None:
        if keep_last < 1:
            raise CheckpointError(f"keep_last must be at least 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.distributed = distributed or Distributed()
        self.best_value: float | None = None
        self.last_saved: Path | None = None  # named in messages when a run stops

    def state_dict(self) -> dict[str, Any]:
        """The best evaluation so far, so that a resumed run keeps comparing against it."""
        return {"best_value": self.best_value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value = state["best_value"]

    def save(self, step: int, stateful: Mapping[str, Stateful | None], metadata: Mapping[str, Any],
             metric: float | None = None) -> Path:
        """Write step-`step`.pt; when `metric` (higher is better) beats every earlier one, also best.pt."""
        path = self.directory / step_file_name(step)
        is_best = metric is not None and (self.best_value is None or metric > self.best_value)
        previous_best = self.best_value
        if is_best:
            self.best_value = metric  # before the states are taken: this manager may be one of them
        states = {name: item.state_dict() for name, item in stateful.items() if item is not None}
        error = None
        if self.distributed.is_main:
            payload = {"format": FORMAT, "version": VERSION, "step": step, "metadata": dict(metadata), **states}
            try:
                self.write(path, payload, is_best)
            except OSError as failure:
                error = self.describe_failure(path, failure)
        error = self.distributed.broadcast(error)
        if error is not None:
            self.best_value = previous_best
            raise CheckpointError(error)
        self.last_saved = path
        return path

    def write(self, path: Path, payload: Mapping[str, Any], is_best: bool) -> None:
        write_torch(payload, path)
        write_json({"file": path.name, "step": payload["step"]}, self.directory / LATEST_NAME)
        if is_best:
            link_atomically(path, self.directory / BEST_NAME)
        self.prune()

    def prune(self) -> None:
        """Delete all but the newest keep_last step files (best.pt is its own link and stays)."""
        for old in step_files(self.directory)[self.keep_last:]:
            old.unlink(missing_ok=True)

    def describe_failure(self, path: Path, failure: OSError) -> str:
        previous = next((candidate for candidate in candidates(self.directory) if candidate != path), None)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        cause = "the disk is full" if failure.errno in (errno.ENOSPC, errno.EDQUOT) else "the write failed"
        return (f"could not save checkpoint {path}: {cause} ({failure.strerror or failure}); {kept}. Free space "
                "(or point run.output_dir elsewhere, or lower run.keep_last) and resume with --resume")


def link_atomically(source: Path, destination: Path) -> None:
    """`destination` becomes another name of `source` (a copy where hard links are not possible)."""
    with atomic_path(destination) as temporary:
        temporary.unlink()
        try:
            os.link(source, temporary)
        except OSError:
            temporary.write_bytes(source.read_bytes())
