"""Converting checkpoints between layouts and file formats."""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import SwinTransformerV2, SwinV2Config
from .configs import config_for_state, hf_config_json, project_config_json
from .io import TORCH_SUFFIXES, read_checkpoint, write_directory, write_safetensors, write_torch
from .layouts import check_layout, detect_layout, from_project, join_simmim, split_simmim, to_project
from .loading import check_fits

# Layouts whose .pth files wrap the state dict as {'model': ...}, as the official scripts save them.
WRAPPED_LAYOUTS = ("official", "simmim")
DIRECTORY_LAYOUTS = ("project", "hf")


def export_state_dict(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """A model (or a project-layout state dict) in `layout`'s parameter names."""
    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    return from_project(state, layout)


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    source_layout: str | None = None,
    target_layout: str = "project",
    **config_overrides: Any,
) -> Path:
    """Read any supported checkpoint, convert it to `target_layout`, and write `dst` atomically.

    `dst` is a .safetensors file, a torch file (.pth/.pt/.bin; official and SimMIM wrapped as
    {'model': state_dict}), or, for targets "project" and "hf", a directory (no suffix) that
    `swinv2.from_pretrained` / `transformers.Swinv2ForImageClassification.from_pretrained` loads.
    A directory's configuration comes from the source's when it has one, else from the weights' shapes
    with SwinV2-T's img_size 256 / window_size 8; `config_overrides` (img_size=, window_size=, ...) win."""
    dst = Path(dst)
    check_layout(target_layout)
    if not dst.suffix and target_layout not in DIRECTORY_LAYOUTS:
        raise CheckpointError(
            f"a directory output holds the {' or '.join(DIRECTORY_LAYOUTS)} layout, not {target_layout!r}; "
            f"give {dst} a .safetensors or .pth suffix"
        )
    config_overrides = {name: value for name, value in config_overrides.items() if value is not None}
    tensors, source_config = read_checkpoint(src)
    layout = source_layout or detect_layout(tensors)
    project, extras = split_simmim(tensors) if layout == "simmim" else (to_project(tensors, layout), {})
    if target_layout == "simmim":
        converted = join_simmim(project, extras)
    else:
        if extras:
            warnings.warn(
                f"dropping the SimMIM mask token and decoder ({', '.join(extras)}): "
                f"the {target_layout} layout has no place for them",
                stacklevel=2,
            )
        converted = from_project(project, target_layout)

    if not dst.suffix:
        config = directory_config(project, source_config, config_overrides)
        return write_layout_directory(dst, project, converted, config, target_layout)
    if config_overrides:
        warnings.warn(
            f"config overrides {sorted(config_overrides)} only apply to directory outputs; "
            f"{dst.name} holds weights alone",
            stacklevel=2,
        )
    if dst.suffix == ".safetensors":
        write_safetensors(converted, dst)
    elif dst.suffix in TORCH_SUFFIXES:
        write_torch({"model": converted} if target_layout in WRAPPED_LAYOUTS else converted, dst)
    else:
        raise CheckpointError(
            f"cannot tell the output format of {dst}: use a .safetensors or {'/'.join(TORCH_SUFFIXES)} "
            "file, or a path without suffix for a directory"
        )
    return dst


def directory_config(
    project: Mapping[str, torch.Tensor], source: SwinV2Config | None, overrides: Mapping[str, Any]
) -> SwinV2Config:
    """The configuration for a directory, checked against the weights before anything is written."""
    config = config_for_state(project, source, overrides)
    with torch.device("meta"):  # shapes only, no memory
        expected = SwinTransformerV2(config).state_dict()
    check_fits(project, expected, "project")
    return config


def write_layout_directory(
    directory: Path, project: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor],
    config: SwinV2Config, layout: str,
) -> Path:
    if layout == "hf":
        return write_directory(directory, converted, hf_config_json(config))
    return write_directory(directory, project, project_config_json(config))
