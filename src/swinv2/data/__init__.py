"""Data: image loading, the official preprocessing, datasets and loaders, batched augmentation."""
from .augment import EvalPreprocess, MixupCutmix, RandomErasing, TrainAugmentation, soft_target_cross_entropy
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
