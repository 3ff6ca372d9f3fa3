"""Checkpoint writes are atomic: a save killed with SIGKILL at any moment, or failing on a full disk,
leaves the previous checkpoint loadable; keep_last and best.pt behave as documented."""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from swinv2.errors import CheckpointError
from swinv2.train.checkpointing import (
    BEST_NAME,
    CheckpointManager,
    load_latest,
    step_files,
)


class Holder:
    """A stateful object as the loop passes them: one tensor filled with the step it was saved at."""

    def __init__(self, size: int = 1000) -> None:
        self.tensor = torch.zeros(size)

    def state_dict(self):
        return {"tensor": self.tensor.clone()}

    def load_state_dict(self, state):
        self.tensor = state["tensor"]


def save(manager: CheckpointManager, holder: Holder, step: int, metric: float | None = None):
    holder.tensor.fill_(step)
    return manager.save(step, {"weights": holder}, {"note": "test"}, metric)


# Saves 4 MB checkpoints in a loop, as fast as it can, until killed.
SAVER = textwrap.dedent("""
    import sys, torch
    from swinv2.train.checkpointing import CheckpointManager
    class Holder:
        def state_dict(self):
            return {"tensor": torch.full((1_000_000,), float(step))}
    manager, holder = CheckpointManager(sys.argv[1], keep_last=2), Holder()
    for step in range(1, 100_000):
        manager.save(step, {"weights": holder}, {})
""")


@pytest.mark.slow
def test_atomic_save_survives_sigkill_at_random_moments(tmp_path):
    generator = random.Random(0)
    directories = [tmp_path / f"run{index}" for index in range(4)]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    savers = [subprocess.Popen([sys.executable, "-c", SAVER, str(directory)], env=environment) for directory in directories]
    try:
        for directory, saver in zip(directories, savers):
            deadline = time.monotonic() + 120
            while not (directory / "latest.json").exists():  # the first save is complete
                assert saver.poll() is None and time.monotonic() < deadline, "the saving process did not start"
                time.sleep(0.02)
            time.sleep(generator.uniform(0.0, 0.6))
            saver.send_signal(signal.SIGKILL)
            saver.wait()
            path, checkpoint = load_latest(directory)
            step = checkpoint["step"]
            assert path.name == f"step-{step:08d}.pt" and step >= 1
            assert torch.equal(checkpoint["weights"]["tensor"], torch.full((1_000_000,), float(step)))
            assert len(step_files(directory)) <= 3  # keep_last 2, plus at most one written before the pruning
    finally:
        for saver in savers:
            if saver.poll() is None:
                saver.kill()
                saver.wait()


def test_atomic_save_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    manager, holder = CheckpointManager(tmp_path, keep_last=3), Holder()
    first = save(manager, holder, 1, metric=50.0)

    def full_disk(payload, path, *_, **__):
        with open(path, "wb") as file:
            file.write(b"PK\x03\x04 the first bytes")  # what a write cut short by ENOSPC leaves
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as error:
        save(manager, holder, 2, metric=60.0)
    message = str(error.value)
    assert "step-00000002.pt" in message and "disk is full" in message and "No space left on device" in message
    assert f"the previous checkpoint {first} is intact" in message and "--resume" in message
    monkeypatch.undo()

    assert sorted(entry.name for entry in tmp_path.iterdir()) == [BEST_NAME, "latest.json", first.name]  # no temp files
    path, checkpoint = load_latest(tmp_path)
    assert path == first and torch.equal(checkpoint["weights"]["tensor"], torch.full((1000,), 1.0))
    assert manager.best_value == 50.0  # the failed save did not count as the best


def test_keep_last_and_best(tmp_path):
    manager, holder = CheckpointManager(tmp_path, keep_last=2), Holder()
    for step, metric in zip(range(1, 6), (10.0, 80.0, None, 30.0, 70.0)):
        save(manager, holder, step, metric)
    assert [path.name for path in step_files(tmp_path)] == ["step-00000005.pt", "step-00000004.pt"]
    best = torch.load(tmp_path / BEST_NAME, weights_only=True)
    assert best["step"] == 2 and torch.equal(best["weights"]["tensor"], torch.full((1000,), 2.0))
    path, latest = load_latest(tmp_path)
    assert path.name == "step-00000005.pt" and latest["step"] == 5

    # A resumed manager keeps comparing against the best so far.
    resumed = CheckpointManager(tmp_path, keep_last=2)
    resumed.load_state_dict(manager.state_dict())
    save(resumed, holder, 6, metric=75.0)
    assert torch.load(tmp_path / BEST_NAME, weights_only=True)["step"] == 2
