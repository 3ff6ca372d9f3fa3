"""Shared fixtures: a tiny model, randomised parameters, and official-style checkpoints written by hand."""
from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from swinv2 import SwinTransformerV2, SwinV2Config

# Under pytest-xdist every worker would start a thread per core: 2 workers x 2 threads on 2 cores
# spin against each other and run ~20x slower. Share the cores out instead.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))

# Small enough for milliseconds on 2 cores, and still exercising every part: shifted windows
# in stages 0 and 1 (16x16 and 8x8 maps, window 4), an unshifted stage 2 (4x4 <= 4), and a clamped
# stage 3 (2x2 map, window 2). Head dim 32 everywhere, as in the standard variants.
TINY_ARCHITECTURE = dict(img_size=64, embed_dim=32, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8), window_size=4)
TINY_CLASSES = 10
CPB_MLP_NAMES = ("cpb_mlp", "continuous_position_bias_mlp")  # ours, Hugging Face's


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give EVERY parameter a random, non-degenerate value, whatever the implementation names it:
    LayerNorm weight ~ 1 + 0.1 N, Linear/Conv weight ~ N / sqrt(fan_in), biases ~ 0.1 N,
    logit_scale ~ ln 10 + 0.5 N, and a CPB MLP output large enough that 16 * sigmoid(bias) varies."""
    generator = torch.Generator().manual_seed(seed)

    def fill(tensor: torch.Tensor, std: float, mean: float = 0.0) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std + mean)

    with torch.no_grad():
        done: set[int] = set()
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                fill(module.weight, 0.1, mean=1.0)
                fill(module.bias, 0.1)
            elif isinstance(module, (nn.Linear, nn.Conv2d)):
                fill(module.weight, 1 / math.sqrt(module.weight[0].numel()))
                if module.bias is not None:
                    fill(module.bias, 0.1)
            else:
                continue
            done.update(id(parameter) for parameter in module.parameters())
        for name, parameter in model.named_parameters():
            if id(parameter) in done:
                continue
            if name.endswith("logit_scale"):
                fill(parameter, 0.5, mean=math.log(10.0))  # (heads, 1, 1), below the ln 100 clamp
            else:  # q_bias, v_bias, mask token, position embedding
                fill(parameter, 0.1)
        for name, module in model.named_modules():
            if name.endswith(CPB_MLP_NAMES):
                fill(module[2].weight, 0.3)  # Linear(512, heads): pre-sigmoid bias with std ~ 2
    assert_randomized(model)
    return model


def assert_randomized(model: nn.Module) -> None:
    """Guard: no parameter is left at a constant (an all-zero bias or all-one norm hides errors),
    and every continuous position bias varies across offsets."""
    for name, parameter in model.named_parameters():
        assert parameter.numel() == 1 or parameter.std() > 1e-3, f"{name} is constant"
        assert not torch.all(parameter == 0) and not torch.all(parameter == 1), f"{name} is trivial"
    with torch.no_grad():
        for name, module in model.named_modules():
            mlp = next((getattr(module, child) for child in CPB_MLP_NAMES if hasattr(module, child)), None)
            if mlp is not None:
                bias = 16 * torch.sigmoid(mlp(module.relative_coords_table))
                assert bias.std() > 1.0, f"{name}: position bias barely varies (std {bias.std():.3f})"


def official_buffers(
    state: dict[str, torch.Tensor], img_size: int, window_size: int, depths: tuple[int, ...], patch_size: int = 4
) -> dict[str, torch.Tensor]:
    """`state` plus the buffers official checkpoints carry, shaped by the official rules (SPEC 1) and
    filled with junk: a loader that used them instead of rebuilding would give other outputs.

    Per block: relative_coords_table (1, 2W-1, 2W-1, 2), relative_position_index (N, N), and on
    shifted blocks attn_mask (nW, N, N), with W = min(map, window), shifted = odd block and map > window."""
    generator = torch.Generator().manual_seed(1234)
    buffers = dict(state)
    for stage, depth in enumerate(depths):
        resolution = img_size // patch_size // 2**stage
        window = min(resolution, window_size)
        tokens = window * window
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}."
            buffers[prefix + "attn.relative_coords_table"] = torch.randn(1, 2 * window - 1, 2 * window - 1, 2, generator=generator)
            buffers[prefix + "attn.relative_position_index"] = torch.randint(
                0, (2 * window - 1) ** 2, (tokens, tokens), generator=generator
            )
            if block % 2 == 1 and resolution > window_size:
                windows = (resolution // window) ** 2
                buffers[prefix + "attn_mask"] = torch.randn(windows, tokens, tokens, generator=generator)
    return buffers


@pytest.fixture
def tiny_config() -> SwinV2Config:
    return SwinV2Config(**TINY_ARCHITECTURE, num_classes=TINY_CLASSES, drop_path_rate=0.0)


@pytest.fixture
def tiny_model(tiny_config: SwinV2Config) -> SwinTransformerV2:
    """A tiny model with every parameter random, in eval mode."""
    return randomize_(SwinTransformerV2(tiny_config)).eval()


@pytest.fixture
def tiny_input() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
