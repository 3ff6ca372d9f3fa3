"""Exponential moving average of the weights, evaluated and saved like a second model."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError
from .optim import unwrap_model


class ModelEma:
    """`.module` holds ema = decay * ema + (1 - decay) * weights after each `.update(model)`.

    Buffers (position tables, masks) are copied, not averaged: they are functions of the shape.
    The copy lives on the model's device, in eval mode, without gradients."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        source = unwrap_model(model)
        averaged = list(self.module.parameters())
        current = [parameter.detach() for parameter in source.parameters()]
        # lerp(ema, w, 1 - decay) = ema + (1 - decay) * (w - ema), one kernel for all tensors.
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        for averaged_buffer, buffer in zip(self.module.buffers(), source.buffers()):
            averaged_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict: loadable into a model of the same configuration."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
