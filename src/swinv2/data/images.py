"""Images in, normalised tensors out: the official evaluation preprocessing, with Pillow and numpy only.

Official evaluation (microsoft/Swin-Transformer `data/build.py`, TEST.CROP): resize the shorter side to
int(img_size / 0.875) with bicubic interpolation, centre-crop img_size, scale to [0, 1], normalise
with the ImageNet mean and standard deviation. The arithmetic below copies torchvision's, which the
official code calls, so that the same photo gives the same tensor."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875

ImageSource = Union[str, Path, Image.Image, np.ndarray]


def load_image(source: ImageSource) -> Image.Image:
    """A file path, PIL image or (H, W[, C]) array as a PIL RGB image.

    Grayscale is repeated over three channels and the alpha of RGBA is dropped: the models take RGB.
    Float arrays are read as [0, 1] intensities."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"image file {str(path)!r} does not exist")
        with Image.open(path) as image:
            return image.convert("RGB")
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        return array_to_image(source)
    raise InputError(f"expected an image path, PIL image or numpy array, got {type(source).__name__}")


def array_to_image(array: np.ndarray) -> Image.Image:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 or [0, 1] float array -> PIL RGB image."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(
            f"expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}"
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"expected a uint8 or float image array, got dtype {array.dtype}")
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so that the shorter side is `size`; the longer side is truncated as torchvision does."""
    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    return image.resize(new_size, Image.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central size x size square, offsets rounded as torchvision rounds them."""
    width, height = image.size
    if width < size or height < size:
        raise InputError(f"cannot crop {size}x{size} from a {width}x{height} image")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_normalized_tensor(
    image: Image.Image, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """PIL RGB (or L) image -> float32 tensor (3 (or 1), H, W): pixels / 255, then (x - mean) / std per channel."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if pixels.ndim == 2:  # a one-channel (L) image
        pixels = pixels[:, :, None]
    pixels = torch.from_numpy(pixels).permute(2, 0, 1)
    mean_tensor = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_tensor = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (pixels - mean_tensor) / std_tensor


class EvaluationTransform:
    """Callable: PIL image -> normalised (3, img_size, img_size) tensor, the official test preprocessing."""

    def __init__(self, img_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> None:
        if not 0.0 < crop_pct <= 1.0:
            raise InputError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.img_size = int(img_size)
        self.crop_pct = crop_pct
        self.resize_size = int(self.img_size / crop_pct)

    def __call__(self, image: ImageSource) -> torch.Tensor:
        image = resize_shorter_side(load_image(image), self.resize_size)
        return to_normalized_tensor(center_crop(image, self.img_size))

    def __repr__(self) -> str:
        return (
            f"EvaluationTransform(resize shorter side to {self.resize_size} bicubic, "
            f"centre crop {self.img_size}, ImageNet mean/std)"
        )


def evaluation_transform(img_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> EvaluationTransform:
    """The official evaluation preprocessing for `img_size` inputs (see the module docstring)."""
    return EvaluationTransform(img_size, crop_pct)
