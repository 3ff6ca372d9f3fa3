"""Learning rate per optimizer step: linear warm-up, then a half cosine to the minimum.

The numbers are those of timm's CosineLRScheduler as the official code builds it (t_in_epochs=False,
warmup_prefix=True, cycle_limit=1, t_initial = total - warm-up steps): with peak P, warm-up start W,
minimum M, warm-up steps w and total steps T,
    t < w:        W + t * (P - W) / w
    w <= t < T:   M + (P - M) * (1 + cos(pi * (t - w) / (T - w))) / 2
    t >= T:       M
Each parameter group gets that value times its "lr_scale" (layer-wise decay)."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError


class WarmupCosineSchedule:
    """Sets every group's lr from the step index; call `.step(t)` before optimizer step t."""

    # What a resumed run needs: the schedule's shape and where it stopped.
    _STATE = ("peak_lr", "warmup_lr", "min_lr", "warmup_steps", "total_steps", "last_step")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        peak_lr: float,
        warmup_lr: float,
        min_lr: float,
        warmup_steps: int,
        total_steps: int,
    ) -> None:
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ConfigError(
                f"schedule needs 0 <= warmup_steps <= total_steps and total_steps >= 1, "
                f"got warmup_steps={warmup_steps}, total_steps={total_steps}"
            )
        self.optimizer = optimizer
        self.peak_lr = peak_lr
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.last_step = 0
        self.step(0)  # as timm: the first step already runs at the warm-up lr

    def value(self, step: int) -> float:
        """The lr at optimizer step `step` before any group's lr_scale."""
        if step < self.warmup_steps:
            return self.warmup_lr + step * (self.peak_lr - self.warmup_lr) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def step(self, step: int) -> float:
        """Set every group's lr for optimizer step `step`; returns the unscaled value."""
        value = self.value(step)
        for group in self.optimizer.param_groups:
            group["lr"] = value * group.get("lr_scale", 1.0)
        self.last_step = step
        return value

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the settings and the position, and set the groups' lr to match."""
        for key in self._STATE:
            setattr(self, key, state[key])
        self.step(self.last_step)
