"""Model configurations that travel with checkpoints: ours, Hugging Face's, and what shapes reveal."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import CheckpointError
from ..models import SwinV2Config

# Marks a config.json written by `save_pretrained`; bump the version if the layout ever changes.
PROJECT_FORMAT = {"format": "swinv2", "format_version": 1}

BLOCK_KEY = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
STAGE_KEY = re.compile(r"^layers\.(\d+)\.")


# --------------------------------------------------------------------------------------- ours
def project_config_json(config: SwinV2Config) -> dict[str, Any]:
    return {**PROJECT_FORMAT, **config.to_dict()}


def is_project_config(values: Mapping[str, Any]) -> bool:
    return values.get("format") == PROJECT_FORMAT["format"]


def config_from_project_json(values: Mapping[str, Any]) -> SwinV2Config:
    version = values.get("format_version", 1)
    if version > PROJECT_FORMAT["format_version"]:
        raise CheckpointError(
            f"this config.json has format_version {version}, newer than this swinv2 understands "
            f"({PROJECT_FORMAT['format_version']}); upgrade swinv2"
        )
    return SwinV2Config.from_dict({key: value for key, value in values.items() if key not in PROJECT_FORMAT})


# ------------------------------------------------------------------------------- Hugging Face
def config_from_hf(values: Mapping[str, Any], num_classes: int) -> SwinV2Config:
    """transformers' Swinv2Config (as a config.json dict) in our terms; `num_classes` from the classifier."""
    if values.get("hidden_act", "gelu") != "gelu" or values.get("layer_norm_eps", 1e-5) != 1e-5:
        raise CheckpointError(
            f"this Hugging Face config uses hidden_act={values.get('hidden_act')!r}, "
            f"layer_norm_eps={values.get('layer_norm_eps')}; swinv2 builds GELU and LayerNorm eps 1e-5 only"
        )
    depths = list(values.get("depths", (2, 2, 6, 2)))
    return SwinV2Config(
        img_size=values.get("image_size", 224),
        patch_size=square(values.get("patch_size", 4), "patch_size"),
        in_chans=values.get("num_channels", 3),
        num_classes=num_classes,
        embed_dim=values.get("embed_dim", 96),
        depths=depths,
        num_heads=values.get("num_heads", (3, 6, 12, 24)),
        window_size=values.get("window_size", 7),
        mlp_ratio=values.get("mlp_ratio", 4.0),
        qkv_bias=values.get("qkv_bias", True),
        drop_rate=values.get("hidden_dropout_prob", 0.0),
        attn_drop_rate=values.get("attention_probs_dropout_prob", 0.0),
        drop_path_rate=values.get("drop_path_rate", 0.1),
        ape=values.get("use_absolute_embeddings", False),
        pretrained_window_sizes=values.get("pretrained_window_sizes") or [0] * len(depths),
    )


def square(value: Any, name: str) -> int:
    if isinstance(value, int):
        return value
    height, width = value
    if height != width:
        raise CheckpointError(f"{name} {height}x{width} is not square; swinv2 supports square {name} only")
    return int(height)


def hf_config_json(config: SwinV2Config) -> dict[str, Any]:
    """A config.json that `transformers.Swinv2ForImageClassification.from_pretrained` builds our model from."""
    refuse_for_hf(config)
    height, width = config.img_size
    labels = {str(index): f"LABEL_{index}" for index in range(config.num_classes)}
    return {
        "architectures": ["Swinv2ForImageClassification"],
        "model_type": "swinv2",
        "image_size": height if height == width else [height, width],
        "patch_size": config.patch_size,
        "num_channels": config.in_chans,
        "embed_dim": config.embed_dim,
        "depths": list(config.depths),
        "num_heads": list(config.num_heads),
        "window_size": config.window_size[0],
        "pretrained_window_sizes": [size[0] for size in config.pretrained_window_sizes],
        "mlp_ratio": config.mlp_ratio,
        "qkv_bias": config.qkv_bias,
        "hidden_dropout_prob": config.drop_rate,
        "attention_probs_dropout_prob": config.attn_drop_rate,
        "drop_path_rate": config.drop_path_rate,
        "use_absolute_embeddings": False,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "encoder_stride": config.patch_size * 2 ** (config.num_stages - 1),
        "id2label": labels,
        "label2id": {name: int(index) for index, name in labels.items()},
    }


def refuse_for_hf(config: SwinV2Config) -> None:
    """What transformers' Swinv2 cannot express: say so rather than write a model that differs."""
    problems = []
    if config.window_size[0] != config.window_size[1] or any(p[0] != p[1] for p in config.pretrained_window_sizes):
        problems.append("non-square windows (its window_size is one int)")
    if config.ape:
        problems.append("the absolute position embedding (its (1, N+1, C) embedding breaks its forward)")
    if config.extra_norm_period:
        problems.append("the SwinV2-H/G main-branch LayerNorm (main_branch_norm)")
    if (config.norm, config.attention, config.position_bias) != ("res_post", "cosine", "cpb_log"):
        problems.append("the Swin v1 / ablation switches (norm, attention, position_bias)")
    if not config.patch_norm:
        problems.append("patch_norm=False (it always normalises the patch embedding)")
    if problems:
        raise CheckpointError(
            "transformers' Swinv2 cannot represent " + "; ".join(problems)
            + "; export to the 'official' or 'project' layout instead"
        )


# ---------------------------------------------------------------------------- from the shapes
def infer_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Structural fields readable from a project-layout state dict's shapes (SwinV2Config names).

    Window size and image size are not in the weights (the CPB MLP works for any window), except
    the image size of a model with an absolute position embedding (1, N, C)."""
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError(
            "cannot read the configuration: no patch_embed.proj.weight in the state dict; "
            "convert it to the project layout first (to_project)"
        )
    embed_dim, in_chans, patch_size, _ = state["patch_embed.proj.weight"].shape  # (C, in_chans, p, p)
    try:
        values = structure(state, embed_dim)
    except KeyError as error:
        raise CheckpointError(f"cannot read the configuration: {error.args[0]} is missing from the state dict") from None
    values.update(embed_dim=embed_dim, in_chans=in_chans, patch_size=patch_size)
    if values["ape"]:
        side = math.isqrt(state["absolute_pos_embed"].shape[1])  # (1, N, C), N = (img / patch)^2 if square
        if side * side == state["absolute_pos_embed"].shape[1]:
            values["img_size"] = side * patch_size
    return values


def structure(state: Mapping[str, torch.Tensor], embed_dim: int) -> dict[str, Any]:
    """Stages, blocks, heads and the optional parts, from which keys exist and their shapes."""
    blocks = block_indices(state)
    stages = sorted(blocks)
    values: dict[str, Any] = dict(
        depths=[len(blocks[stage]) for stage in stages],
        # logit_scale is (heads, 1, 1): one temperature per head.
        num_heads=[state[f"layers.{stage}.blocks.0.attn.logit_scale"].shape[0] for stage in stages],
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        qkv_bias="layers.0.blocks.0.attn.q_bias" in state,
        ape="absolute_pos_embed" in state,
        patch_norm="patch_embed.norm.weight" in state,
        extra_norm_period=extra_norm_period(state),
    )
    if "layers.0.blocks.0.mlp.fc1.weight" in state:
        values["mlp_ratio"] = state["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim  # (rC, C)
    return values


def block_indices(state: Mapping[str, torch.Tensor]) -> dict[int, set[int]]:
    """{stage: {block indices}} from the keys `layers.i.blocks.j.*`."""
    blocks: dict[int, set[int]] = {}
    for key in state:
        stage = STAGE_KEY.match(key)
        if stage:
            blocks.setdefault(int(stage.group(1)), set())
        block = BLOCK_KEY.match(key)
        if block:
            blocks[int(block.group(1))].add(int(block.group(2)))
    return blocks


def extra_norm_period(state: Mapping[str, torch.Tensor]) -> int:
    """Blocks j with (j + 1) % period == 0 carry main_branch_norm: the first one gives the period."""
    positions = [int(match.group(2)) + 1 for key in state if (match := BLOCK_KEY.match(key)) and ".main_branch_norm." in key]
    return min(positions, default=0)


def config_for_state(
    state: Mapping[str, torch.Tensor], source: SwinV2Config | None, overrides: Mapping[str, Any]
) -> SwinV2Config:
    """The configuration a converted directory gets: the source's own when it has one, else the
    structure read from the shapes with SwinV2-T's 256 px / window 8; `overrides` win either way."""
    if source is not None:
        return source.replace(**overrides)
    return SwinV2Config(**{**infer_config(state), **overrides})
