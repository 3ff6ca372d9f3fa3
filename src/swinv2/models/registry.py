"""Named configurations (the official release's names, plus H and G from the paper) and `create_model`."""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .backbone import SwinTransformerV2
from .config import SwinV2Config

# Width, depth and heads per size (paper Table 2 / SPEC section 4); drop path from the official configs.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), drop_path_rate=0.2),
    # H and G are not in the official release; the paper adds a main-branch LayerNorm every 6 layers.
    "huge": dict(embed_dim=352, depths=(2, 2, 18, 2), num_heads=(11, 22, 44, 88), drop_path_rate=0.2,
                 extra_norm_period=6),
    "giant": dict(embed_dim=512, depths=(2, 2, 42, 4), num_heads=(16, 32, 64, 128), drop_path_rate=0.2,
                  extra_norm_period=6),
}

IMAGENET_22K_CLASSES = 21841
# Fine-tuned from 192/w12: the last stage (6x6 at 192 px) was pre-trained with a clamped window of 6.
FROM_WINDOW_12 = ((12, 12), (12, 12), (12, 12), (6, 6))

_REGISTRY: dict[str, SwinV2Config] = {}


def register_model(name: str, config: SwinV2Config) -> None:
    """Add a named configuration that `create_model(name)` builds."""
    _REGISTRY[name] = config


def _register_defaults() -> None:
    for size in ("tiny", "small", "base"):
        for window in (8, 16):
            register_model(f"swinv2_{size}_window{window}_256",
                           SwinV2Config(img_size=256, window_size=window, **SIZES[size]))
    for size in ("base", "large", "huge", "giant"):
        # ImageNet-22K pre-training at 192 px; H and G were pre-trained the same way in the paper.
        classes = IMAGENET_22K_CLASSES if size in ("base", "large") else 1000
        register_model(f"swinv2_{size}_window12_192",
                       SwinV2Config(img_size=192, window_size=12, num_classes=classes, **SIZES[size]))
    fine_tunes = {
        "base": [(16, 256), (24, 384)],
        "large": [(16, 256), (24, 384)],
        "huge": [(32, 512)],
        "giant": [(40, 640)],
    }
    for size, targets in fine_tunes.items():
        for window, img_size in targets:
            register_model(
                f"swinv2_{size}_window12to{window}_192to{img_size}",
                SwinV2Config(img_size=img_size, window_size=window, pretrained_window_sizes=FROM_WINDOW_12,
                             **SIZES[size]),
            )


_register_defaults()


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_config(name: str, **overrides: Any) -> SwinV2Config:
    """The named configuration with `overrides` (official argument names) applied."""
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if name.replace("-", "_") in n] or list_models()
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(close)}")
    return _REGISTRY[name].replace(**overrides)


def create_model(name: str, pretrained: str | Path | None = None, **overrides: Any) -> SwinTransformerV2:
    """Build a registered model, optionally loading weights from any supported checkpoint.

    `overrides` are constructor arguments by their official names (img_size, window_size,
    pretrained_window_sizes, num_classes, in_chans, drop_path_rate, ...). With `pretrained`, a head of
    another class count is re-initialised only when `num_classes` is passed explicitly."""
    config = get_config(name, **overrides)
    if pretrained is None:
        return SwinTransformerV2(config)
    from ..checkpoints import load_pretrained

    model = SwinTransformerV2(config)
    load_pretrained(model, pretrained, reset_head="num_classes" in overrides)
    return model


def create_on_meta(name: str, **overrides: Any) -> SwinTransformerV2:
    """Build without allocating parameter memory, to count parameters of H and G."""
    with torch.device("meta"):
        return SwinTransformerV2(get_config(name, **overrides))
