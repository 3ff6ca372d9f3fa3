"""The NaN guard: a non-finite loss stops the run before its step, with a message naming the last good
checkpoint, and that checkpoint holds exactly the weights a run stopped cleanly at the same step has."""
from __future__ import annotations

import pytest
import torch
from test_resume import fashion_config

from swinv2.train import loop
from swinv2.train.checkpointing import load_latest, step_files
from swinv2.train.loop import NonFiniteLossError, train


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    reference = train(fashion_config(tmp_path, "reference", "run.checkpoint_every=1", "run.stop_after_steps=7"))

    original, calls = loop.soft_target_cross_entropy, []

    def poisoned_loss(logits, targets):  # the 8th batch's loss is NaN, as a diverging run's would be
        calls.append(1)
        loss = original(logits, targets)
        return loss * float("nan") if len(calls) == 8 else loss

    monkeypatch.setattr(loop, "soft_target_cross_entropy", poisoned_loss)
    with pytest.raises(NonFiniteLossError) as error:
        train(fashion_config(tmp_path, "diverged", "run.checkpoint_every=1"))
    message = str(error.value)
    last_good = tmp_path / "diverged" / "checkpoints" / "step-00000007.pt"
    assert "loss is nan at step 8" in message and str(last_good) in message and "optim.base_lr" in message
    assert isinstance(error.value, FloatingPointError)

    # Nothing was saved after the NaN, and the last checkpoint loads and equals a clean stop after step 7.
    assert step_files(last_good.parent)[0] == last_good
    path, checkpoint = load_latest(tmp_path / "diverged")
    assert path == last_good and checkpoint["step"] == 7
    _, expected = load_latest(reference.run_dir)
    for name in ("model", "ema"):
        assert checkpoint[name].keys() == expected[name].keys()
        for key, tensor in checkpoint[name].items():
            assert torch.isfinite(tensor).all() and torch.equal(tensor, expected[name][key]), f"{name}.{key}"
