"""`SwinTransformerV2`: patch embedding, four stages of windowed blocks, and a classification head."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .blocks import PatchEmbed, PatchMerging, SwinTransformerV2Block
from .config import SwinV2Config


class SwinTransformerV2Stage(nn.Module):
    """`depth` blocks at one resolution (odd blocks shifted), then patch merging unless last.

    Merging sits at the end of the stage, as in the official checkpoints (`layers.i.downsample`)."""

    def __init__(self, config: SwinV2Config, stage: int, drop_path: list[float]) -> None:
        super().__init__()
        dim = config.stage_dim(stage)
        resolution = config.stage_resolution(stage)
        pretrained_window = config.pretrained_window_sizes[stage]
        period = config.extra_norm_period
        self.blocks = nn.ModuleList(
            SwinTransformerV2Block(
                dim=dim,
                input_resolution=resolution,
                num_heads=config.num_heads[stage],
                window_size=config.window_size,
                shifted=index % 2 == 1,
                mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                drop=config.drop_rate,
                attn_drop=config.attn_drop_rate,
                drop_path=drop_path[index],
                pretrained_window_size=pretrained_window,
                extra_norm=period > 0 and (index + 1) % period == 0,
            )
            for index in range(config.depths[stage])
        )
        self.downsample = PatchMerging(dim) if stage < config.num_stages - 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> (the stage's output map, the next stage's input)."""
        for block in self.blocks:
            x = block(x)
        return x, self.downsample(x)


class SwinTransformerV2(nn.Module):
    """Swin Transformer V2 (Liu et al., CVPR 2022) with the official parameter names.

    `SwinTransformerV2(config)` or `SwinTransformerV2(embed_dim=..., depths=..., ...)`, arguments by
    their official names (see `SwinV2Config`). Input (B, in_chans, H, W) -> logits (B, num_classes)."""

    def __init__(self, config: SwinV2Config | None = None, **overrides: Any) -> None:
        super().__init__()
        config = (config or SwinV2Config()).replace(**overrides) if overrides else (config or SwinV2Config())
        self.config = config
        self.num_features = config.stage_dim(config.num_stages - 1)

        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, config.embed_dim, config.patch_norm)
        if config.ape:
            grid_h, grid_w = config.stage_resolution(0)
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, grid_h * grid_w, config.embed_dim))
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(config.drop_rate)

        # Stochastic depth grows linearly with block index over the whole network.
        total = sum(config.depths)
        rates = [config.drop_path_rate * index / max(total - 1, 1) for index in range(total)]
        starts = [sum(config.depths[:stage]) for stage in range(config.num_stages)]
        self.layers = nn.ModuleList(
            SwinTransformerV2Stage(config, stage, rates[start : start + config.depths[stage]])
            for stage, start in enumerate(starts)
        )
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.init_weights()

    # ----------------------------------------------------------------------------------- init
    def init_weights(self) -> None:
        """Official initialisation: Linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0),
        then every block's post-norms zeroed so each block starts as the identity."""
        if self.absolute_pos_embed is not None:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for stage in self.layers:
            for block in stage.blocks:
                for norm in (block.norm1, block.norm2):
                    nn.init.zeros_(norm.weight)
                    nn.init.zeros_(norm.bias)

    def no_weight_decay_names(self) -> set[str]:
        """Parameters AdamW should not decay: 1-D tensors, biases, position embeddings,
        the CPB MLP and the attention temperature."""
        keywords = ("absolute_pos_embed", "cpb_mlp", "logit_scale", "relative_position_bias_table")
        return {
            name
            for name, parameter in self.named_parameters()
            if parameter.ndim <= 1 or name.endswith(".bias") or any(word in name for word in keywords)
        }

    # -------------------------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise `InputError` naming what was expected, before any layer sees a bad tensor."""
        config = self.config
        if not isinstance(x, torch.Tensor):
            raise InputError(f"expected a torch.Tensor of shape (B, {config.in_chans}, H, W), got {type(x).__name__}")
        if x.ndim != 4:
            raise InputError(
                f"expected a 4-D batch (B, {config.in_chans}, H, W), got shape {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0)"
            )
        if x.shape[1] != config.in_chans:
            raise InputError(
                f"expected {config.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                f"convert the images or create the model with in_chans={x.shape[1]}"
            )
        if tuple(x.shape[2:]) != config.img_size:
            raise InputError(
                f"expected {config.img_size[0]}x{config.img_size[1]} images, got {x.shape[2]}x{x.shape[3]}; "
                "resize the input, or change the model with model.set_input_size(img_size=...)"
            )
        if not x.is_floating_point():
            raise InputError(
                f"expected floating-point pixels, got {x.dtype}; convert with x.float() and normalise"
            )
        weight_dtype = self.patch_embed.proj.weight.dtype
        if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            raise InputError(
                f"input dtype {x.dtype} does not match the model's {weight_dtype}; "
                f"use x.to({weight_dtype}), model.to({x.dtype}), or torch.autocast"
            )

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) -> each stage's output map (B, H_i, W_i, C_i), before patch merging."""
        self.check_input(x)
        x = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            x = x + self.absolute_pos_embed.view(1, x.shape[1], x.shape[2], -1)
        x = self.pos_drop(x)
        outputs = []
        for stage in self.layers:
            output, x = stage(x)
            outputs.append(output)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> normalised last-stage map (B, H/32, W/32, 8C)."""
        return self.norm(self.forward_stages(x)[-1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, h, w, 8C) -> average over positions -> logits (or the pooled features)."""
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
