"""Optimizer groups, lr scaling, the warm-up cosine schedule and the weight EMA, each against numbers
worked out by hand here (SPEC sections 1 and 3, the official main.py and timm's CosineLRScheduler)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import swinv2
from swinv2.errors import ConfigError
from swinv2.train import ModelEma, WarmupCosineSchedule, build_optimizer, layer_id, parameter_groups, scaled_lr
from swinv2.train.config import OptimSection

TINY_DEPTHS = (2, 2, 6, 2)  # SwinV2-T: L = 2 + 2 + 6 + 2 + 2 = 14 layers, ids 0..13

# (name, layer id) worked out by hand from SPEC 3 for depths (2, 2, 6, 2):
# blocks of stage 0 are 1, 2; stage 1: 3, 4; stage 2: 5..10; stage 3: 11, 12;
# stage i's downsample shares the id of the stage's last block (2, 4, 10); norm and head 13.
SWINV2_T_LAYER_IDS = [
    ("patch_embed.proj.weight", 0),
    ("patch_embed.norm.bias", 0),
    ("absolute_pos_embed", 0),
    ("mask_token", 0),
    ("layers.0.blocks.0.attn.qkv.weight", 1),
    ("layers.0.blocks.1.mlp.fc1.weight", 2),
    ("layers.0.downsample.reduction.weight", 2),
    ("layers.0.downsample.norm.weight", 2),
    ("layers.1.blocks.0.norm1.weight", 3),
    ("layers.1.blocks.1.attn.logit_scale", 4),
    ("layers.1.downsample.reduction.weight", 4),
    ("layers.2.blocks.0.attn.cpb_mlp.0.weight", 5),
    ("layers.2.blocks.3.attn.q_bias", 8),
    ("layers.2.blocks.5.mlp.fc2.bias", 10),
    ("layers.2.downsample.norm.bias", 10),
    ("layers.3.blocks.0.attn.v_bias", 11),
    ("layers.3.blocks.1.norm2.weight", 12),
    ("norm.weight", 13),
    ("head.weight", 13),
    ("head.bias", 13),
]


@pytest.mark.parametrize(("name", "expected"), SWINV2_T_LAYER_IDS)
def test_layer_id_swinv2_tiny_by_hand(name, expected):
    assert layer_id(name, TINY_DEPTHS) == expected


def small_swinv2(depths=TINY_DEPTHS, **overrides) -> swinv2.SwinTransformerV2:
    """SwinV2-T's depths at a width of 8 (milliseconds to build): the same parameter names and ids."""
    settings = dict(img_size=32, embed_dim=8, depths=depths, num_heads=(1,) * len(depths), window_size=2,
                    num_classes=3, drop_path_rate=0.0)
    return swinv2.SwinTransformerV2(**{**settings, **overrides})


def group_of(groups: list[dict], name: str) -> dict:
    (group,) = [group for group in groups if name in group["names"]]
    return group


def test_layer_decay_scales_swinv2_tiny():
    groups = parameter_groups(small_swinv2(), weight_decay=0.05, layer_decay=0.75)
    # scale = 0.75 ** (13 - id)
    assert group_of(groups, "patch_embed.proj.weight")["lr_scale"] == pytest.approx(0.75**13)  # 0.023757...
    assert group_of(groups, "layers.0.blocks.1.mlp.fc1.weight")["lr_scale"] == pytest.approx(0.75**11)
    assert group_of(groups, "layers.0.downsample.reduction.weight")["lr_scale"] == pytest.approx(0.75**11)
    assert group_of(groups, "layers.2.blocks.0.attn.qkv.weight")["lr_scale"] == pytest.approx(0.75**8)
    assert group_of(groups, "layers.3.blocks.1.norm2.weight")["lr_scale"] == pytest.approx(0.75)
    assert group_of(groups, "head.weight")["lr_scale"] == 1.0
    assert group_of(groups, "norm.bias")["lr_scale"] == 1.0
    # Ids 0..13 each hold decayed weights and undecayed biases/norms: 28 groups.
    assert len(groups) == 28
    assert sum(len(group["params"]) for group in groups) == len(list(small_swinv2().parameters()))


def test_groups_split_decay_by_spec():
    # Every parameter of a one-block model, sorted by hand (SPEC 1): weight decay only on the
    # conv/linear weights; none on biases, norms, q/v biases, logit_scale, cpb_mlp (even its
    # weights) and absolute_pos_embed (3-D).
    model = swinv2.SwinTransformerV2(img_size=28, patch_size=4, window_size=7, embed_dim=16, depths=(1,),
                                     num_heads=(1,), in_chans=1, num_classes=10, ape=True)
    decayed = {
        "patch_embed.proj.weight",
        "layers.0.blocks.0.attn.qkv.weight",
        "layers.0.blocks.0.attn.proj.weight",
        "layers.0.blocks.0.mlp.fc1.weight",
        "layers.0.blocks.0.mlp.fc2.weight",
        "head.weight",
    }
    undecayed = {
        "absolute_pos_embed",
        "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias",
        "layers.0.blocks.0.attn.logit_scale", "layers.0.blocks.0.attn.q_bias", "layers.0.blocks.0.attn.v_bias",
        "layers.0.blocks.0.attn.cpb_mlp.0.weight", "layers.0.blocks.0.attn.cpb_mlp.0.bias",
        "layers.0.blocks.0.attn.cpb_mlp.2.weight",
        "layers.0.blocks.0.attn.proj.bias",
        "layers.0.blocks.0.norm1.weight", "layers.0.blocks.0.norm1.bias",
        "layers.0.blocks.0.mlp.fc1.bias", "layers.0.blocks.0.mlp.fc2.bias",
        "layers.0.blocks.0.norm2.weight", "layers.0.blocks.0.norm2.bias",
        "norm.weight", "norm.bias", "head.bias",
    }
    no_decay_group, decay_group = parameter_groups(model, weight_decay=0.05)  # in order of first parameter
    assert set(decay_group["names"]) == decayed and decay_group["weight_decay"] == 0.05
    assert set(no_decay_group["names"]) == undecayed and no_decay_group["weight_decay"] == 0.0
    assert decay_group["lr_scale"] == no_decay_group["lr_scale"] == 1.0


def test_frozen_parameters_are_left_out():
    model = small_swinv2(depths=(1,))
    model.patch_embed.requires_grad_(False)
    names = [name for group in parameter_groups(model, 0.05) for name in group["names"]]
    assert not any(name.startswith("patch_embed") for name in names) and "head.weight" in names


def test_scaled_lr_official_rule():
    # 128 images x 8 GPUs x 2 accumulation steps = 2048 images per step: 5e-4 * 2048 / 512 = 2e-3.
    assert scaled_lr(5e-4, 128, accumulation_steps=2, world_size=8) == pytest.approx(2e-3)
    assert scaled_lr(5e-4, 128) == pytest.approx(1.25e-4)  # one device, no accumulation


def test_build_optimizer_groups_carry_scaled_lr():
    optim = OptimSection(weight_decay=0.05, betas=(0.9, 0.95), eps=1e-6, layer_decay=0.5)
    optimizer = build_optimizer(small_swinv2(depths=(1,)), optim, lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW)
    # depths (1,): L = 3; patch embed id 0 -> 0.5^2, block id 1 -> 0.5, head id 2 -> 1.
    lrs = {(group["lr_scale"], group["weight_decay"]): group["lr"] for group in optimizer.param_groups}
    assert lrs == {(0.25, 0.05): 2.5e-4, (0.25, 0.0): 2.5e-4, (0.5, 0.05): 5e-4, (0.5, 0.0): 5e-4,
                   (1.0, 0.05): 1e-3, (1.0, 0.0): 1e-3}
    assert all(group["betas"] == (0.9, 0.95) and group["eps"] == 1e-6 for group in optimizer.param_groups)


# ------------------------------------------------------------------------------------- schedule
PEAK, WARMUP_LR, MIN_LR, WARMUP_STEPS, TOTAL_STEPS = 1e-3, 1e-6, 1e-5, 10, 110


def closed_form(step: int) -> float:
    """timm CosineLRScheduler(t_initial=total - warm-up, warmup_prefix=True, cycle_limit=1, t_in_epochs=False)."""
    if step < WARMUP_STEPS:
        return WARMUP_LR + step * (PEAK - WARMUP_LR) / WARMUP_STEPS
    if step >= TOTAL_STEPS:
        return MIN_LR
    t = step - WARMUP_STEPS
    return MIN_LR + 0.5 * (PEAK - MIN_LR) * (1 + math.cos(math.pi * t / (TOTAL_STEPS - WARMUP_STEPS)))


def make_schedule(scales=(1.0,)) -> tuple[torch.optim.Optimizer, WarmupCosineSchedule]:
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr_scale": scale} for scale in scales]
    optimizer = torch.optim.AdamW(groups, lr=PEAK)
    return optimizer, WarmupCosineSchedule(optimizer, PEAK, WARMUP_LR, MIN_LR, WARMUP_STEPS, TOTAL_STEPS)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1e-6),  # warm-up start
        (5, 1e-6 + 5 * (1e-3 - 1e-6) / 10),  # warm-up middle: 5.005e-4
        (10, 1e-3),  # peak
        (60, (1e-3 + 1e-5) / 2),  # cosine midpoint: cos(pi/2) = 0
        (85, 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 - math.sqrt(0.5))),  # three quarters: cos(3 pi / 4)
        (110, 1e-5),  # end
        (500, 1e-5),  # past the end
    ],
)
def test_schedule_values_by_hand(step, expected):
    _, schedule = make_schedule()
    assert schedule.value(step) == pytest.approx(expected, rel=1e-12)
    assert schedule.value(step) == pytest.approx(closed_form(step), rel=1e-12)


def test_schedule_sets_scaled_group_lrs_and_resumes():
    optimizer, schedule = make_schedule(scales=(1.0, 0.25))
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-6, 0.25e-6])  # set at creation
    schedule.step(60)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([5.05e-4, 0.25 * 5.05e-4])

    resumed_optimizer, resumed = make_schedule(scales=(1.0, 0.25))
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.last_step == 60
    assert [group["lr"] for group in resumed_optimizer.param_groups] == pytest.approx([5.05e-4, 0.25 * 5.05e-4])


def test_schedule_without_warmup_starts_at_peak():
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))])
    schedule = WarmupCosineSchedule(optimizer, 1e-3, 0.0, 0.0, warmup_steps=0, total_steps=4)
    # cos(pi * t / 4): 1, 1/sqrt2, 0, -1/sqrt2 -> 1e-3 * (1 + c) / 2
    expected = [1e-3, 1e-3 * (1 + math.sqrt(0.5)) / 2, 5e-4, 1e-3 * (1 - math.sqrt(0.5)) / 2, 0.0]
    assert [schedule.value(step) for step in range(5)] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="warmup_steps"):
        WarmupCosineSchedule(optimizer, 1e-3, 0.0, 0.0, warmup_steps=5, total_steps=4)


# ------------------------------------------------------------------------------------------ EMA
class WeightAndCounter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.register_buffer("counter", torch.tensor(0))


def test_ema_after_k_updates_by_hand():
    model = WeightAndCounter()
    ema = ModelEma(model, decay=0.9)
    assert not ema.module.training and not ema.module.weight.requires_grad
    # The model's weight after each step, and the hand recursion e = 0.9 e + 0.1 w from e0 = w0.
    sequence = [torch.tensor([2.0, 0.0]), torch.tensor([4.0, 1.0]), torch.tensor([0.0, 3.0])]
    expected = torch.tensor([1.0, -2.0])
    for count, weight in enumerate(sequence, start=1):
        with torch.no_grad():
            model.weight.copy_(weight)
        model.counter.fill_(count)
        ema.update(model)
        expected = 0.9 * expected + 0.1 * weight
    # By hand: [1.1, -1.8] -> [1.39, -1.52] -> [1.251, -1.068]
    assert torch.allclose(expected, torch.tensor([1.251, -1.068]))
    assert torch.allclose(ema.module.weight, expected, atol=1e-6)
    assert int(ema.module.counter) == 3  # buffers are copied, not averaged
    assert torch.equal(model.weight.detach(), torch.tensor([0.0, 3.0]))  # the model is untouched


def test_ema_state_dict_round_trip():
    ema = ModelEma(WeightAndCounter(), decay=0.5)
    other = ModelEma(WeightAndCounter(), decay=0.5)
    with torch.no_grad():
        ema.module.weight.fill_(7.0)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.module.weight, torch.tensor([7.0, 7.0]))
    with pytest.raises(ConfigError, match="decay"):
        ModelEma(WeightAndCounter(), decay=1.0)
