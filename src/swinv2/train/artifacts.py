"""A trained classifier on disk: the weights, the class names, and the preprocessing its inputs need.

    model/                 (a `save_pretrained` directory, plus two files)
      model.safetensors    weights
      config.json          the model configuration
      classes.json         ["T-shirt/top", "Trouser", ...]: the name of each output, in order
      preprocessing.json   {"img_size": [28, 28], "crop_pct": 1.0, "mean": [0.286], "std": [0.353], "channels": 1}

Weights alone do not say what an output means or how an image must be prepared; without both,
`swinv2 predict` would print class indices of images normalised the wrong way. Every file is
written atomically, preprocessing.json last, so a directory that has it is complete."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checkpoints import from_pretrained, save_pretrained
from ..checkpoints.io import CONFIG_NAME, WEIGHTS_NAME, atomic_path, read_json, write_json
from ..errors import CheckpointError
from ..models import SwinTransformerV2

CLASSES_NAME = "classes.json"
PREPROCESSING_NAME = "preprocessing.json"
CLASSIFIER_FILES = (WEIGHTS_NAME, CONFIG_NAME, CLASSES_NAME, PREPROCESSING_NAME)
PREPROCESSING_KEYS = ("img_size", "crop_pct", "mean", "std", "channels")


def save_classifier(
    model: SwinTransformerV2,
    directory: str | os.PathLike,
    classes: Sequence[str],
    preprocessing: Mapping[str, Any],
) -> Path:
    """Write the weights, config, class names and preprocessing of a trained classifier to `directory`.

    `preprocessing` holds img_size (a number or [height, width]; stored as the pair), crop_pct, mean and
    std (one value per channel) and channels; they are checked against the model (input size and
    channels, class count) before anything is written."""
    directory = Path(directory)
    classes = [str(name) for name in classes]
    preprocessing = plain_preprocessing(preprocessing, source="the preprocessing passed to save_classifier")
    check_matches_model(model, classes, preprocessing, source="save_classifier")
    save_pretrained(model, directory)
    with atomic_path(directory / CLASSES_NAME) as temporary:
        temporary.write_text(json.dumps(classes, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_json(preprocessing, directory / PREPROCESSING_NAME)
    return directory


def load_classifier(directory: str | os.PathLike) -> tuple[SwinTransformerV2, list[str], dict[str, Any]]:
    """The model (in eval mode), class names and preprocessing saved by `save_classifier`."""
    directory = Path(directory)
    check_complete(directory)
    classes = read_classes(directory / CLASSES_NAME)
    preprocessing_path = directory / PREPROCESSING_NAME
    preprocessing = plain_preprocessing(read_json(preprocessing_path), source=str(preprocessing_path))
    model = from_pretrained(directory).eval()
    check_matches_model(model, classes, preprocessing, source=str(directory))
    return model, classes, preprocessing


def check_complete(directory: Path) -> None:
    """One error naming every file the directory lacks, so that the user fixes them all at once."""
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.exists() else "does not exist"
        raise CheckpointError(
            f"no trained classifier at {directory}: the path {what}; pass the model/ directory of a training run"
        )
    missing = [name for name in CLASSIFIER_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{directory} is not a complete trained classifier: it lacks {', '.join(missing)} "
            f"(a classifier directory holds {', '.join(CLASSIFIER_FILES)}, written by save_classifier at the end of "
            "`swinv2 train`); a bare save_pretrained directory has no class names or preprocessing"
        )


def read_classes(path: Path) -> list[str]:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); restore or rewrite the file") from None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise CheckpointError(f"{path} must hold a JSON list of class names, one per model output")
    return names


def plain_preprocessing(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The preprocessing as JSON-ready plain values, or an error naming what is missing or wrong."""
    missing = [key for key in PREPROCESSING_KEYS if key not in values]
    if missing:
        raise CheckpointError(f"{source} lacks {', '.join(missing)} (needs {', '.join(PREPROCESSING_KEYS)})")
    try:
        plain = {
            "img_size": list(size_pair(values["img_size"])),
            "crop_pct": float(values["crop_pct"]),
            "mean": [float(value) for value in values["mean"]],
            "std": [float(value) for value in values["std"]],
            "channels": int(values["channels"]),
        }
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: a value is not a number ({error})") from None
    check_values(plain, source)
    return plain


def size_pair(value: Any) -> tuple[int, int]:
    """img_size as (height, width): a single number means a square."""
    if isinstance(value, (int, float)):
        return int(value), int(value)
    height, width = value  # a wrong length raises ValueError, reported as a bad value
    return int(height), int(width)


def check_values(preprocessing: Mapping[str, Any], source: str) -> None:
    channels = preprocessing["channels"]
    problems = []
    if min(preprocessing["img_size"]) < 1:
        problems.append(f"img_size {preprocessing['img_size']} is not positive")
    if not 0.0 < preprocessing["crop_pct"] <= 1.0:
        problems.append(f"crop_pct {preprocessing['crop_pct']} is not in (0, 1]")
    if channels not in (1, 3):
        problems.append(f"channels {channels} is neither 1 (grayscale) nor 3 (RGB)")
    for key in ("mean", "std"):
        if len(preprocessing[key]) != channels:
            problems.append(f"{key} has {len(preprocessing[key])} values for {channels} channels")
    if not all(value > 0 and math.isfinite(value) for value in preprocessing["std"]):
        problems.append("std must be positive")
    if problems:
        raise CheckpointError(f"{source}: {'; '.join(problems)}")


def check_matches_model(
    model: SwinTransformerV2, classes: list[str], preprocessing: Mapping[str, Any], source: str
) -> None:
    """Class names and channels that disagree with the model would give silently wrong predictions."""
    config = model.config
    if len(classes) != config.num_classes:
        raise CheckpointError(
            f"{source}: {len(classes)} class names for a model with {config.num_classes} outputs; "
            "give exactly one name per output, in output order"
        )
    if preprocessing["channels"] != config.in_chans:
        raise CheckpointError(
            f"{source}: the preprocessing makes {preprocessing['channels']}-channel images, "
            f"the model takes {config.in_chans} (in_chans)"
        )
    height, width = preprocessing["img_size"]
    if config.strict_img_size and (height, width) != tuple(config.img_size):
        raise CheckpointError(
            f"{source}: the preprocessing makes {height}x{width} images, the model takes "
            f"{config.img_size[0]}x{config.img_size[1]} (img_size)"
        )
