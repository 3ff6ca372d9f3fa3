"""`SwinTransformerV2`: patch embedding, four stages of windowed blocks, and a classification head."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from .blocks import PatchEmbed, PatchMerging, SwinTransformerV2Block
from .config import SwinV2Config, to_pair
from .linear import Linear


class FeatureInfo(list):
    """One dict per returned feature map (num_chs, reduction, module), as timm's `feature_info`."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]


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
                attention_chunk_size=config.attention_chunk_size,
                attention_impl=config.attention_impl,
                norm=config.norm,
                attention=config.attention,
                position_bias=config.position_bias,
                mlp_chunk_elements=config.mlp_chunk_elements,
            )
            for index in range(config.depths[stage])
        )
        self.downsample = PatchMerging(dim) if stage < config.num_stages - 1 else nn.Identity()
        self.use_checkpoint = config.use_checkpoint
        self.inference_chunk_tokens = config.inference_chunk_tokens

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> (the stage's output map, the next stage's input).

        On the CPU without gradients, in chunks of whole images of at most `inference_chunk_tokens` tokens:
        every step of a stage treats images independently, so this is the same function, and a chunk's
        intermediates are small enough for the allocator to reuse their memory (large ones are fresh pages
        from the kernel each time, zeroed on first touch; docs/performance.md). Not on GPUs, whose caching
        allocator reuses memory anyway and which want large kernels, nor where the batch is symbolic
        (dynamic shapes in torch.compile or export), which a chunk count cannot depend on."""
        images = x.shape[0]
        if (self.inference_chunk_tokens and x.device.type == "cpu" and not torch.is_grad_enabled()
                and not isinstance(images, torch.SymInt)):
            per_chunk = max(1, self.inference_chunk_tokens // (x.shape[1] * x.shape[2]))
            if per_chunk < images:
                outputs, merged = zip(*(self.forward_images(part) for part in x.split(per_chunk)))
                return torch.cat(outputs), torch.cat(merged)
        return self.forward_images(x)

    def forward_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                # Keep only block inputs; recompute the rest (attention maps above all) in backward.
                x = checkpoint(block, x, use_reentrant=False)
            else:
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
        if config.features_only:
            # A backbone for dense heads: no final norm, no classifier (their weights are not loaded).
            self.norm = self.head = None
        else:
            self.norm = nn.LayerNorm(self.num_features)
            self.head = Linear(self.num_features, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.feature_info = FeatureInfo(
            dict(num_chs=config.stage_dim(stage), reduction=config.patch_size * 2**stage, module=f"layers.{stage}")
            for stage in config.out_indices
        )
        self.init_weights()
        self.set_linear_impl(config.linear_impl)

    # ----------------------------------------------------------------------------------- init
    def init_weights(self) -> None:
        """Official initialisation: Linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0),
        then every block's post-norms zeroed so each block starts as the identity (pre-norm blocks,
        Swin v1, keep (1, 0): zeroing their norms would cut the branches' input and gradient)."""
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
            elif getattr(module, "relative_position_bias_table", None) is not None:
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
        for stage in self.layers:
            for block in stage.blocks:
                if block.norm == "pre":
                    continue
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
        height, width = x.shape[2:]
        if config.strict_img_size and (height, width) != config.img_size:
            raise InputError(
                f"expected {config.img_size[0]}x{config.img_size[1]} images, got {height}x{width}; "
                "resize the input, change the model with model.set_input_size(img_size=...), "
                "or create it with strict_img_size=False to accept any size"
            )
        if min(height, width) < config.patch_size:
            raise InputError(
                f"images of {height}x{width} are too small: the minimum is one patch, "
                f"{config.patch_size}x{config.patch_size}"
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

    def add_absolute_position(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, h, w, C) + the absolute position embedding, resampled bicubically to another grid."""
        grid = self.config.stage_resolution(0)
        embedding = self.absolute_pos_embed.view(1, grid[0], grid[1], -1)
        if tuple(x.shape[1:3]) != grid:
            embedding = F.interpolate(embedding.permute(0, 3, 1, 2), size=tuple(x.shape[1:3]), mode="bicubic",
                                      align_corners=False).permute(0, 2, 3, 1)
        return x + embedding

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) -> each stage's output map (B, H_i, W_i, C_i), before patch merging."""
        self.check_input(x)
        return self.forward_tokens(self.patch_embed(x))

    def forward_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens (B, h, w, C) as the patch embedding and its norm leave them -> each stage's output
        map (B, H_i, W_i, C_i). A separate step so that SimMIM can put its mask token in between."""
        if self.absolute_pos_embed is not None:
            x = self.add_absolute_position(x)
        x = self.pos_drop(x)
        outputs = []
        for stage in self.layers:
            output, x = stage(x)
            outputs.append(output)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, in_chans, H, W) -> normalised last-stage map (B, H/32, W/32, 8C);
        with features_only, the maps of `out_indices` as (B, C_i, H_i, W_i) at strides 4, 8, 16, 32."""
        stages = self.forward_stages(x)
        if self.config.features_only:
            return [stages[index].permute(0, 3, 1, 2).contiguous() for index in self.config.out_indices]
        return self.norm(stages[-1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, h, w, 8C) -> average over positions -> logits (or the pooled features)."""
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.config.features_only:
            return self.forward_features(x)
        return self.forward_head(self.forward_features(x))

    def set_linear_impl(self, impl: str) -> None:
        """The kernel of every linear layer (models/linear.py); same result, no weights change."""
        self.config = self.config.replace(linear_impl=impl)  # validates
        for module in self.modules():
            if isinstance(module, Linear):
                module.impl = impl

    # ------------------------------------------------------------------------- change of size
    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        window_size: int | tuple[int, int] | None = None,
        pretrained_window_sizes: Sequence[int | tuple[int, int]] | None = None,
    ) -> None:
        """Move the model to another resolution and/or window size in place; weights carry over.

        `pretrained_window_sizes=None` follows the official fine-tune configs: each stage keeps
        normalising position offsets by the window its weights were trained with (its current
        `pretrained_window_sizes` entry, or, where that is 0, the window it uses now, clamp included:
        192/w12 -> [12, 12, 12, 6]). timm instead re-normalises by the new window. Pass a list to choose."""
        config = self.config
        if pretrained_window_sizes is None:
            pretrained_window_sizes = [
                config.pretrained_window_sizes[index]
                if config.pretrained_window_sizes[index][0] > 0
                else stage.blocks[0].window_size
                for index, stage in enumerate(self.layers)
            ]
        new = config.replace(
            img_size=to_pair(img_size, "img_size") if img_size is not None else config.img_size,
            window_size=to_pair(window_size, "window_size") if window_size is not None else config.window_size,
            pretrained_window_sizes=pretrained_window_sizes,
        )
        if self.absolute_pos_embed is not None and new.stage_resolution(0) != config.stage_resolution(0):
            with torch.no_grad():
                grid = new.stage_resolution(0)
                resampled = self.add_absolute_position(self.absolute_pos_embed.new_zeros(1, *grid, config.embed_dim))
                self.absolute_pos_embed = nn.Parameter(resampled.reshape(1, grid[0] * grid[1], -1))
        for index, stage in enumerate(self.layers):
            for block in stage.blocks:
                block.set_input_size(new.stage_resolution(index), new.window_size, new.pretrained_window_sizes[index])
        self.config = new
