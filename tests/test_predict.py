"""Trained-classifier directories (save_classifier / load_classifier), predict, and `swinv2 predict`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import randomize_
from swinv2 import SwinTransformerV2
from swinv2.checkpoints import save_pretrained
from swinv2.cli import main
from swinv2.errors import CheckpointError, InputError
from swinv2.train.artifacts import load_classifier, save_classifier
from swinv2.train.predict import predict, preprocess_image

# A one-stage model: milliseconds to build and run.
TINY = dict(img_size=28, patch_size=4, window_size=7, embed_dim=16, depths=(1,), num_heads=(1,))


def tiny_model(num_classes: int, channels: int = 1) -> SwinTransformerV2:
    return SwinTransformerV2(**TINY, in_chans=channels, num_classes=num_classes)


def preprocessing_for(channels: int, crop_pct: float = 0.875) -> dict:
    return {"img_size": 28, "crop_pct": crop_pct, "mean": [0.5] * channels, "std": [0.25] * channels,
            "channels": channels}


def save_constant_classifier(directory, classes: list[str], bias: list[float], channels: int = 1):
    """A classifier whose logits are `bias` whatever the image: zero head weights. Its probabilities
    are softmax(bias), computable by hand."""
    model = tiny_model(len(classes), channels)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor(bias))
    save_classifier(model, directory, classes, preprocessing_for(channels))
    return directory


def write_png(path, array: np.ndarray):
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def softmax(values: list[float]) -> list[float]:
    exponentials = [math.exp(value) for value in values]
    return [value / sum(exponentials) for value in exponentials]


# -------------------------------------------------------------------------------------- artifacts
def test_round_trip_gives_identical_logits(tmp_path):
    model = randomize_(tiny_model(3, channels=3)).eval()
    classes = ["cat", "dog", "émeu"]
    preprocessing = preprocessing_for(3)
    save_classifier(model, tmp_path / "model", classes, preprocessing)

    loaded, loaded_classes, loaded_preprocessing = load_classifier(tmp_path / "model")
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    assert not loaded.training
    assert loaded_classes == classes
    assert loaded_preprocessing == {**preprocessing, "img_size": [28, 28]}
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == [
        "classes.json", "config.json", "model.safetensors", "preprocessing.json"]


def test_missing_files_are_named(tmp_path):
    directory = save_constant_classifier(tmp_path / "model", ["a", "b"], [0.0, 1.0])
    (directory / "classes.json").unlink()
    with pytest.raises(CheckpointError, match=r"lacks classes\.json \("):
        load_classifier(directory)
    (directory / "preprocessing.json").unlink()
    with pytest.raises(CheckpointError, match=r"lacks classes\.json, preprocessing\.json"):
        load_classifier(directory)


def test_a_bare_save_pretrained_directory_is_not_a_classifier(tmp_path):
    save_pretrained(tiny_model(2), tmp_path / "bare")
    with pytest.raises(CheckpointError, match="lacks classes.json, preprocessing.json.*no class names"):
        load_classifier(tmp_path / "bare")


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no trained classifier at .*does not exist"):
        load_classifier(tmp_path / "nowhere")


@pytest.mark.parametrize("classes, preprocessing, message", [
    (["a", "b", "c"], preprocessing_for(1), "3 class names for a model with 2 outputs"),
    (["a", "b"], preprocessing_for(3), "makes 3-channel images, the model takes 1"),
    (["a", "b"], {**preprocessing_for(1), "mean": [0.1, 0.2]}, "mean has 2 values for 1 channels"),
    (["a", "b"], {**preprocessing_for(1), "img_size": 32}, "makes 32x32 images, the model takes 28x28"),
    (["a", "b"], {**preprocessing_for(1), "crop_pct": 1.5}, r"crop_pct 1.5 is not in \(0, 1\]"),
    (["a", "b"], {"img_size": 28, "channels": 1}, "lacks crop_pct, mean, std"),
])
def test_save_checks_classes_and_preprocessing_against_the_model(tmp_path, classes, preprocessing, message):
    with pytest.raises(CheckpointError, match=message):
        save_classifier(tiny_model(2), tmp_path / "model", classes, preprocessing)
    assert not (tmp_path / "model").exists()  # nothing written


# ---------------------------------------------------------------------------------- preprocessing
def test_centre_crop_without_resize_takes_the_middle_columns():
    # 30 wide, 16 tall, shorter side already 16 / crop_pct 1.0: no resize; the crop starts at column 7.
    columns = np.tile(np.arange(30) * 8, (16, 1))
    image = Image.fromarray(columns.astype(np.uint8))
    tensor = preprocess_image(image, {"img_size": 16, "crop_pct": 1.0, "mean": [0.0], "std": [1.0], "channels": 1})
    expected = torch.tensor(columns[:, 7:23] / 255.0, dtype=torch.float32)
    assert tensor.shape == (1, 16, 16)
    torch.testing.assert_close(tensor[0], expected)


def test_crop_pct_sets_the_resize_and_the_crop_offsets():
    # img_size 16 / crop_pct 0.8 = 20, the image's shorter side: no resize; crop 16x16 at top 2, left 12.
    rows, columns = np.mgrid[0:20, 0:40]
    values = columns * 4 + rows
    image = Image.fromarray(values.astype(np.uint8))
    tensor = preprocess_image(image, {"img_size": 16, "crop_pct": 0.8, "mean": [0.0], "std": [1.0], "channels": 1})
    torch.testing.assert_close(tensor[0], torch.tensor(values[2:18, 12:28] / 255.0, dtype=torch.float32))


def test_shorter_side_is_resized_to_img_size_over_crop_pct():
    # A uniform 100x50 image: resized to 64x32 (shorter side int(28 / 0.875) = 32), cropped to 28x28.
    image = Image.new("RGB", (100, 50), (10, 20, 30))
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.125]
    tensor = preprocess_image(image, {"img_size": 28, "crop_pct": 0.875, "mean": mean, "std": std, "channels": 3})
    assert tensor.shape == (3, 28, 28)
    for channel, value in enumerate((10, 20, 30)):
        expected = (value / 255 - mean[channel]) / std[channel]
        torch.testing.assert_close(tensor[channel], torch.full((28, 28), expected), atol=1e-5, rtol=0)


def test_one_channel_models_get_grayscale():
    red = Image.new("RGB", (28, 28), (255, 0, 0))
    tensor = preprocess_image(red, {"img_size": 28, "crop_pct": 1.0, "mean": [0.0], "std": [1.0], "channels": 1})
    # ITU-R 601 luma: 0.299 * 255 = 76.2.
    assert tensor.shape == (1, 28, 28)
    assert tensor.mul(255).round().unique().tolist() == [76.0]


# ------------------------------------------------------------------------------------------ predict
def test_probabilities_are_the_softmax_of_the_head_bias(tmp_path):
    classes, bias = ["zero", "one", "two", "minus"], [0.0, 1.0, 2.0, -1.0]
    directory = save_constant_classifier(tmp_path / "model", classes, bias)
    image = write_png(tmp_path / "image.png", np.random.default_rng(0).integers(0, 256, (40, 30)))
    expected = softmax(bias)

    [top] = predict(directory, [image], topk=3)
    assert [name for name, _ in top] == ["two", "one", "zero"]
    for (name, probability), index in zip(top, (2, 1, 0)):
        assert probability == pytest.approx(expected[index], rel=1e-5)

    [everything] = predict(directory, [image, image], topk=10)[:1]
    assert len(everything) == 4  # topk above the class count gives every class
    assert sum(probability for _, probability in everything) == pytest.approx(1.0)


def test_predict_runs_in_batches(tmp_path):
    directory = save_constant_classifier(tmp_path / "model", ["a", "b"], [3.0, 0.0], channels=3)
    images = [write_png(tmp_path / f"{index}.png", np.full((20 + index, 30, 3), index * 40)) for index in range(5)]
    results = predict(directory, images, topk=1, batch_size=2)
    assert [top[0][0] for top in results] == ["a"] * 5


def test_topk_below_one_is_an_error(tmp_path):
    directory = save_constant_classifier(tmp_path / "model", ["a", "b"], [0.0, 1.0])
    with pytest.raises(InputError, match="topk must be at least 1"):
        predict(directory, [np.zeros((28, 28), dtype=np.uint8)], topk=0)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_predict_prints_the_top_label_first(tmp_path, capsys):
    directory = save_constant_classifier(tmp_path / "model", ["Sandal", "Sneaker", "Bag"], [0.0, 2.0, 1.0])
    image = write_png(tmp_path / "shoe.png", np.full((28, 28), 200))
    assert main(["predict", str(image), "--checkpoint", str(directory), "--topk", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    probability = softmax([0.0, 2.0, 1.0])[1]
    assert lines[0] == str(image)
    assert lines[1].split() == ["1.", "Sneaker", f"{probability:.4f}"]
    assert lines[2].split()[:2] == ["2.", "Bag"]
    assert len(lines) == 3


def test_cli_predict_json(tmp_path, capsys):
    directory = save_constant_classifier(tmp_path / "model", ["a", "b"], [0.0, 1.0])
    image = write_png(tmp_path / "x.png", np.zeros((28, 28)))
    assert main(["predict", str(image), str(image), "--checkpoint", str(directory), "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert [entry["image"] for entry in output] == [str(image)] * 2
    assert [entry["class"] for entry in output[0]["predictions"]] == ["b", "a"]
    assert output[0]["predictions"][0]["probability"] == pytest.approx(softmax([0.0, 1.0])[1], rel=1e-5)


def test_cli_predict_on_a_corrupt_image_is_one_error_line(tmp_path, capsys):
    directory = save_constant_classifier(tmp_path / "model", ["a", "b"], [0.0, 1.0])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["predict", str(broken), "--checkpoint", str(directory)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot read image") and str(broken) in error
    assert error.count("\n") == 1
