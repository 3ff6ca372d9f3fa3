"""evaluate() against hand-computed confusion matrices, the metrics log, and `swinv2 eval`."""
from __future__ import annotations

import json
import math
import sys
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import swinv2.data
from swinv2.cli import main
from swinv2.errors import DataError, InputError
from swinv2.train.evaluate import class_index_map, evaluate, format_report
from swinv2.train.metrics import MetricsLogger, read_metrics
from test_predict import save_constant_classifier, write_png

Batch = namedtuple("Batch", "images labels skipped")  # the shape of swinv2.data's batches


class TableModel(nn.Module):
    """The 'image' of sample i is the number i; its logits are row i of a table set by hand.
    Records the mode and grad state of every call."""

    def __init__(self, logits: list[list[float]], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("table", torch.tensor(logits, dtype=dtype))
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.table[images.view(-1).long()]


def index_loader(labels: list[int], batch_size: int) -> DataLoader:
    indices = torch.arange(len(labels), dtype=torch.float32).view(-1, 1)
    return DataLoader(TensorDataset(indices, torch.tensor(labels)), batch_size=batch_size)


def cross_entropy_by_hand(logits: list[list[float]], labels: list[int]) -> float:
    return sum(math.log(sum(math.exp(value) for value in row)) - row[label]
               for row, label in zip(logits, labels)) / len(labels)


# Three classes, six images. Predicted (argmax): 0, 1, 1, 1, 2, 0 for true 0, 0, 1, 1, 2, 2.
THREE_LOGITS = [[2, 1, 0], [1, 2, 0], [0, 3, 1], [1, 2, 0], [0, 1, 2], [2, 0, 1]]
THREE_LABELS = [0, 0, 1, 1, 2, 2]
THREE_CONFUSION = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # row = true, column = predicted


# ----------------------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("batch_size", [1, 4, 6])
def test_three_classes_against_the_hand_confusion_matrix(batch_size):
    result = evaluate(TableModel(THREE_LOGITS), index_loader(THREE_LABELS, batch_size), None, "cpu", "fp32", 3,
                      progress=False)
    assert result.confusion.tolist() == THREE_CONFUSION
    assert result.confusion.dtype == torch.int64
    assert result.count == 6
    assert result.top1 == pytest.approx(100 * 4 / 6)
    assert result.per_class == pytest.approx([50.0, 100.0, 50.0])
    assert result.class_counts == [2, 2, 2]
    assert result.topk == 3 and result.top5 == 100.0  # top-5 of 3 classes: every class, always right
    assert result.loss == pytest.approx(cross_entropy_by_hand(THREE_LOGITS, THREE_LABELS), rel=1e-6)


def test_top5_counts_the_true_class_among_the_five_highest():
    # Seven classes, every image's logits descend from class 0: the true classes 0, 4, 5, 6 rank 1, 5, 6, 7.
    row = [6, 5, 4, 3, 2, 1, 0]
    labels = [0, 4, 5, 6]
    result = evaluate(TableModel([row] * 4), index_loader(labels, 3), None, "cpu", "fp32", 7, progress=False)
    assert result.topk == 5
    assert result.top1 == 25.0
    assert result.top5 == 50.0
    assert result.confusion[:, 0].tolist() == [1, 0, 0, 0, 1, 1, 1]
    assert result.confusion[:, 1:].sum() == 0
    assert result.class_counts == [1, 0, 0, 0, 1, 1, 1]
    assert result.per_class[0] == 100.0 and result.per_class[4:] == [0.0, 0.0, 0.0]
    assert all(math.isnan(value) for value in result.per_class[1:4])  # no images of classes 1-3
    assert result.to_dict()["per_class"][1:4] == [None, None, None]  # JSON has no nan


def test_runs_in_eval_mode_without_gradients_and_restores_training_mode():
    model = TableModel(THREE_LOGITS).train()
    evaluate(model, index_loader(THREE_LABELS, 4), None, "cpu", "fp32", 3, progress=False)
    assert model.calls == [(False, False), (False, False)]
    assert model.training


def test_batches_with_skipped_images_and_preprocessing():
    # swinv2.data's Batch carries the unreadable images it left out; preprocess sees each batch's images.
    batches = [Batch(torch.tensor([[0], [1]], dtype=torch.uint8), torch.tensor([0, 0]), 1),
               Batch(torch.tensor([[2], [3], [4], [5]], dtype=torch.uint8), torch.tensor([1, 1, 2, 2]), 2)]
    seen = []

    def preprocess(images):
        seen.append(images.dtype)
        return images.float()

    result = evaluate(TableModel(THREE_LOGITS), batches, preprocess, "cpu", "fp32", 3, progress=False)
    assert result.confusion.tolist() == THREE_CONFUSION
    assert result.skipped == 3
    assert seen == [torch.uint8, torch.uint8]


def test_bf16_logits_are_counted_in_float():
    # Small integers are exact in bf16: the same matrix, and the loss from float32 arithmetic.
    model = TableModel(THREE_LOGITS, dtype=torch.bfloat16)
    result = evaluate(model, index_loader(THREE_LABELS, 4), None, "cpu", "bf16", 3, progress=False)
    assert result.confusion.tolist() == THREE_CONFUSION
    assert result.loss == pytest.approx(cross_entropy_by_hand(THREE_LOGITS, THREE_LABELS), rel=1e-6)


def test_label_map_scores_a_dataset_with_some_of_the_classes():
    # The dataset knows classes b and c as 0 and 1; the model calls them 1 and 2.
    label_map = class_index_map(["b", "c"], ["a", "b", "c"])
    assert label_map.tolist() == [1, 2]
    assert class_index_map(["a", "b"], ["a", "b"]) is None
    model = TableModel([[0, 5, 0], [0, 0, 5], [0, 5, 0]])
    result = evaluate(model, index_loader([0, 1, 1], 2), None, "cpu", "fp32", 3, progress=False, label_map=label_map)
    assert result.confusion.tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_unknown_dataset_classes_are_an_error():
    with pytest.raises(DataError, match="classes the model was not trained on: 'z'"):
        class_index_map(["a", "z"], ["a", "b"])


def test_labels_beyond_the_model_and_empty_loaders_are_errors():
    with pytest.raises(DataError, match="outside 0..2"):
        evaluate(TableModel(THREE_LOGITS), index_loader([0, 3], 2), None, "cpu", "fp32", 3, progress=False)
    with pytest.raises(InputError, match="expected \\(batch, 4\\)"):
        evaluate(TableModel(THREE_LOGITS), index_loader([0, 1], 2), None, "cpu", "fp32", 4, progress=False)
    with pytest.raises(DataError, match="no images"):
        evaluate(TableModel(THREE_LOGITS), [], None, "cpu", "fp32", 3, progress=False)


def test_report_table():
    result = evaluate(TableModel([[6, 5, 4, 3, 2, 1, 0]] * 2), index_loader([0, 4], 2), None, "cpu", "fp32", 7,
                      progress=False)
    lines = format_report(result, [f"class{index}" for index in range(7)]).splitlines()
    assert lines[0].startswith("top-1: 50.00%  top-5: 100.00%") and "on 2 images" in lines[0]
    assert lines[2].split() == ["class", "accuracy", "correct", "images"]
    assert lines[3].split() == ["class0", "100.00%", "1", "1"]
    assert lines[4].split() == ["class1", "-", "0", "0"]
    assert lines[7].split() == ["class4", "0.00%", "0", "1"]


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_log_is_jsonl_and_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = [{"step": 10, "epoch": 0.5, "train_loss": 2.25, "lr": 1e-3, "images_per_second": 120.0},
               {"step": 20, "epoch": 1, "eval_loss": 1.5, "eval_top1": 62.5, "eval_top5": 97.0}]
    with MetricsLogger(tmp_path) as logger:
        for record in records:
            logger.log(record)
        # Each record is on disk as soon as it is logged: a crashed run keeps them.
        assert read_metrics(tmp_path / "metrics.jsonl") == records
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records

    events = EventAccumulator(str(logger.tensorboard_dir))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(
        ["epoch", "train_loss", "lr", "images_per_second", "eval_loss", "eval_top1", "eval_top5"])
    assert [(event.step, event.value) for event in events.Scalars("train_loss")] == [(10, 2.25)]
    assert [(event.step, event.value) for event in events.Scalars("eval_top1")] == [(20, 62.5)]
    assert [(event.step, event.value) for event in events.Scalars("epoch")] == [(10, 0.5), (20, 1.0)]


def test_metrics_log_appends_and_writes_tensors_and_text(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log({"step": 1, "train_loss": torch.tensor(0.5), "top1": np.float64(12.5), "note": "warm-up",
                    "best": True})
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log({"step": 2, "train_loss": 0.25})
    assert read_metrics(tmp_path / "metrics.jsonl") == [
        {"step": 1, "train_loss": 0.5, "top1": 12.5, "note": "warm-up", "best": True},
        {"step": 2, "train_loss": 0.25},
    ]


def test_metrics_log_without_tensorboard(tmp_path, monkeypatch):
    # None in sys.modules makes `import torch.utils.tensorboard` raise ImportError, as when it is missing.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with MetricsLogger(tmp_path) as logger:
        logger.log({"step": 1, "train_loss": 1.0})
        assert logger.tensorboard_dir is None
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "train_loss": 1.0}]
    assert not (tmp_path / "tensorboard").exists()


def test_read_metrics_ignores_a_line_cut_short(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lr": 0.1}\n\n{"step": 2, "l')
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "lr": 0.1}]


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_eval_on_a_missing_directory_is_one_error_line(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "missing"), "--dataset", "folder", "--path", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: no trained classifier at") and "does not exist" in error
    assert error.count("\n") == 1


@pytest.mark.skipif(not all(hasattr(swinv2.data, name) for name in ("build_dataset", "make_loader", "EvalPreprocess")),
                    reason="swinv2.data's datasets and EvalPreprocess are not there yet")
def test_cli_eval_on_an_image_folder(tmp_path, capsys):
    # The model answers "b" for every image: 1 of 3 right; class a 0 of 2, class b 1 of 1.
    model = save_constant_classifier(tmp_path / "model", ["a", "b"], [0.0, 4.0], channels=3)
    for name, count in (("a", 2), ("b", 1)):
        (tmp_path / "images" / name).mkdir(parents=True)
        for index in range(count):
            write_png(tmp_path / "images" / name / f"{index}.png", np.full((40, 36, 3), 60 * index))
    code = main(["eval", str(model), "--dataset", "folder", "--path", str(tmp_path / "images"),
                 "--batch-size", "2", "--out", str(tmp_path / "out"), "--no-progress", "--precision", "fp32"])
    out = capsys.readouterr().out
    assert code == 0
    assert "top-1: 33.33%  top-2: 100.00%" in out
    assert any(line.split() == ["a", "0.00%", "0", "2"] for line in out.splitlines())
    assert any(line.split() == ["b", "100.00%", "1", "1"] for line in out.splitlines())
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["confusion"] == [[0, 2], [0, 1]]
    assert metrics["classes"] == ["a", "b"] and metrics["count"] == 3
    assert (tmp_path / "out" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
