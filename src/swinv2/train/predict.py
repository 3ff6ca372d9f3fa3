"""Class predictions for image files from a trained classifier directory (see `artifacts`).

Each image gets the evaluation preprocessing saved with the model: grayscale when the model takes one
channel, the shorter side resized to img_size / crop_pct (bicubic), a centre crop of img_size, and the
training run's mean and standard deviation. That is the shape of what the model saw at evaluation."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from ..data.images import ImageSource, center_crop, load_image, resize_shorter_side, to_normalized_tensor
from ..errors import InputError
from .artifacts import load_classifier, size_pair

Prediction = list[tuple[str, float]]  # (class name, probability), most probable first


def predict(
    directory: str | os.PathLike,
    images: Sequence[ImageSource],
    topk: int = 5,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> list[Prediction]:
    """The `topk` most probable classes of each image, with their softmax probabilities."""
    model, classes, preprocessing = load_classifier(directory)
    return classify(model.to(device), classes, preprocessing, images, topk, batch_size)


def classify(
    model: torch.nn.Module,
    classes: Sequence[str],
    preprocessing: Mapping[str, Any],
    images: Sequence[ImageSource],
    topk: int = 5,
    batch_size: int = 64,
) -> list[Prediction]:
    """`predict` for a model already loaded: preprocess, run in batches, keep the top k of each."""
    if topk < 1:
        raise InputError(f"topk must be at least 1, got {topk}")
    device = next(model.parameters()).device
    model.eval()
    results: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([preprocess_image(image, preprocessing) for image in images[start:start + batch_size]])
        with torch.inference_mode():
            probabilities = model(batch.to(device)).float().softmax(dim=-1).cpu()
        top = probabilities.topk(min(topk, len(classes)), dim=-1)
        for values, indices in zip(top.values.tolist(), top.indices.tolist()):
            results.append([(classes[index], value) for index, value in zip(indices, values)])
    return results


def preprocess_image(image: ImageSource, preprocessing: Mapping[str, Any]) -> torch.Tensor:
    """One image as the normalised (channels, img_size, img_size) float tensor the model takes."""
    height, width = size_pair(preprocessing["img_size"])
    if height != width:
        raise InputError(f"predict takes square models; this one is {height}x{width}")
    picture = read_picture(image)
    if preprocessing["channels"] == 1:
        picture = picture.convert("L")  # ITU-R 601 luma, as Pillow converts
    picture = resize_shorter_side(picture, int(height / preprocessing["crop_pct"]))
    picture = center_crop(picture, height)
    return to_normalized_tensor(picture, tuple(preprocessing["mean"]), tuple(preprocessing["std"]))


def read_picture(image: ImageSource) -> Image.Image:
    """load_image, with the file named when Pillow cannot decode it (its own message does not say which)."""
    try:
        return load_image(image)
    except OSError as error:
        raise InputError(f"cannot read image {image}: {error}") from None
