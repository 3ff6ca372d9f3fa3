"""Parameter names of the checkpoint layouts in circulation, and conversion to and from ours.

    project   our model's state_dict: the official names, no buffers
    official  microsoft/Swin-Transformer: the same names, plus persistent buffers (and `rpe_mlp` in old files)
    timm      downsample at the start of the NEXT stage (`layers.{i+1}.downsample`), head `head.fc`
    hf        transformers' Swinv2ForImageClassification (or bare Swinv2Model keys): see HF_NAMES
    simmim    official SimMIM pre-training: the backbone under `encoder.`, a mask token and a 1x1 conv decoder

Keys a conversion does not recognise pass through unchanged, so that loading reports them by name."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from ..errors import CheckpointError

LAYOUTS = ("project", "official", "timm", "hf", "simmim")
Tensors = dict[str, torch.Tensor]

# Buffers official checkpoints save; rebuilt from the target model's window, never loaded.
# timm's k_bias is a zero buffer (keys have no bias).
BUFFER_NAMES = ("relative_coords_table", "relative_position_index", "attn_mask", "k_bias")

DOWNSAMPLE_KEY = re.compile(r"^layers\.(\d+)\.downsample\.")
BLOCK_KEY = re.compile(r"^(layers\.\d+\.blocks\.\d+\.)(.*)$")
HF_BLOCK_KEY = re.compile(r"^encoder\.(layers\.\d+\.blocks\.\d+\.)attention\.self\.(query|key|value)\.weight$")

HF_PREFIX = "swinv2."  # Swinv2ForImageClassification wraps Swinv2Model under it; its classifier sits outside
# Ours -> HF by key prefix, outside blocks ("layers." also carries the downsample).
HF_NAMES = {
    "patch_embed.proj.": "embeddings.patch_embeddings.projection.",
    "patch_embed.norm.": "embeddings.norm.",
    "layers.": "encoder.layers.",
    "norm.": "layernorm.",
    "head.": "classifier.",
}
# Ours -> HF inside `layers.i.blocks.j.`; qkv.weight is split separately.
HF_BLOCK_NAMES = {
    "norm1.": "layernorm_before.",
    "norm2.": "layernorm_after.",
    "attn.logit_scale": "attention.self.logit_scale",
    "attn.cpb_mlp.": "attention.self.continuous_position_bias_mlp.",
    "attn.q_bias": "attention.self.query.bias",
    "attn.v_bias": "attention.self.value.bias",
    "attn.proj.": "attention.output.dense.",
    "mlp.fc1.": "intermediate.dense.",
    "mlp.fc2.": "output.dense.",
}
QKV = ("query", "key", "value")

SIMMIM_PREFIX = "encoder."
SIMMIM_MASK_TOKEN = "encoder.mask_token"  # (1, 1, C)
SIMMIM_DECODER = "decoder."  # decoder.0: Conv2d(8C, stride^2 * 3, 1)


# ------------------------------------------------------------------------------------ detection
def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """Which of LAYOUTS a state dict is in, from its key names."""
    keys = list(state)
    if any(key.startswith((HF_PREFIX, "embeddings.patch_embeddings.", "classifier.")) or ".attention.self." in key
           for key in keys):
        return "hf"
    if any(key == SIMMIM_MASK_TOKEN or key.startswith((SIMMIM_DECODER, SIMMIM_PREFIX + "patch_embed.",
                                                       SIMMIM_PREFIX + "layers.")) for key in keys):
        return "simmim"
    downsample_stages = {int(match.group(1)) for key in keys if (match := DOWNSAMPLE_KEY.match(key))}
    if "head.fc.weight" in state or (downsample_stages and 0 not in downsample_stages):
        return "timm"
    if any(is_buffer(key) or ".rpe_mlp." in key for key in keys):
        return "official"
    if any(key.startswith(("patch_embed.", "layers.")) for key in keys):
        return "project"
    raise CheckpointError(
        f"cannot tell the layout of this state dict (first keys: {', '.join(keys[:5]) or 'none'}); "
        f"it is not a Swin Transformer V2 checkpoint, or pass layout= one of {', '.join(LAYOUTS)}"
    )


def is_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in BUFFER_NAMES


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown checkpoint layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


# ------------------------------------------------------------------------------------ conversion
def to_project(state: Mapping[str, torch.Tensor], layout: str) -> Tensors:
    """Our parameter names; buffers dropped. SimMIM's mask token and decoder are dropped too:
    use `split_simmim` to keep them."""
    check_layout(layout)
    return TO_PROJECT[layout](state)


def from_project(state: Mapping[str, torch.Tensor], layout: str) -> Tensors:
    """Our parameter names -> `layout`. SimMIM encoders have no head: it is left out."""
    check_layout(layout)
    return FROM_PROJECT[layout](state)


def official_to_project(state: Mapping[str, torch.Tensor]) -> Tensors:
    return {key.replace(".rpe_mlp.", ".cpb_mlp."): value for key, value in state.items() if not is_buffer(key)}


def rename_keys(state: Mapping[str, torch.Tensor], rename: Callable[[str], str]) -> Tensors:
    return {rename(key): value for key, value in state.items()}


def shift_downsample(key: str, offset: int) -> str:
    """`layers.i.downsample.*` -> `layers.{i + offset}.downsample.*`."""
    return DOWNSAMPLE_KEY.sub(lambda match: f"layers.{int(match.group(1)) + offset}.downsample.", key)


def rename_prefix(key: str, names: Mapping[str, str]) -> str:
    for old, new in names.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def timm_to_project(state: Mapping[str, torch.Tensor]) -> Tensors:
    return rename_keys(official_to_project(state), lambda key: rename_prefix(shift_downsample(key, -1), {"head.fc.": "head."}))


def project_to_timm(state: Mapping[str, torch.Tensor]) -> Tensors:
    return rename_keys(state, lambda key: rename_prefix(shift_downsample(key, +1), {"head.": "head.fc."}))


# ------------------------------------------------------------------------------------ Hugging Face
HF_NAMES_BACK = {hf: ours for ours, hf in HF_NAMES.items()}
HF_BLOCK_NAMES_BACK = {hf: ours for ours, hf in HF_BLOCK_NAMES.items()}


def project_key_to_hf(key: str) -> str:
    block = BLOCK_KEY.match(key)
    if block:
        return "encoder." + block.group(1) + rename_prefix(block.group(2), HF_BLOCK_NAMES)
    return rename_prefix(key, HF_NAMES)


def hf_key_to_project(key: str) -> str:
    block = BLOCK_KEY.match(key.removeprefix("encoder."))
    if key.startswith("encoder.") and block:
        return block.group(1) + rename_prefix(block.group(2), HF_BLOCK_NAMES_BACK)
    return rename_prefix(key, HF_NAMES_BACK)


def refuse_for_hf(state: Mapping[str, torch.Tensor]) -> None:
    """Parameters transformers' Swinv2 has no place for: refuse rather than drop them."""
    for key in state:
        if key == "absolute_pos_embed":
            missing = "a working absolute position embedding (its (1, N+1, C) one breaks its forward)"
        elif ".main_branch_norm." in key:
            missing = "the SwinV2-H/G main-branch LayerNorm"
        else:
            continue
        raise CheckpointError(
            f"cannot export {key}: transformers' Swinv2 has no {missing}; "
            "export to the 'official' or 'project' layout instead"
        )


def project_to_hf(state: Mapping[str, torch.Tensor]) -> Tensors:
    refuse_for_hf(state)
    converted: Tensors = {}
    for key, value in state.items():
        if key.endswith(".attn.qkv.weight"):
            # (3C, C) rows are [q; k; v]: one Linear each. Cloned, so no two tensors share memory.
            block = key[: -len("attn.qkv.weight")]
            for name, part in zip(QKV, value.chunk(3, dim=0)):
                converted[f"encoder.{block}attention.self.{name}.weight"] = part.clone()
            continue
        converted[project_key_to_hf(key)] = value
    return {(key if key.startswith("classifier.") else HF_PREFIX + key): value for key, value in converted.items()}


def hf_to_project(state: Mapping[str, torch.Tensor]) -> Tensors:
    bare = {key.removeprefix(HF_PREFIX): value for key, value in state.items()}
    if "embeddings.position_embeddings" in bare:
        raise CheckpointError(
            "this Hugging Face checkpoint has an absolute position embedding (1, N+1, C), which transformers' "
            "own Swinv2 forward cannot use correctly; swinv2 does not convert it"
        )
    converted: Tensors = {}
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in bare.items():
        part = HF_BLOCK_KEY.match(key)
        if part:
            qkv_parts.setdefault(part.group(1), {})[part.group(2)] = value
            continue
        converted[hf_key_to_project(key)] = value
    for block, parts in qkv_parts.items():
        if set(parts) == set(QKV):
            converted[block + "attn.qkv.weight"] = torch.cat([parts[name] for name in QKV], dim=0)  # (3C, C)
        else:  # incomplete: keep what is there under HF names so that loading reports it
            converted.update({f"encoder.{block}attention.self.{name}.weight": parts[name] for name in parts})
    return converted


# ------------------------------------------------------------------------------------ SimMIM
def split_simmim(state: Mapping[str, torch.Tensor]) -> tuple[Tensors, Tensors]:
    """(the encoder in project layout, {'encoder.mask_token': (1, 1, C), 'decoder.0.weight': ..., ...})."""
    encoder: Tensors = {}
    extras: Tensors = {}
    for key, value in state.items():
        if key == SIMMIM_MASK_TOKEN or key.startswith(SIMMIM_DECODER):
            extras[key] = value
        else:
            encoder[key.removeprefix(SIMMIM_PREFIX)] = value
    return official_to_project(encoder), extras


def join_simmim(state: Mapping[str, torch.Tensor], extras: Mapping[str, torch.Tensor]) -> Tensors:
    """The inverse of `split_simmim`; a classification head, which SimMIM encoders lack, is left out."""
    encoder = {SIMMIM_PREFIX + key: value for key, value in state.items() if not key.startswith("head.")}
    return {**encoder, **extras}


TO_PROJECT: dict[str, Callable[[Mapping[str, torch.Tensor]], Tensors]] = {
    "project": official_to_project,
    "official": official_to_project,
    "timm": timm_to_project,
    "hf": hf_to_project,
    "simmim": lambda state: split_simmim(state)[0],
}
FROM_PROJECT: dict[str, Callable[[Mapping[str, torch.Tensor]], Tensors]] = {
    "project": dict,
    "official": dict,
    "timm": project_to_timm,
    "hf": project_to_hf,
    "simmim": lambda state: join_simmim(state, {}),
}
