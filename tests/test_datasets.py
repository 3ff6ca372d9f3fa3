"""`swinv2.data.datasets`: IDX parsing, Fashion-MNIST, image folders, list files, collate and loaders."""
import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset, default_collate

from swinv2.data import (
    DATASET_STATS,
    Batch,
    SkippedImageWarning,
    build_dataset,
    collate,
    make_loader,
    read_idx,
)
from swinv2.errors import DataError



def idx_bytes(type_and_dims: bytes, shape: tuple[int, ...], data: bytes) -> bytes:
    """An IDX file written out by hand: two zero bytes, type code, dimension count, big-endian sizes."""
    header = b"\x00\x00" + type_and_dims
    return header + b"".join(size.to_bytes(4, "big") for size in shape) + data


def write_fashion_mnist(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray, compress: bool) -> None:
    """A Fashion-MNIST split in the layout of the real files: magic 2051 for images, 2049 for labels."""
    files = {
        f"{prefix}-images-idx3-ubyte": idx_bytes(b"\x08\x03", images.shape, images.tobytes()),
        f"{prefix}-labels-idx1-ubyte": idx_bytes(b"\x08\x01", labels.shape, labels.tobytes()),
    }
    for name, content in files.items():
        if compress:
            (directory / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)


# ----------------------------------------------------------------------------------------------- IDX


def test_idx_parsing_of_a_hand_written_file_plain_and_gzipped(tmp_path):
    # 2 images of 2 rows x 3 columns holding 0..11: magic 0x00000803, sizes 2, 2, 3 (big-endian).
    content = b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03" + bytes(range(12))
    (tmp_path / "plain").write_bytes(content)
    (tmp_path / "compressed.gz").write_bytes(gzip.compress(content))
    expected = torch.tensor([[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]], dtype=torch.uint8)
    for name in ("plain", "compressed.gz"):
        parsed = read_idx(tmp_path / name, expected_magic=2051)
        assert parsed.dtype == torch.uint8
        assert torch.equal(parsed, expected)


def test_idx_wrong_magic_truncation_and_non_idx_are_data_errors(tmp_path):
    labels = idx_bytes(b"\x08\x01", (3,), bytes([1, 2, 3]))
    (tmp_path / "labels").write_bytes(labels)
    with pytest.raises(DataError, match="magic number 2049"):
        read_idx(tmp_path / "labels", expected_magic=2051)  # a labels file where images were expected
    (tmp_path / "short").write_bytes(labels[:-1])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "text")


def test_fashion_mnist_from_hand_written_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 0, 9, 3, 1], dtype=np.uint8)
    write_fashion_mnist(tmp_path, "t10k", images, labels, compress=False)  # the plain files work too

    dataset = build_dataset("fashion-mnist", tmp_path, split="test")
    assert len(dataset) == 5 and dataset.channels == 1 and len(dataset.classes) == 10
    assert dataset.classes[9] == "Ankle boot"
    image, label = dataset[2]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and label == 9
    assert torch.equal(image[0], torch.from_numpy(images[2]))

    rgb = build_dataset("fashion-mnist", tmp_path, split="test", channels=3)
    batch = collate(rgb.__getitems__([4, 0]))  # the DataLoader's batched fetch
    assert batch.images.shape == (2, 3, 28, 28) and batch.images.is_contiguous()
    for channel in range(3):
        assert torch.equal(batch.images[0, channel], torch.from_numpy(images[4]))
    assert batch.labels.tolist() == [1, 3] and batch.skipped == 0
    images_again, labels_again = default_collate(rgb.__getitems__([4, 0]))  # a plain DataLoader works too
    assert torch.equal(images_again, batch.images) and labels_again.tolist() == [1, 3]


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_dataset("fashion-mnist", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_dataset("fashion-mnist", tmp_path)  # the folder exists, the files do not
    with pytest.raises(DataError, match="'train' or 'test'"):
        build_dataset("fashion-mnist", tmp_path, split="validation")


def test_fashion_mnist_images_and_labels_must_agree(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    write_fashion_mnist(tmp_path, "train", images, np.array([0, 1], dtype=np.uint8), compress=True)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        build_dataset("fashion-mnist", tmp_path)


def test_real_fashion_mnist_sizes_balance_and_statistics():
    train = build_dataset("fashion-mnist")
    test = build_dataset("fashion-mnist", split="test")
    # Published sizes: 60000 + 10000 images of 28x28, 10 classes, 6000 / 1000 of each.
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    # The first labels of each split as the dataset's own loaders print them.
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    # The normalisation constants are the training set's pixel statistics.
    pixels = train.images.double() / 255.0
    (mean,), (std,) = DATASET_STATS["fashion-mnist"]
    assert abs(pixels.mean().item() - mean) < 1e-4 and abs(pixels.std().item() - std) < 1e-4


# ----------------------------------------------------------------------------------------------- image files


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path) -> Path:
    """cat/: an RGB PNG, a corrupt JPEG, an RGBA PNG; dog/: a grayscale PNG, a truncated PNG, a WebP."""
    root = tmp_path / "images"
    rng = np.random.default_rng(1)
    save(root / "cat" / "a.png", np.full((8, 8, 3), (200, 100, 50), dtype=np.uint8))
    (root / "cat" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 0  # fully transparent: converting keeps the colour and drops the alpha
    save(root / "cat" / "c.png", rgba)
    (root / "cat" / "notes.txt").write_text("not an image, ignored")
    save(root / "dog" / "d.png", np.full((8, 8), 77, dtype=np.uint8))
    noisy = png_bytes(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    (root / "dog" / "e.png").write_bytes(noisy[: len(noisy) // 2])  # cut off half way through the pixels
    save(root / "dog" / "f.webp", np.full((8, 8, 3), 128, dtype=np.uint8), lossless=True)
    return root


def test_folder_dataset_converts_and_skips_unreadable_files(folder):
    dataset = build_dataset("folder", folder)
    assert dataset.classes == ["cat", "dog"] and dataset.channels == 3
    assert [(path.name, label) for path, label in dataset.samples] == [
        ("a.png", 0), ("b.jpg", 0), ("c.png", 0), ("d.png", 1), ("e.png", 1), ("f.webp", 1)
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [dataset[index] for index in range(len(dataset))]
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedImageWarning)]
    assert len(messages) == 2  # each warning names its file
    assert str(folder / "cat" / "b.jpg") in messages[0] and str(folder / "dog" / "e.png") in messages[1]
    assert items[1] is None and items[4] is None

    image, label = items[2]  # RGBA -> RGB
    assert label == 0 and image.shape == (3, 8, 8)
    assert image[:, 0, 0].tolist() == [10, 20, 30]
    image, label = items[3]  # grayscale -> the same value in R, G and B
    assert label == 1 and torch.equal(image, torch.full((3, 8, 8), 77, dtype=torch.uint8))
    assert items[5][0][:, 4, 4].tolist() == [128, 128, 128]  # lossless WebP

    batch = collate(items)
    assert isinstance(batch, Batch) and batch.skipped == 2 and len(batch) == 4
    assert batch.images.shape == (4, 3, 8, 8) and batch.labels.tolist() == [0, 0, 1, 1]


def test_grayscale_dataset_and_load_size_resize_then_centre_crop(folder):
    image, _ = build_dataset("folder", folder, channels=1)[0]
    # Pillow's ITU-R 601 luma of (200, 100, 50): (200 * 299 + 100 * 587 + 50 * 114) / 1000 = 124.4 -> 124.
    assert image.shape == (1, 8, 8) and int(image[0, 0, 0]) == 124

    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(20, 40, 3), dtype=np.uint8)  # H 20, W 40
    save(folder / "wide" / "w.png", pixels)
    dataset = build_dataset("folder", folder, load_size=10)
    path_index = [path.name for path, _ in dataset.samples].index("w.png")
    image, label = dataset[path_index]
    # By hand: the shorter side 20 -> 10, the longer 40 -> 20; centre crop columns 5..15.
    expected = np.array(Image.fromarray(pixels).resize((20, 10), Image.BICUBIC))[:, 5:15]
    assert label == dataset.classes.index("wide")
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))


def test_folder_errors_before_training(tmp_path, folder):
    (folder / "empty").mkdir()
    with pytest.raises(DataError, match="class folder .*empty.* has no images"):
        build_dataset("folder", folder)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("folder", tmp_path / "missing")
    with pytest.raises(DataError, match="needs a path"):
        build_dataset("folder", None)
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        build_dataset("folder", tmp_path / "bare")
    save(tmp_path / "loose" / "x.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="not in class folders"):
        build_dataset("folder", tmp_path / "loose")
    with pytest.raises(DataError, match="unknown dataset kind"):
        build_dataset("imagenet", tmp_path)
    with pytest.raises(DataError, match="channels must be 1"):
        build_dataset("folder", tmp_path / "loose", channels=4)


def test_list_file_csv_with_header_and_whitespace_lists(tmp_path):
    for name, value in (("one.png", 1), ("two.png", 2), ("three.png", 3)):
        save(tmp_path / "pics" / name, np.full((4, 4), value, dtype=np.uint8))
    save(tmp_path / "pics" / "with space.png", np.full((4, 4), 4, dtype=np.uint8))
    (tmp_path / "train.csv").write_text("path,label\npics/one.png,10\n\n# a comment\npics/two.png,9\n"
                                        f"{tmp_path / 'pics' / 'three.png'},10\n")
    dataset = build_dataset("list", tmp_path / "train.csv", channels=1)
    assert dataset.classes == ["9", "10"]  # integer names in numeric order
    assert [(int(image[0, 0, 0]), label) for image, label in (dataset[i] for i in range(3))] == [(1, 1), (2, 0), (3, 1)]

    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.txt").write_text("../pics/with space.png  dog\n../pics/one.png cat\n")
    listed = build_dataset("list", tmp_path / "lists" / "val.txt", channels=1)  # relative to the list file
    assert listed.classes == ["cat", "dog"]
    assert [(int(image[0, 0, 0]), label) for image, label in (listed[i] for i in range(2))] == [(4, 1), (1, 0)]


def test_list_file_errors(tmp_path):
    save(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "missing.csv").write_text("a.png,x\nb.png,y\n")
    with pytest.raises(DataError, match="1 of the 2 images .* do not exist.*b.png"):
        build_dataset("list", tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("a.png,x\njust-a-path.png\n")
    with pytest.raises(DataError, match="bad.csv:2: expected 'image_path,label_name'"):
        build_dataset("list", tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("path,label\n# nothing\n")
    with pytest.raises(DataError, match="no images listed"):
        build_dataset("list", tmp_path / "empty.csv")
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("list", tmp_path / "nope.csv")


# ----------------------------------------------------------------------------------------------- batching


def test_collate_counts_all_skipped_and_refuses_mixed_sizes():
    batch = collate([None, None])
    assert batch.skipped == 2 and len(batch) == 0
    with pytest.raises(DataError, match="load_size"):
        collate([(torch.zeros(3, 4, 4, dtype=torch.uint8), 0), (torch.zeros(3, 5, 4, dtype=torch.uint8), 1)])


def test_loader_visits_every_image_once_in_a_seeded_order(tmp_path):
    images = np.arange(10, dtype=np.uint8).repeat(28 * 28).reshape(10, 28, 28)  # image i is all i
    write_fashion_mnist(tmp_path, "train", images, np.arange(10, dtype=np.uint8), compress=True)
    dataset = build_dataset("fashion-mnist", tmp_path)

    def order(seed: int, data) -> list[int]:
        batches = list(make_loader(data, 4, shuffle=True, num_workers=2, seed=seed))
        assert all(isinstance(batch, Batch) and batch.images.dtype == torch.uint8 for batch in batches)
        assert [len(batch) for batch in batches] == [4, 4, len(data) - 8]
        values = [int(v) for batch in batches for v in batch.images[:, 0, 0, 0]]
        assert values == [int(v) for batch in batches for v in batch.labels]  # images stay with their labels
        return values

    first = order(0, dataset)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert order(0, dataset) == first and order(1, dataset) != first
    assert sorted(order(0, Subset(dataset, range(9)))) == list(range(9))  # Subset keeps the batched fetch
    unshuffled = list(make_loader(dataset, 3, shuffle=False, drop_last=True))
    assert [batch.labels.tolist() for batch in unshuffled] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


@pytest.mark.filterwarnings("ignore::swinv2.data.SkippedImageWarning")
def test_loader_of_files_counts_unreadable_images_per_batch(folder):
    dataset = build_dataset("folder", folder, load_size=8)
    batches = list(make_loader(dataset, 3, shuffle=False, num_workers=2))  # decoded in worker processes
    assert [(len(batch), batch.skipped) for batch in batches] == [(2, 1), (2, 1)]
