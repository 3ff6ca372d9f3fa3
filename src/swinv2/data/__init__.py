"""Data: image loading, the official preprocessing, datasets and loaders, batched augmentation.

The augmentation names are imported on first use: they need kornia, which the model does not (the model
imports the mask generator from here), so `import swinv2` and inference work where kornia is absent, as on
the GPU machines' image, and start 0.3 s sooner."""
import importlib
from .datasets import (
    DATASET_STATS,
    FASHION_MNIST_CLASSES,
    Batch,
    FashionMNIST,
    ImageFolder,
    ImageList,
    SkippedImageWarning,
    build_dataset,
    collate,
    make_loader,
    read_idx,
)
from .images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvaluationTransform,
    evaluation_transform,
    load_image,
)
from .masking import MaskGenerator

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "EvaluationTransform", "evaluation_transform", "load_image",
    "DATASET_STATS", "FASHION_MNIST_CLASSES", "Batch", "FashionMNIST", "ImageFolder", "ImageList",
    "SkippedImageWarning", "build_dataset", "collate", "make_loader", "read_idx",
    "EvalPreprocess", "MixupCutmix", "RandomErasing", "TrainAugmentation", "soft_target_cross_entropy",
    "MaskGenerator",
]

_AUGMENTATION = ("EvalPreprocess", "MixupCutmix", "RandomErasing", "TrainAugmentation", "soft_target_cross_entropy")


def __getattr__(name: str):
    if name in _AUGMENTATION:
        return getattr(importlib.import_module(".augment", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_AUGMENTATION])
