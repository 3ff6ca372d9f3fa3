"""Checkpoint files: reading tensors without ever running pickled code, and writing atomically.

Readers return a flat {name: tensor} mapping in whatever layout the file holds; `read_checkpoint`
also returns the model configuration when a directory carries one. Writers go through a temporary
file in the destination's directory, flushed to disk and renamed over the destination, so a crash
or a full disk never leaves a half-written checkpoint under the final name."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ConfigError
from ..models import SwinV2Config
from .configs import config_from_hf, config_from_project_json, is_project_config

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Weight files of a Hugging Face directory, in the order transformers prefers them.
HF_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Wrappers around the state dict: official and SimMIM save {'model': ...}, Lightning and others {'state_dict': ...}.
WRAPPER_KEYS = ("model", "state_dict")
# A safetensors header is JSON of at most a few MB; a text file read as a header length is astronomically large.
MAX_SAFETENSORS_HEADER = 100 * 2**20

RESAVE_WEIGHTS_ONLY = (
    "In an environment where you trust the file, re-save the weights alone: "
    "`ckpt = torch.load(path, weights_only=False); torch.save({'model': ckpt['model']}, 'weights.pth')`"
)


# ------------------------------------------------------------------------------------------ reading
def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], SwinV2Config | None]:
    """The tensors of a checkpoint and, when it carries one, its model configuration.

    `path` is a project directory (config.json + model.safetensors, see `save_pretrained`), a Hugging Face
    directory (config.json with model_type "swinv2"), a .safetensors file, or a torch file
    (.pth/.pt/.bin) loaded with weights_only=True. Raises `CheckpointError` naming the problem and the fix."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist; check the spelling and the working directory")
    if path.is_dir():
        return read_directory(path)
    return read_tensor_file(path), None


def read_directory(directory: Path) -> tuple[dict[str, torch.Tensor], SwinV2Config | None]:
    """A project or Hugging Face directory; a directory of bare weights gives no configuration."""
    config_path = directory / CONFIG_NAME
    if not config_path.exists():
        return read_tensor_file(directory_weights(directory, (WEIGHTS_NAME, "pytorch_model.bin"))), None
    values = read_json(config_path)
    if is_project_config(values):
        tensors = read_tensor_file(directory_weights(directory, (WEIGHTS_NAME,)))
        return tensors, wrap_config_error(config_path, config_from_project_json, values)
    if values.get("model_type") == "swinv2":
        tensors = read_hf_weights(directory)
        # The classifier's rows are the truth; a bare Swinv2Model has none.
        classifier = tensors.get("classifier.weight")
        num_classes = 0 if classifier is None else classifier.shape[0]
        return tensors, wrap_config_error(config_path, config_from_hf, values, num_classes)
    raise CheckpointError(
        f"{config_path} is neither a swinv2 project config nor a Hugging Face Swin V2 config "
        f"(model_type {values.get('model_type')!r}); point to a Swin Transformer V2 checkpoint"
    )


def directory_weights(directory: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (directory / name).exists():
            return directory / name
    raise CheckpointError(
        f"{directory} has no weights file (looked for {', '.join(names)}); "
        "pass the weights file itself, or a directory written by save_pretrained"
    )


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors or pytorch_model.bin, or the shards an index file lists."""
    weights = directory_weights(directory, HF_WEIGHT_NAMES)
    if not weights.name.endswith(".index.json"):
        return read_tensor_file(weights)
    shards = sorted(set(read_json(weights).get("weight_map", {}).values()))
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors.update(read_tensor_file(directory / shard))
    return tensors


def read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); restore or rewrite the file") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(values).__name__}")
    return values


def wrap_config_error(config_path: Path, build: Callable[..., SwinV2Config], *arguments: Any) -> SwinV2Config:
    """Name the file when its configuration is not one we can build."""
    try:
        return build(*arguments)
    except ConfigError as error:
        raise CheckpointError(f"{config_path}: {error}") from None


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """A single weights file, recognised by its first bytes rather than its suffix."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; pass a checkpoint file or directory")
    kind = sniff(path)
    if kind == "safetensors":
        return read_safetensors(path)
    if kind in ("zip", "pickle"):
        return state_dict_of(read_torch(path, kind), path)
    raise CheckpointError(
        f"{path} is not a checkpoint: it is neither a safetensors file nor a PyTorch file "
        f"({describe_start(path)}); pass a .safetensors, .pth/.pt/.bin file or a checkpoint directory"
    )


def sniff(path: Path) -> str:
    """'safetensors', 'zip' (torch.save since 1.6), 'pickle' (older torch.save) or 'unknown'."""
    with open(path, "rb") as file:
        start = file.read(9)
    if start.startswith(b"PK\x03\x04"):
        return "zip"
    if len(start) == 9 and start[8:9] == b"{" and int.from_bytes(start[:8], "little") <= MAX_SAFETENSORS_HEADER:
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if start[:1] == b"\x80":
        return "pickle"  # pickle protocol 2+ opcode
    return "unknown"


def describe_start(path: Path) -> str:
    start = path.read_bytes()[:40]
    if not start:
        return "the file is empty"
    try:
        return f"it starts with the text {start.decode('utf-8')!r}"
    except UnicodeDecodeError:
        return f"it starts with the bytes {start[:16]!r}"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except SafetensorError as error:
        raise CheckpointError(
            f"{path} is a truncated or corrupt safetensors file ({error}, {path.stat().st_size} bytes on disk); "
            "download or copy it again"
        ) from None


def read_torch(path: Path, kind: str) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, never code."""
    if kind == "zip" and not zip_is_complete(path):
        raise CheckpointError(
            f"{path} is a truncated or corrupt PyTorch file: its zip directory is missing "
            f"({path.stat().st_size} bytes on disk); download or copy it again"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        needed = re.search(r"GLOBAL ([\w.]+)", message)
        if "Weights only load failed" in message and needed and "truncated" not in message:
            raise CheckpointError(
                f"{path} needs Python code to load (it pickles {needed.group(1)}, e.g. a training config or a "
                "whole model object); swinv2 never unpickles code, because a pickle can run anything. "
                + RESAVE_WEIGHTS_ONLY
            ) from None
        raise CheckpointError(corrupt_torch_message(path, message)) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as error:
        raise CheckpointError(corrupt_torch_message(path, str(error))) from None


def zip_is_complete(path: Path) -> bool:
    """A zip's directory sits at its end: a cut-short file has none."""
    return zipfile.is_zipfile(path)


def corrupt_torch_message(path: Path, message: str) -> str:
    # torch's weights-only errors open with advice to load unsafely; keep only the unpickler's finding.
    finding = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
    detail = finding.group(1) if finding else (message.strip().splitlines() or ["no detail"])[0]
    return (
        f"{path} is a truncated or corrupt PyTorch file, or not one written by torch.save ({detail}); "
        "download or copy it again, or re-save it with torch.save(state_dict, path)"
    )


def state_dict_of(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap {'model': ...} / {'state_dict': ...} and keep the tensors; DDP's 'module.' prefix goes."""
    while isinstance(loaded, Mapping):
        inner = next((loaded[key] for key in WRAPPER_KEYS if isinstance(loaded.get(key), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state dict; "
            "save model.state_dict() (or {'model': model.state_dict()}) instead"
        )
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path} is not a checkpoint: it holds no tensors (keys: {', '.join(map(str, list(loaded)[:8])) or 'none'}); "
            "pass the file that holds the model weights"
        )
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module."):]: value for key, value in tensors.items()}
    return tensors


# ------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """A temporary path next to `destination`; on success it is synced and renamed onto it.

    Same directory, so os.replace is an atomic rename on one filesystem. On any error the
    temporary file is removed and `destination` keeps its old content."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        # The writer closed the file; fsync through a new handle flushes the same inode.
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    sync_directory(destination.parent)


def sync_directory(directory: Path) -> None:
    """Make the rename itself durable; not every platform can open a directory."""
    with contextlib.suppress(OSError):
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """'format': 'pt' metadata, which transformers requires of model.safetensors."""
    plain = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as temporary:
        save_file(plain, temporary, metadata={"format": "pt"})


def write_torch(obj: Any, path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


def write_json(values: Mapping[str, Any], path: Path) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_directory(directory: Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Path:
    """model.safetensors, then config.json: a directory with a config always has its weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, directory / WEIGHTS_NAME)
    write_json(config, directory / CONFIG_NAME)
    return directory
