"""Data: image loading and the official preprocessing."""
from .images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvaluationTransform,
    evaluation_transform,
    load_image,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EvaluationTransform", "evaluation_transform", "load_image"]
