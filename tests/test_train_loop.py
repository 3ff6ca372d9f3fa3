"""End-to-end training: `swinv2 train` on an image folder the test writes, then eval and predict on
what it saved. The data are two classes a model can only tell apart by learning (dark vs bright
images with noise), so the checks are behaviour: accuracy far above chance after a few steps."""
from __future__ import annotations

import json
import platform
import re

import numpy as np
import pytest
from PIL import Image

from swinv2.cli import main
from swinv2.train.artifacts import load_classifier
from swinv2.train.config import load_config
from swinv2.train.loop import train

TINY_MODEL = [
    "model.overrides.img_size=16", "model.overrides.patch_size=4", "model.overrides.window_size=4",
    "model.overrides.embed_dim=16", "model.overrides.depths=[1]", "model.overrides.num_heads=[1]",
    "model.overrides.drop_path_rate=0.0",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ with classes `dark` and `bright` (16x16 RGB PNGs), plus one corrupt file."""
    root = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    for split, count in (("train", 48), ("val", 16)):
        for name, level in (("dark", 60), ("bright", 190)):
            directory = root / split / name
            directory.mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(level + generator.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(directory / f"{index}.png")
    (root / "train" / "dark" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def folder_config(folder, tmp_path, *extra):
    return load_config(None, [
        "data.dataset=folder", f"data.train_path={folder / 'train'}", f"data.val_path={folder / 'val'}",
        "data.load_size=16", "data.crop_pct=1.0", "data.num_workers=0", "data.channels=3",
        "augment.randaugment=null", "augment.mixup=0.0", "augment.cutmix=0.0", "augment.random_erasing=0.0",
        "augment.color_jitter=0.0", "augment.scale=[0.8, 1.0]", "augment.label_smoothing=0.0",
        "optim.base_lr=4e-2", "optim.weight_decay=0.0", "schedule.epochs=6", "schedule.warmup_epochs=0.5",
        "run.batch_size=16", "run.precision=fp32", "run.log_every=1", f"run.output_dir={tmp_path}", "run.name=folder",
        *TINY_MODEL, *extra,
    ])


def test_training_learns_and_writes_everything(folder, tmp_path, capsys):
    result = train(folder_config(folder, tmp_path))
    output = capsys.readouterr().out
    assert result.test.top1 >= 90.0  # chance is 50%
    assert result.skipped_images >= 1 and "skipped" in output  # the corrupt PNG, counted in the summary
    # On the CPU the run has glibc keep the memory a step frees (tests/test_allocator.py measures what it does).
    assert ("glibc's malloc keeps freed memory" in output) == (platform.libc_ver()[0] == "glibc")
    assert re.search(r"^test accuracy: \d+\.\d\d% on 32 images, wall time \d+ s$", output, re.MULTILINE)
    run = tmp_path / "folder"
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "confusion.png", "predictions.png"):
        assert (run / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_top1" in record for record in records) and any("train_loss" in record for record in records)
    assert load_config(run / "config.yaml") == folder_config(folder, tmp_path)  # the saved config reproduces the run
    model, classes, preprocessing = load_classifier(run / "model")
    assert classes == ["bright", "dark"] and preprocessing["channels"] == 3


def test_schedule_follows_the_configured_warmup_and_cosine(folder, tmp_path):
    result = train(folder_config(folder, tmp_path, "schedule.epochs=2", "run.name=schedule"))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [record["lr"] for record in records if "lr" in record]
    # 96 images, batch 16, drop_last: 6 steps an epoch, 12 in all; peak 4e-2 * 16/512 = 1.25e-3.
    assert len(rates) == 12
    assert max(rates) == pytest.approx(4e-2 * 16 / 512, rel=1e-6)
    assert rates[0] < rates[2] and rates[-1] < rates[-3]  # warm-up rises, cosine falls


def test_cli_train_then_eval_and_predict(folder, tmp_path, capsys):
    arguments = ["train", "--no-progress", *[f"{o}" for o in [
        "data.dataset=folder", f"data.train_path={folder / 'train'}", f"data.val_path={folder / 'val'}",
        "data.load_size=16", "data.crop_pct=1.0", "data.num_workers=0", "augment.randaugment=null",
        "augment.mixup=0.0", "augment.cutmix=0.0", "augment.random_erasing=0.0", "augment.color_jitter=0.0",
        "optim.base_lr=4e-2", "schedule.epochs=4", "schedule.warmup_epochs=0.5", "run.batch_size=16", "run.precision=fp32",
        f"run.output_dir={tmp_path}", "run.name=cli", *TINY_MODEL]]]
    assert main(arguments) == 0
    assert "test accuracy:" in capsys.readouterr().out
    model_dir = tmp_path / "cli" / "model"
    assert main(["eval", str(model_dir), "--dataset", "folder", "--path", str(folder / "val"), "--no-progress",
                 "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "confusion.png").exists()
    capsys.readouterr()
    assert main(["predict", str(folder / "val" / "bright" / "0.png"), "--checkpoint", str(model_dir), "--topk", "1",
                 "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert "bright" in json.dumps(prediction) and "dark" not in json.dumps(prediction)


def test_bad_training_input_stops_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    assert main(["train", "data.dataset=folder", f"data.train_path={empty}", f"run.output_dir={tmp_path}"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["train", "optim.base_lr=fast"]) == 2
    assert "optim.base_lr" in capsys.readouterr().err


def test_fine_tune_from_a_checkpoint_at_another_resolution(folder, tmp_path, capsys):
    """--init-from: the first run's weights, trained at 16 px, start a run at 32 px with window 8;
    its first evaluation is already far above chance, which random weights cannot be."""
    first = train(folder_config(folder, tmp_path, "run.name=first"))
    assert first.test.top1 >= 90.0
    arguments = ["train", "--no-progress", "--init-from", str(first.model_dir),
                 "data.dataset=folder", f"data.train_path={folder / 'train'}", f"data.val_path={folder / 'val'}",
                 "data.load_size=32", "data.crop_pct=1.0", "data.num_workers=0", "augment.randaugment=null",
                 "augment.mixup=0.0", "augment.cutmix=0.0", "augment.random_erasing=0.0", "augment.color_jitter=0.0",
                 "optim.base_lr=1e-9", "schedule.epochs=1", "schedule.warmup_epochs=0", "run.batch_size=16",
                 "run.precision=fp32", f"run.output_dir={tmp_path}", "run.name=second", *TINY_MODEL,
                 "model.overrides.img_size=32", "model.overrides.window_size=8"]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    accuracy = float(re.search(r"^test accuracy: (\d+\.\d\d)%", output, re.MULTILINE).group(1))
    assert accuracy >= 90.0  # lr 1e-9: the accuracy is the transferred weights', at twice the resolution
