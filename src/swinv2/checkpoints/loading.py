"""Weights into models: strict loading with one readable report, head re-initialisation, and
the save_pretrained / from_pretrained directory format.

Buffers (coordinate tables, position index, shift masks) are never taken from a file: the model
rebuilt them for its own window and resolution, and the CPB MLP that reads them transfers as is.
That is what lets window-16 weights load into a window-8 model. Swin v1 bias tables (the `position_bias=
"table"` ablation) are parameters sized by the window: one of another window is resized bicubically, as
`set_input_size` does, so those checkpoints fine-tune at another window too."""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import SwinTransformerV2
from ..models.position_bias import resize_bias_table
from .configs import infer_config, project_config_json
from .io import (
    TORCH_SUFFIXES,
    read_checkpoint,
    write_directory,
    write_safetensors,
    write_torch,
)
from .layouts import detect_layout, join_simmim, split_simmim, to_project

HEAD_KEYS = ("head.weight", "head.bias")  # (classes, 8C), (classes,)


def load_state_dict_into(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], layout: str | None = None, reset_head: bool = False
) -> None:
    """Load a state dict of any layout into `model`, strictly.

    Every missing, unexpected and mis-shaped key is listed in one `CheckpointError`. A head of another
    class count is an error unless `reset_head`, which keeps the model's freshly initialised head;
    a checkpoint without a head (SimMIM) keeps it too. Both warn."""
    layout = layout or detect_layout(state_dict)
    state = to_project(state_dict, layout)
    config = getattr(model, "config", None)
    if config is not None and config.features_only:
        # A dense backbone has no final norm and no classifier: a classifier checkpoint's are not for it.
        state = {key: value for key, value in state.items() if not key.startswith(("norm.", "head."))}
    state = fit_bias_tables(model, state)
    expected = model.state_dict()
    # The body first: when nothing fits, advice about the head would mislead.
    check_fits(state, expected, layout, ignore=HEAD_KEYS)
    state = resolve_head(state, expected, reset_head)
    check_fits(state, expected, layout)
    model.load_state_dict(state, strict=True)


def fit_bias_tables(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with each square Swin v1 bias table of another window resized to the model's window.
    Anything else that does not fit is left for `check_fits` to report."""
    fitted = dict(state)
    for key, table in state.items():
        if not key.endswith(".relative_position_bias_table") or table.dim() != 2:
            continue
        try:
            module = model.get_submodule(key.rsplit(".", 1)[0])
        except AttributeError:
            continue
        wanted = getattr(module, "bias_table_size", None)
        side = math.isqrt(table.shape[0])
        if wanted is None or table.shape[0] == math.prod(wanted) or side * side != table.shape[0]:
            continue
        if table.shape[1] != module.num_heads:
            continue
        fitted[key] = resize_bias_table(table, (side, side), wanted)
    return fitted


def load_pretrained(model: nn.Module, path: str | os.PathLike, reset_head: bool = False) -> nn.Module:
    """Read any supported checkpoint file or directory into `model` (see `load_state_dict_into`)."""
    state, _ = read_checkpoint(path)
    load_state_dict_into(model, state, reset_head=reset_head)
    return model


def classes(state: Mapping[str, torch.Tensor]) -> int:
    return state["head.weight"].shape[0] if "head.weight" in state else 0


def resolve_head(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], reset_head: bool
) -> dict[str, torch.Tensor]:
    """The state to load, with the model's own head where the checkpoint's cannot be used."""
    model_head = {key: expected[key] for key in HEAD_KEYS if key in expected}
    checkpoint_head = {key: state[key] for key in HEAD_KEYS if key in state}
    body = {key: value for key, value in state.items() if key not in HEAD_KEYS}
    if not checkpoint_head:
        if model_head:
            warnings.warn(
                f"the checkpoint has no classification head (e.g. SimMIM pre-training): the model keeps its "
                f"freshly initialised {classes(expected)}-class head; fine-tune it before use",
                stacklevel=3,
            )
        return {**body, **model_head}
    if {key: value.shape for key, value in checkpoint_head.items()} == {key: value.shape for key, value in model_head.items()}:
        return state
    found, wanted = classes(state), classes(expected)
    if not reset_head:
        raise CheckpointError(
            f"the checkpoint's classification head has {found} classes, the model's has {wanted}. "
            f"Pass num_classes={found} to keep the checkpoint's head, or num_classes={wanted} (your class count) "
            f"to re-initialise the head, e.g. create_model(name, pretrained=path, num_classes={wanted})"
        )
    warnings.warn(
        f"re-initialised the classification head: the checkpoint's has {found} classes, the model's {wanted}",
        stacklevel=3,
    )
    return {**body, **model_head}


def check_fits(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], layout: str, ignore: tuple[str, ...] = ()
) -> None:
    """Raise one `CheckpointError` that lists every key that does not fit, with its shapes."""
    missing = [key for key in expected if key not in state and key not in ignore]
    unexpected = [key for key in state if key not in expected and key not in ignore]
    misshaped = [
        key for key in expected if key in state and key not in ignore and state[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or misshaped):
        return
    lines = [
        f"the checkpoint ({layout} layout) does not fit the model: {len(missing)} missing, "
        f"{len(unexpected)} unexpected and {len(misshaped)} mis-shaped keys"
    ]
    lines += section("missing from the checkpoint", [f"{key}: expected {shape(expected[key])}" for key in missing])
    lines += section("unexpected in the checkpoint", [f"{key}: found {shape(state[key])}" for key in unexpected])
    lines += section(
        "wrong shape", [f"{key}: expected {shape(expected[key])}, found {shape(state[key])}" for key in misshaped]
    )
    lines.append(structure_hint(state))
    raise CheckpointError("\n".join(lines))


def section(title: str, entries: list[str]) -> list[str]:
    return [f"  {title} ({len(entries)}):"] + [f"    {entry}" for entry in entries] if entries else []


def shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def structure_hint(state: Mapping[str, torch.Tensor]) -> str:
    """What the checkpoint's shapes say, so that the user can build a model that matches."""
    if "encoder.patch_embed.proj.weight" in state:  # SimMIM: the backbone sits under `encoder.`
        state = {key.removeprefix("encoder."): value for key, value in state.items()}
    try:
        found = infer_config(state)
    except CheckpointError:
        return "Check that the checkpoint is a Swin Transformer V2 of the model's size."
    fields = ", ".join(f"{name}={found[name]}" for name in ("embed_dim", "depths", "num_heads", "num_classes"))
    return f"The checkpoint's shapes say {fields}: build the model with matching arguments."


# ------------------------------------------------------------------------------- directories
def save_pretrained(model: SwinTransformerV2, directory: str | os.PathLike) -> Path:
    """Write `directory`/model.safetensors and config.json (last), each atomically."""
    return write_directory(Path(directory), model.state_dict(), project_config_json(model.config))


def from_pretrained(directory: str | os.PathLike, **overrides: Any) -> SwinTransformerV2:
    """Build and load a model from a `save_pretrained` (or Hugging Face) directory.

    `overrides` change the stored configuration (img_size, window_size, ...); with num_classes the
    head is re-initialised when its class count differs."""
    state, config = read_checkpoint(directory)
    if config is None:
        raise CheckpointError(
            f"{directory} has no config.json to build a model from; "
            "use swinv2.create_model(name, pretrained=path) with the model's name"
        )
    model = SwinTransformerV2(config.replace(**overrides))
    load_state_dict_into(model, state, reset_head="num_classes" in overrides)
    return model


# ------------------------------------------------------------------------------------ SimMIM
def load_simmim_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load an official-layout SimMIM state dict (ours or the official release's: buffers and `rpe_mlp`
    names are handled as for the backbone) into a `SimMIM` model, strictly, with one report.

    Window buffers are rebuilt by the model, so the checkpoint may come from another window size."""
    layout = detect_layout(state_dict)
    if layout != "simmim":
        raise CheckpointError(
            f"this is a {layout}-layout checkpoint, not a SimMIM one (no encoder.mask_token or decoder.0); "
            "to fine-tune from it use create_model(name, pretrained=path); a SimMIM model loads only SimMIM "
            "pre-training checkpoints"
        )
    encoder, extras = split_simmim(state_dict)
    state = join_simmim(encoder, extras)  # the official names with `encoder.`, without buffers
    check_fits(state, model.state_dict(), layout)
    model.load_state_dict(state, strict=True)


def load_simmim(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Read a SimMIM checkpoint file into `model` (see `load_simmim_state_dict`)."""
    state, _ = read_checkpoint(path)
    load_simmim_state_dict(model, state)
    return model


def save_simmim(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write a `SimMIM` model in the official SimMIM layout, atomically: `{'model': state_dict}` in a
    torch file (.pth/.pt/.bin/.ckpt), or the bare state dict in a .safetensors file.

    The official pre-training code and `create_model(name, pretrained=path)` (fine-tuning) read it."""
    path = Path(path)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    if path.suffix == ".safetensors":
        write_safetensors(state, path)
    elif path.suffix in TORCH_SUFFIXES:
        write_torch({"model": state}, path)
    else:
        raise CheckpointError(
            f"cannot tell the file type of {path}: name it .safetensors or {'/'.join(TORCH_SUFFIXES)} (torch)"
        )
    return path
