"""Exact resume: a run interrupted mid-epoch and resumed from its last checkpoint ends with the same
bits as a run that was never interrupted (model, optimizer, schedule, EMA, random generators), and a
checkpoint that does not fit the run is refused with the fields that differ.

The runs are tiny (80 Fashion-MNIST images, a 2-block model at 16x16) with every source of randomness
on: random resized crops, flips, random erasing, Mixup/CutMix and drop path all draw from the global
generators that a checkpoint must restore."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from swinv2.cli import main
from swinv2.errors import CheckpointError
from swinv2.train import loop
from swinv2.train.checkpointing import load_latest
from swinv2.train.config import load_config
from swinv2.train.loop import train
from swinv2.train.metrics import read_metrics

TINY_MODEL = [
    "model.overrides.img_size=16", "model.overrides.patch_size=4", "model.overrides.window_size=4",
    "model.overrides.embed_dim=16", "model.overrides.depths=[2]", "model.overrides.num_heads=[1]",
]
# 80 images in batches of 16: 5 optimizer steps an epoch, 10 in the 2 epochs.
FASHION_MNIST = [
    "data.dataset=fashion-mnist", "data.max_train_images=80", "data.max_val_images=32", "data.channels=1",
    "data.crop_pct=1.0", "data.num_workers=0",
]
RANDOM_AUGMENTATION = [
    "augment.scale=[0.5, 1.0]", "augment.hflip=0.5", "augment.randaugment=null", "augment.color_jitter=0.0",
    "augment.random_erasing=0.5", "augment.mixup=0.8", "augment.cutmix=1.0", "model.overrides.drop_path_rate=0.2",
]


def fashion_config(tmp_path: Path, name: str, *extra: str):
    return load_config(None, [
        *FASHION_MNIST, *RANDOM_AUGMENTATION, *TINY_MODEL,
        "optim.base_lr=0.5", "schedule.epochs=2", "schedule.warmup_epochs=0.5", "run.batch_size=16",
        "run.precision=fp32", "run.ema_decay=0.9", "run.log_every=1", f"run.output_dir={tmp_path}", f"run.name={name}",
        *extra,
    ])


def assert_identical(first, second, where: str = "checkpoint") -> None:
    """Every tensor bit for bit (torch.equal), every other value ==, through nested dicts and lists."""
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and first.dtype == second.dtype, where
        assert torch.equal(first, second), f"{where} differs"
    elif isinstance(first, dict):
        assert set(first) == set(second), f"{where}: keys {set(first) ^ set(second)}"
        for key in first:
            assert_identical(first[key], second[key], f"{where}.{key}")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second)):
            assert_identical(a, b, f"{where}[{index}]")
    else:
        assert first == second, f"{where}: {first!r} != {second!r}"


def training_state(path: Path) -> dict:
    """A checkpoint without its metadata (which names the run directory)."""
    _, checkpoint = load_latest(path)
    return {key: value for key, value in checkpoint.items() if key != "metadata"}


class Interrupted(Exception):
    """Stands for a process killed mid-run."""


def interrupt_at_batch(monkeypatch, batch: int) -> None:
    """The loop's loss function raises on its `batch`-th call (from 1), as a crash in that step would."""
    original, calls = loop.soft_target_cross_entropy, []

    def loss(logits, targets):
        calls.append(1)
        if len(calls) == batch:
            raise Interrupted
        return original(logits, targets)

    monkeypatch.setattr(loop, "soft_target_cross_entropy", loss)


@pytest.mark.slow
def test_resume_after_a_crash_mid_epoch_is_bit_identical(tmp_path, monkeypatch):
    uninterrupted = train(fashion_config(tmp_path, "whole", "run.checkpoint_every=3"))
    assert uninterrupted.step == 10 and uninterrupted.completed

    with monkeypatch.context() as patch:
        interrupt_at_batch(patch, 9)  # during step 9: the last checkpoint is step 6, one batch into epoch 2
        with pytest.raises(Interrupted):
            train(fashion_config(tmp_path, "split", "run.checkpoint_every=3"))
    saved, checkpoint = load_latest(tmp_path / "split")
    assert saved.name == "step-00000006.pt" and checkpoint["progress"]["epoch"] == 1
    assert checkpoint["progress"]["batches_done"] == 1

    resumed = train(fashion_config(tmp_path, "split", "run.checkpoint_every=3", f"run.resume={tmp_path / 'split'}"))
    assert resumed.step == 10 and resumed.completed
    assert_identical(training_state(uninterrupted.checkpoint), training_state(resumed.checkpoint))
    assert (uninterrupted.model_dir / "model.safetensors").read_bytes() == (resumed.model_dir / "model.safetensors").read_bytes()
    # The records of the steps lost in the crash are logged once, by the resumed run, with the same values.
    whole = read_metrics(uninterrupted.run_dir / "metrics.jsonl")
    split = read_metrics(resumed.run_dir / "metrics.jsonl")
    drop_timing = [{key: value for key, value in record.items() if key != "images_per_second"} for record in whole]
    assert drop_timing == [{key: value for key, value in record.items() if key != "images_per_second"} for record in split]


def test_resume_with_accumulation_from_a_planned_stop_via_the_cli(tmp_path, capsys):
    """run.stop_after_steps stops mid-epoch (a time-limited job); `swinv2 train --resume DIR` without a
    config continues with the checkpoint's configuration. 2 micro-batches a step: 5 batches an epoch give
    2 steps, the fifth batch is left out of every epoch."""
    extra = ["optim.accumulation_steps=2", "schedule.epochs=3"]
    uninterrupted = train(fashion_config(tmp_path, "whole", *extra))
    assert uninterrupted.step == 6

    stopped = train(fashion_config(tmp_path, "split", *extra, "run.stop_after_steps=3"))
    assert not stopped.completed and stopped.model_dir is None and stopped.checkpoint.name == "step-00000003.pt"
    assert "--resume" in capsys.readouterr().out
    assert main(["train", "--no-progress", "--resume", str(stopped.run_dir)]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert_identical(training_state(uninterrupted.checkpoint), training_state(stopped.run_dir))


def test_resume_refuses_another_model_or_dataset_naming_the_fields(tmp_path):
    first = train(fashion_config(tmp_path, "first", "run.stop_after_steps=2"))
    changed = fashion_config(tmp_path, "first", f"run.resume={first.run_dir}", "model.overrides.embed_dim=32",
                             "data.max_train_images=64", "run.log_every=5")  # log_every may change
    with pytest.raises(CheckpointError) as error:
        train(changed)
    message = str(error.value)
    assert "model.overrides.embed_dim (checkpoint 16, now 32)" in message
    assert "data.max_train_images (checkpoint 80, now 64)" in message
    assert "dataset.train_images (checkpoint 80, now 64)" in message
    assert "log_every" not in message and "3 field(s)" in message


def test_resume_from_a_directory_without_a_complete_checkpoint_says_so(tmp_path, capsys):
    directory = tmp_path / "run" / "checkpoints"
    directory.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint .* no step-N.pt files"):
        load_latest(tmp_path / "run")
    (directory / ".step-00000004.pt.x1y2.tmp").write_bytes(b"PK\x03\x04 cut short")  # what a killed save leaves
    (directory / "latest.json").write_text(json.dumps({"file": "step-00000004.pt", "step": 4}))
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "no complete checkpoint in" in error and "temporary file" in error and "without --resume" in error
    with pytest.raises(CheckpointError, match="does not exist"):
        load_latest(tmp_path / "nowhere")
