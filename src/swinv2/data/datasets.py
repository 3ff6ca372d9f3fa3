"""Datasets for training and evaluation: Fashion-MNIST from its IDX files, a folder per class, a list file.

Every dataset yields `(image, label)`: a uint8 tensor (C, H, W) and an int, or `None` for an image file
that cannot be decoded (a `SkippedImageWarning` names the file; `collate` leaves it out and counts it).
Every dataset has `.classes` (list of names, index = label) and `.channels` (1 or 3). Problems that
would only show up later (a missing path, an empty class folder, no images at all) raise `DataError`
when the dataset is built, before any training starts.

Fashion-MNIST lives in memory as one uint8 tensor, and `__getitems__` answers a whole batch with one
index operation: the DataLoader (torch >= 2) calls it instead of `__getitem__` per item."""
from __future__ import annotations

import csv
import gzip
import os
import warnings
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..errors import DataError
from .images import IMAGENET_MEAN, IMAGENET_STD, center_crop, resize_shorter_side

PathLike = Union[str, Path]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_SPLITS = {"train": "train", "test": "t10k"}  # our split name -> the files' prefix
FASHION_MNIST_HINT = (
    "install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download "
    "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist "
    "and pass the folder that holds them as the dataset path"
)

# Mean and standard deviation of the pixels / 255, per channel. Fashion-MNIST's are its training set's.
DATASET_STATS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
IDX_IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions (N, rows, columns)
IDX_LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension (N,)
IDX_UNSIGNED_BYTE = 0x08
# Header words that may open a CSV list file; such a first row is a header, not an image.
LIST_HEADER_WORDS = {"path", "image", "image_path", "file", "filename", "file_name", "filepath",
                     "label", "label_name", "class", "class_name", "target", "category"}


class SkippedImageWarning(UserWarning):
    """An image file that could not be decoded; the item is None and the batch counts it as skipped."""


@dataclass
class Batch:
    """What the loaders yield. `skipped` counts the unreadable images left out of this batch."""

    images: torch.Tensor  # uint8 (B, C, H, W)
    labels: torch.Tensor  # int64 (B,)
    skipped: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Batch":
        return Batch(self.images.to(device, non_blocking=non_blocking),
                     self.labels.to(device, non_blocking=non_blocking), self.skipped)

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True): page-locked copies for asynchronous copies to a GPU."""
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.skipped)


class StackedSamples(SequenceABC):
    """Samples already stacked by an in-memory dataset. `collate` takes the tensors as they are;
    other collate functions (torch's default_collate) see the sequence of (image, label) items
    that `__getitems__` is meant to return."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images  # uint8 (B, C, H, W)
        self.labels = labels  # int64 (B,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)  # ends iteration, which relies on IndexError
        return self.images[index], int(self.labels[index])


# ----------------------------------------------------------------------------------------------- IDX files


def read_idx(path: PathLike, expected_magic: Optional[int] = None) -> torch.Tensor:
    """An IDX file (gzip-compressed or plain) of unsigned bytes as a uint8 tensor of its shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # the gzip magic: decide by content, not by the file name
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read IDX file {str(path)!r}: {error}") from error
    return parse_idx(raw, str(path), expected_magic)


def parse_idx(raw: bytes, source: str, expected_magic: Optional[int] = None) -> torch.Tensor:
    """IDX bytes -> uint8 tensor. Layout: 0x00 0x00, type code, number of dimensions, then each
    dimension as a big-endian int32, then the data in row-major order."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{source} is not an IDX file (it does not start with two zero bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{source}: IDX magic number {magic} (0x{magic:08x}), expected {expected_magic} (0x{expected_magic:08x}): "
            "images and labels files swapped, or another file"
        )
    if raw[2] != IDX_UNSIGNED_BYTE:
        raise DataError(f"{source}: IDX type code 0x{raw[2]:02x}, only unsigned bytes (0x08) are supported")
    dimensions = raw[3]
    header_size = 4 + 4 * dimensions
    if len(raw) < header_size:
        raise DataError(f"{source}: truncated IDX header")
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dimensions)]
    expected_size = header_size + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected_size:
        raise DataError(f"{source}: {len(raw)} bytes, but the IDX header {shape} needs {expected_size}: truncated or corrupt")
    # bytearray: a writable buffer, so torch.frombuffer does not warn and the tensor owns its memory.
    return torch.frombuffer(bytearray(raw[header_size:]), dtype=torch.uint8).reshape(shape)


def find_idx_file(directory: Path, stem: str) -> Path:
    """`stem` or `stem`.gz in `directory`; the original MNIST spelling `train-images.idx3-ubyte` too."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"Fashion-MNIST file {stem}.gz not found in {str(directory)!r}: {FASHION_MNIST_HINT}")


class FashionMNIST(Dataset):
    """Fashion-MNIST, 28x28 grayscale, 10 classes, held in memory (47 MB for the training split)."""

    in_memory = True  # make_loader: worker processes would only add copies

    def __init__(self, path: Optional[PathLike] = None, split: str = "train", channels: int = 1) -> None:
        if split not in FASHION_MNIST_SPLITS:
            raise DataError(f"Fashion-MNIST split {split!r} does not exist: choose 'train' or 'test'")
        self.channels = check_channels(channels)
        directory = Path(path) if path is not None else FASHION_MNIST_DIR
        if not directory.is_dir():
            raise DataError(f"Fashion-MNIST folder {str(directory)!r} does not exist: {FASHION_MNIST_HINT}")
        prefix = FASHION_MNIST_SPLITS[split]
        images = read_idx(find_idx_file(directory, f"{prefix}-images-idx3-ubyte"), IDX_IMAGES_MAGIC)
        labels = read_idx(find_idx_file(directory, f"{prefix}-labels-idx1-ubyte"), IDX_LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split")
        if labels.numel() and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{directory}: label {int(labels.max())} in the {split} split, Fashion-MNIST has 10 classes")
        self.images = images.unsqueeze(1)  # uint8 (N, 1, 28, 28); 3 channels are made per batch, not stored
        self.labels = labels.long()  # (N,)
        self.classes = list(FASHION_MNIST_CLASSES)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.with_channels(self.images[index]), int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> "StackedSamples":
        """A whole batch with one index operation: the DataLoader's batched fetch (torch >= 2)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return StackedSamples(self.with_channels(self.images[index]).contiguous(), self.labels[index])

    def with_channels(self, images: torch.Tensor) -> torch.Tensor:
        """(..., 1, H, W) -> (..., channels, H, W): grayscale repeated when RGB is asked for."""
        return images if self.channels == 1 else images.expand(*images.shape[:-3], 3, *images.shape[-2:])


# ----------------------------------------------------------------------------------------------- image files


def check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    return channels


def decode_image(path: Path, channels: int, load_size: Optional[int]) -> Optional[torch.Tensor]:
    """uint8 (C, H, W) from an image file, or None with a warning when the file cannot be decoded.

    The shorter side is resized to `load_size` (bicubic) and the centre square cropped, so that
    images of any size stack into one batch."""
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated or corrupt file fails here, not in the middle of a batch
            image = opened.convert("L" if channels == 1 else "RGB")  # grayscale, palette, RGBA (alpha dropped)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        # OSError covers Pillow's "cannot identify image file" and "image file is truncated";
        # SyntaxError is what its PNG reader raises for a broken chunk.
        warnings.warn(f"skipping unreadable image {path}: {error}", SkippedImageWarning, stacklevel=3)
        return None
    if load_size is not None and (image.width != load_size or image.height != load_size):
        image = center_crop(resize_shorter_side(image, load_size), load_size)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W) or (H, W, 3)
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


class ImageFileDataset(Dataset):
    """Images decoded from files on each access; `samples` is a list of (path, label)."""

    in_memory = False

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], channels: int,
                 load_size: Optional[int]) -> None:
        if load_size is not None and load_size < 1:
            raise DataError(f"load_size must be a positive number of pixels, got {load_size}")
        self.samples = samples
        self.classes = classes
        self.channels = check_channels(channels)
        self.load_size = load_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Optional[tuple[torch.Tensor, int]]:
        path, label = self.samples[index]
        image = decode_image(path, self.channels, self.load_size)
        return None if image is None else (image, label)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def image_files_under(directory: Path) -> list[Path]:
    """Image files in `directory` and its sub-folders, sorted, hidden files and folders left out."""
    found = []
    for root, folders, files in os.walk(directory, followlinks=True):
        folders[:] = sorted(folder for folder in folders if not folder.startswith("."))
        found.extend(Path(root) / name for name in sorted(files) if is_image_file(Path(name)))
    return found


def existing_path(path: Optional[PathLike], what: str) -> Path:
    if path is None:
        raise DataError(f"the {what} needs a path: pass it (data.train_path / data.val_path, or --path)")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} does not exist: check the path")
    return path


class ImageFolder(ImageFileDataset):
    """`root/<class name>/<images>`, one sub-folder per class (sorted names = labels), like torchvision's."""

    def __init__(self, root: PathLike, load_size: Optional[int] = None, channels: int = 3) -> None:
        root = existing_path(root, "image folder")
        if not root.is_dir():
            raise DataError(f"image folder {str(root)!r} is a file: pass the folder that holds one sub-folder per class")
        class_folders = sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
        if not class_folders:
            loose = [entry for entry in root.iterdir() if entry.is_file() and is_image_file(entry)]
            hint = f"{len(loose)} images in it are not in class folders: " if loose else "it holds no images: "
            raise DataError(f"no class folders in {str(root)!r}, {hint}arrange them as {root}/<class name>/<image>.jpg")
        samples = []
        for label, folder in enumerate(class_folders):
            files = image_files_under(folder)
            if not files:
                raise DataError(
                    f"class folder {str(folder)!r} has no images ({'/'.join(IMAGE_EXTENSIONS)}): "
                    "add images to it or remove it"
                )
            samples.extend((file, label) for file in files)
        super().__init__(samples, [folder.name for folder in class_folders], channels, load_size)


def read_list_file(list_file: Path) -> list[tuple[str, str]]:
    """(image path, label name) per row of a CSV (`path,label`) or whitespace-separated list file.

    Blank lines and `#` comments are skipped, and a first row of header words (`path,label`)."""
    rows = []
    text = list_file.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark from spreadsheet exports
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "," in stripped:
            fields = [field.strip() for field in next(csv.reader([stripped]))]
        else:
            fields = stripped.rsplit(None, 1)  # the label is the last word: paths may contain spaces
        if len(fields) != 2 or not all(fields):
            raise DataError(f"{list_file}:{number}: expected 'image_path,label_name', got {line!r}")
        if not rows and {field.lower() for field in fields} <= LIST_HEADER_WORDS:
            continue
        rows.append((fields[0], fields[1]))
    return rows


def sorted_label_names(names: set[str]) -> list[str]:
    """Sorted class names; numerically when all are integers, so that '10' follows '9'."""
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


class ImageList(ImageFileDataset):
    """Images named in a list file, one `image_path,label_name` per line (CSV or whitespace);
    relative paths are relative to the list file's folder."""

    def __init__(self, list_file: PathLike, load_size: Optional[int] = None, channels: int = 3) -> None:
        list_file = existing_path(list_file, "list file")
        if not list_file.is_file():
            raise DataError(f"list file {str(list_file)!r} is a folder: pass a CSV or text file of image_path,label_name")
        rows = read_list_file(list_file)
        if not rows:
            raise DataError(f"no images listed in {str(list_file)!r}: add lines of image_path,label_name")
        paths = [list_file.parent / Path(image).expanduser() for image, _ in rows]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of the {len(rows)} images listed in {str(list_file)!r} do not exist, e.g. "
                f"{', '.join(missing[:3])}: fix the paths (relative ones are relative to the list file's folder)"
            )
        classes = sorted_label_names({label for _, label in rows})
        label_of = {name: index for index, name in enumerate(classes)}
        samples = [(path, label_of[label]) for path, (_, label) in zip(paths, rows)]
        super().__init__(samples, classes, channels, load_size)


# ----------------------------------------------------------------------------------------------- building, batching


def build_dataset(kind: str, path: Optional[PathLike] = None, split: str = "train", load_size: Optional[int] = None,
                  channels: Optional[int] = None) -> Dataset:
    """kind "fashion-mnist" (path: the folder of the IDX files, default Debian's; split "train" or "test"),
    "folder" (path/<class>/<images>) or "list" (a list file). `channels` None: 1 for Fashion-MNIST,
    3 for image files. `load_size` resizes image files at load (shorter side, then centre crop), so
    that batches stack; Fashion-MNIST keeps its 28x28. For files, the path chooses the split."""
    if channels is not None:
        check_channels(channels)  # before reading anything
    if kind == "fashion-mnist":
        return FashionMNIST(path, split, channels or 1)
    if kind == "folder":
        return ImageFolder(existing_path(path, "folder dataset"), load_size, channels or 3)
    if kind == "list":
        return ImageList(existing_path(path, "list dataset"), load_size, channels or 3)
    raise DataError(f"unknown dataset kind {kind!r}: choose 'fashion-mnist', 'folder' or 'list'")


def collate(samples: Sequence[Optional[tuple[torch.Tensor, int]]]) -> Batch:
    """Items -> Batch, leaving out (and counting) the None of unreadable images. Samples an in-memory
    dataset has already stacked (`StackedSamples`) are taken as they are."""
    if isinstance(samples, StackedSamples):
        return Batch(samples.images, samples.labels, 0)
    kept = [sample for sample in samples if sample is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return Batch(torch.empty(0, 0, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), skipped)
    sizes = {tuple(image.shape) for image, _ in kept}
    if len(sizes) > 1:
        raise DataError(
            f"images of different sizes in one batch ({', '.join(str(size) for size in sorted(sizes)[:3])}): "
            "give the dataset a load_size so that every image is resized to one square"
        )
    images = torch.stack([image for image, _ in kept])  # uint8 (B, C, H, W)
    labels = torch.tensor([label for _, label in kept], dtype=torch.long)  # (B,)
    return Batch(images, labels, skipped)


def is_in_memory(dataset: Dataset) -> bool:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return bool(getattr(dataset, "in_memory", False))


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for one epoch, for one process of `world_size`.

    The epoch's order is a function of (seed, epoch) alone, not of how many epochs this process has
    already run, so a resumed run sees the same order as one that never stopped; `set_epoch(epoch,
    start_batch)` also skips the batches a checkpoint says were consumed. Process `rank` takes every
    `world_size`-th index of the shared order, so the union of the processes' k-th batches is the k-th
    batch of one process with world_size times the batch: a single process is the case world_size 1.
    With drop_last the epoch is cut to whole batches on every process; without it, the order wraps
    around so that every process gets the same number of batches (as torch's DistributedSampler)."""

    def __init__(self, length: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside the {world_size} processes of this run")
        self.length, self.batch_size, self.shuffle, self.seed = length, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration yields epoch `epoch`'s batches from `start_batch` on."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise DataError(f"start batch {start_batch} is outside the {self.batches_per_epoch} batches of an epoch")
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def per_process(self) -> int:
        """Indices each process takes from an epoch."""
        if self.drop_last:
            return self.length // self.world_size // self.batch_size * self.batch_size
        return -(-self.length // self.world_size)

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.per_process // self.batch_size)

    def epoch_order(self) -> torch.Tensor:
        """Every process's indices of this epoch, interleaved: process r takes positions r, r + world_size, ..."""
        if not self.shuffle:
            return torch.arange(self.length)
        # SeedSequence mixes (seed, epoch) into one well-spread 32-bit seed (torch's CPU generator only
        # uses 32 bits of its seed, so packing both numbers into one integer would lose the seed).
        mixed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(mixed)
        return torch.randperm(self.length, generator=generator)

    def __iter__(self):
        order = self.epoch_order()
        span = self.per_process * self.world_size
        if span > len(order):  # without drop_last: wrap around so that every process has as many
            order = order.repeat(-(-span // max(len(order), 1)))
        mine = order[:span][self.rank::self.world_size].tolist()
        for index in range(self.start_batch, self.batches_per_epoch):
            yield mine[index * self.batch_size:(index + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0,
                drop_last: bool = False, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader of Batches over an `EpochBatchSampler` (`loader.batch_sampler`): the order is seeded,
    repeatable per epoch, and sharded over `world_size` processes; call `loader.batch_sampler.set_epoch`
    before each epoch.

    In-memory datasets are read in the main process whatever `num_workers` says: a batch is one
    index operation, and worker processes would only add inter-process copies."""
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last, rank, world_size)
    workers = 0 if is_in_memory(dataset) else num_workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        # The loader draws its workers' base seed from this generator; without one it would draw from
        # torch's global generator and shift the augmentation's random numbers on every new epoch.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,  # decoding workers stay up between epochs instead of restarting
    )
