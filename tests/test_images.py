"""`swinv2.data.images`: image loading and the official evaluation preprocessing."""
import numpy as np
import pytest
import torch
from PIL import Image

from swinv2.data import IMAGENET_MEAN, IMAGENET_STD, evaluation_transform, load_image
from swinv2.errors import InputError


def normalized(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W): /255, minus the ImageNet mean, over the std (values from SPEC/torchvision)."""
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    return torch.from_numpy(((pixels.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))


def test_constants_are_the_imagenet_statistics():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_resize_then_centre_crop_as_the_official_evaluation():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)  # H 300, W 400
    # By hand: shorter side 300 -> int(256 / 0.875) = 292, longer int(292 * 400 / 300) = 389;
    # crop offsets round((292 - 256) / 2) = 18 and round((389 - 256) / 2) = round(66.5) = 66.
    expected_image = Image.fromarray(pixels).resize((389, 292), Image.BICUBIC).crop((66, 18, 322, 274))
    expected = normalized(np.asarray(expected_image))

    output = evaluation_transform(256)(Image.fromarray(pixels))
    assert output.shape == (3, 256, 256) and output.dtype == torch.float32
    torch.testing.assert_close(output, expected)


def test_crop_without_resize_takes_the_central_pixels():
    pixels = np.arange(256 * 512 * 3, dtype=np.uint32).reshape(256, 512, 3) % 251
    pixels = pixels.astype(np.uint8)
    output = evaluation_transform(256, crop_pct=1.0)(pixels)
    torch.testing.assert_close(output, normalized(pixels[:, 128:384]))


def test_constant_image_gives_the_normalised_constant():
    output = evaluation_transform(64)(np.full((90, 70, 3), (255, 0, 128), dtype=np.uint8))
    for channel, value in enumerate((255, 0, 128)):
        expected = (value / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        torch.testing.assert_close(output[channel], torch.full((64, 64), expected), atol=1e-5, rtol=0)


def test_grayscale_rgba_and_float_inputs_become_rgb(tmp_path):
    gray = np.full((20, 30), 77, dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(gray)), np.full((20, 30, 3), 77))
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 0
    assert np.array_equal(np.asarray(load_image(rgba))[0, 0], [10, 20, 30])
    assert np.array_equal(np.asarray(load_image(np.full((4, 4, 3), 0.5)))[0, 0], [128, 128, 128])

    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (30, 20)


@pytest.mark.parametrize("source", ["/no/such/file.png", np.zeros((2, 3, 5)), np.zeros((4, 4), dtype=np.int64), 3])
def test_bad_images_raise_input_error(source):
    with pytest.raises(InputError):
        load_image(source)
