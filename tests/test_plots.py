"""swinv2.plots: valid PNGs of the documented pixel size, and the confusion matrix's row normalisation."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from swinv2.plots import plot_confusion, plot_curves, plot_predictions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()  # a complete, undamaged file
    with Image.open(path) as image:
        return image.size


def write_metrics(path, records) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_curves_png(tmp_path):
    records = [{"step": step, "epoch": step / 20, "train_loss": 2.3 / (1 + step / 10), "lr": 1e-3 * min(1, step / 10),
                "images_per_second": 300.0} for step in range(1, 41)]
    records += [{"step": step, "epoch": step / 20, "eval_loss": 1.0 / step * 20, "eval_top1": 60 + step / 2,
                 "eval_top5": 95.0} for step in (20, 40)]
    write_metrics(tmp_path / "metrics.jsonl", records)
    png = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png")
    assert png == tmp_path / "plots" / "curves.png"
    assert png_size(png) == (1500, 450)  # 15 x 4.5 inches at 100 dpi


def test_curves_of_an_empty_log_still_make_a_png(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    assert png_size(plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")) == (1500, 450)


def test_confusion_is_normalised_per_true_class(tmp_path):
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    normalised = plot_confusion(confusion, ["shirt", "bag", "boot"], tmp_path / "confusion.png")
    # Row 0 has 4 images, row 2 has 8; row 1 has none and stays zero rather than 0/0.
    expected = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(normalised, expected)
    assert png_size(tmp_path / "confusion.png") == (800, 600)  # 6-inch square at least, + 2 inches for the bar


def test_confusion_grows_with_the_class_count(tmp_path):
    confusion = torch.eye(10, dtype=torch.int64) * 7
    normalised = plot_confusion(confusion, [f"class {index}" for index in range(10)], tmp_path / "confusion.png")
    torch.testing.assert_close(normalised, torch.eye(10, dtype=torch.float64))
    assert png_size(tmp_path / "confusion.png") == (1000, 800)  # 2 + 0.6 * 10 = 8 inches


def test_confusion_of_the_wrong_shape_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"must be \(3, 3\), got \(2, 2\)"):
        plot_confusion(torch.zeros(2, 2), ["a", "b", "c"], tmp_path / "confusion.png")


def test_predictions_grid_of_rows_of_eight(tmp_path):
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(20) % 3
    png = plot_predictions(images, labels, labels, torch.full((20,), 0.5), ["a", "b", "c"], tmp_path / "grid.png")
    assert png_size(png) == (1440, 670)  # 8 columns x 1.8 inches, 3 rows x 2.1 inches + 0.4


def test_predictions_grid_gray(tmp_path):
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    png = plot_predictions(images, [0, 1, 2, 0, 1, 2], torch.tensor([0, 1, 0, 0, 2, 2]),
                           torch.tensor([0.9, 0.8, 0.55, 0.99, 0.4, 0.7]), ["T-shirt", "Trouser", "Pullover"],
                           tmp_path / "predictions.png")
    assert png_size(png) == (1080, 250)  # one row of 6 columns x 1.8 inches, 2.1 inches + 0.4 for the title


def test_predictions_grid_rgb_with_every_probability(tmp_path):
    # Given every class's probability, the predicted class's is shown.
    images = torch.randint(0, 256, (3, 3, 32, 24), dtype=torch.uint8)
    probabilities = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    png = plot_predictions(images, torch.tensor([0, 1, 1]), probabilities.argmax(1), probabilities, ["cat", "dog"],
                           tmp_path / "predictions.png")
    assert png_size(png) == (540, 250)
