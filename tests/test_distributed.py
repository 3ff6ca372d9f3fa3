"""Multi-process training: `torchrun --nproc_per_node 2 -m swinv2 train ...` on gloo (CPU) ends with the
weights of one process trained on the same global batch (2 x 8 images vs 1 x 16), to float tolerance.

The per-process augmentation streams differ by design, so randomness is switched off here: crops of
the whole image, no flips, erasing, mixing or drop path. The model has no BatchNorm, so a batch
split over processes computes what the whole batch does, up to the order of float sums."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_resume import FASHION_MNIST, TINY_MODEL

from swinv2.train.checkpointing import load_latest
from swinv2.train.config import load_config
from swinv2.train.loop import train

DETERMINISTIC = [
    *FASHION_MNIST, *TINY_MODEL,
    "augment.scale=[1.0, 1.0]", "augment.ratio=[1.0, 1.0]", "augment.hflip=0.0", "augment.randaugment=null",
    "augment.color_jitter=0.0", "augment.random_erasing=0.0", "augment.mixup=0.0", "augment.cutmix=0.0",
    "model.overrides.drop_path_rate=0.0", "optim.base_lr=0.1", "schedule.epochs=2", "schedule.warmup_epochs=0.5",
    "run.precision=fp32", "run.device=cpu", "run.log_every=1",
]


def torchrun(tmp_path, name: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "swinv2", "train", "--no-progress", *DETERMINISTIC, "run.batch_size=8",
               f"run.output_dir={tmp_path}", f"run.name={name}", *extra]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def assert_close_states(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key, tensor in first.items():
        torch.testing.assert_close(tensor, second[key], rtol=1e-5, atol=1e-5, msg=key)


def single_process(tmp_path):
    return train(load_config(None, [*DETERMINISTIC, "run.batch_size=16", f"run.output_dir={tmp_path}", "run.name=one"]))


@pytest.mark.slow
def test_distributed_ddp_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    result = torchrun(tmp_path, "ddp")
    assert "2 processes (ddp)" in result.stdout
    assert result.stdout.count("test accuracy:") == 1  # only rank 0 prints
    one = single_process(tmp_path)
    _, two_checkpoint = load_latest(tmp_path / "ddp")
    _, one_checkpoint = load_latest(one.run_dir)
    assert two_checkpoint["step"] == one_checkpoint["step"] == 10
    assert_close_states(two_checkpoint["model"], one_checkpoint["model"])
    # The weights moved between the epochs' checkpoints: equal at step 10 is not equal at initialisation.
    epoch_one = torch.load(one.run_dir / "checkpoints" / "step-00000005.pt", weights_only=True)["model"]
    assert not torch.allclose(epoch_one["head.weight"], one_checkpoint["model"]["head.weight"], atol=1e-3)


@pytest.mark.slow
def test_distributed_fsdp_two_processes_equal_one_and_resume_sharded(tmp_path):
    """FSDP2 (fully_shard) on gloo: the sharded run equals the single process, and its checkpoints hold
    full tensors, so a sharded run resumes from them."""
    torchrun(tmp_path, "fsdp", "run.distributed=fsdp", "run.stop_after_steps=4")
    result = torchrun(tmp_path, "fsdp", "run.distributed=fsdp", f"run.resume={tmp_path / 'fsdp'}")
    assert "resumed from" in result.stdout and "2 processes (fsdp)" in result.stdout
    one = single_process(tmp_path)
    _, sharded = load_latest(tmp_path / "fsdp")
    _, whole = load_latest(one.run_dir)
    assert sharded["step"] == whole["step"] == 10
    assert_close_states(sharded["model"], whole["model"])
