"""Checkpoint layouts, files and loading, checked against hand-written expectations.

Layout facts come from SPEC section 2 and the other implementations' sources (timm's
checkpoint_filter_fn, transformers' modeling_swinv2.py, official simmim.py), written out here by hand."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import swinv2
from conftest import TINY_ARCHITECTURE, TINY_CLASSES, official_buffers
from swinv2 import CheckpointError, SwinTransformerV2, SwinV2Config
from swinv2.checkpoints import (
    convert_checkpoint,
    detect_layout,
    export_state_dict,
    from_project,
    infer_config,
    load_pretrained,
    load_state_dict_into,
    read_checkpoint,
    split_simmim,
    to_project,
)
from swinv2.checkpoints.io import atomic_path, write_safetensors

TINY_DEPTHS = TINY_ARCHITECTURE["depths"]


def official_state(model: SwinTransformerV2) -> dict[str, torch.Tensor]:
    return official_buffers(model.state_dict(), 64, 4, TINY_DEPTHS)


def simmim_state(model: SwinTransformerV2) -> dict[str, torch.Tensor]:
    """Official simmim.py: SimMIM(encoder=SwinTransformerV2ForSimMIM(num_classes=0), decoder=Sequential(Conv2d, PixelShuffle))."""
    generator = torch.Generator().manual_seed(5)
    encoder = {f"encoder.{key}": value for key, value in official_state(model).items() if not key.startswith("head.")}
    return {
        **encoder,
        "encoder.mask_token": torch.randn(1, 1, 32, generator=generator),
        "decoder.0.weight": torch.randn(32 * 32 * 3, 256, 1, 1, generator=generator),  # Conv2d(8C, stride^2 * 3, 1)
        "decoder.0.bias": torch.randn(32 * 32 * 3, generator=generator),
    }


def assert_equal_states(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def assert_message(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def load_with_warning(model: SwinTransformerV2, state: dict[str, torch.Tensor], match: str, **options) -> None:
    with pytest.warns(UserWarning, match=match):
        load_state_dict_into(model, state, **options)


# ------------------------------------------------------------------------------------ layouts
def test_round_trip_through_every_layout_is_exact(tiny_model):
    project = tiny_model.state_dict()
    official = official_state(tiny_model)
    assert detect_layout(official) == "official"

    from_official = to_project(official, "official")
    timm = from_project(from_official, "timm")
    assert detect_layout(timm) == "timm"
    from_timm = to_project(timm, "timm")
    hf = from_project(from_timm, "hf")
    assert detect_layout(hf) == "hf"
    from_hf = to_project(hf, "hf")

    for state in (from_official, from_timm, from_hf):
        assert_equal_states(state, project)
    assert detect_layout(project) == "project"


def test_timm_layout_moves_downsample_to_the_next_stage_and_head_to_head_fc(tiny_model):
    project = tiny_model.state_dict()
    timm = from_project(project, "timm")
    assert "layers.0.downsample.reduction.weight" not in timm
    for stage in (0, 1, 2):  # our stage i merges at its end; timm's stage i + 1 merges at its start
        for name in ("reduction.weight", "norm.weight", "norm.bias"):
            assert torch.equal(timm[f"layers.{stage + 1}.downsample.{name}"], project[f"layers.{stage}.downsample.{name}"])
    assert torch.equal(timm["head.fc.weight"], project["head.weight"])
    assert torch.equal(timm["head.fc.bias"], project["head.bias"])
    assert "head.weight" not in timm


def test_timm_checkpoint_with_k_bias_buffers_loads(tiny_config, tiny_model):
    timm = from_project(tiny_model.state_dict(), "timm")
    timm["layers.0.blocks.0.attn.k_bias"] = torch.zeros(32)  # older timm saved its zero key bias
    model = SwinTransformerV2(tiny_config)
    load_state_dict_into(model, timm)
    assert_equal_states(model.state_dict(), tiny_model.state_dict())


def test_hf_layout_names_and_qkv_split(tiny_model):
    project = tiny_model.state_dict()
    hf = from_project(project, "hf")
    block = "swinv2.encoder.layers.1.blocks.1."
    qkv = project["layers.1.blocks.1.attn.qkv.weight"]  # (3C, C) = (192, 64), rows [q; k; v]
    assert torch.equal(hf[block + "attention.self.query.weight"], qkv[:64])
    assert torch.equal(hf[block + "attention.self.key.weight"], qkv[64:128])
    assert torch.equal(hf[block + "attention.self.value.weight"], qkv[128:])
    assert block + "attention.self.key.bias" not in hf  # keys have no bias
    expected_names = {
        "attention.self.query.bias": "attn.q_bias",
        "attention.self.value.bias": "attn.v_bias",
        "attention.self.logit_scale": "attn.logit_scale",
        "attention.self.continuous_position_bias_mlp.0.weight": "attn.cpb_mlp.0.weight",
        "attention.self.continuous_position_bias_mlp.2.weight": "attn.cpb_mlp.2.weight",
        "attention.output.dense.weight": "attn.proj.weight",
        "layernorm_before.weight": "norm1.weight",
        "layernorm_after.bias": "norm2.bias",
        "intermediate.dense.weight": "mlp.fc1.weight",
        "output.dense.bias": "mlp.fc2.bias",
    }
    for hf_name, our_name in expected_names.items():
        assert torch.equal(hf[block + hf_name], project["layers.1.blocks.1." + our_name]), hf_name
    top_names = {
        "swinv2.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "swinv2.embeddings.norm.bias": "patch_embed.norm.bias",
        "swinv2.encoder.layers.2.downsample.reduction.weight": "layers.2.downsample.reduction.weight",
        "swinv2.layernorm.weight": "norm.weight",
        "classifier.weight": "head.weight",
    }
    for hf_name, our_name in top_names.items():
        assert torch.equal(hf[hf_name], project[our_name]), hf_name
    assert len(hf) == len(project) + 2 * sum(TINY_DEPTHS)  # each qkv becomes three tensors


def test_bare_hf_model_keys_load_without_prefix(tiny_config, tiny_model):
    """Swinv2Model (no classifier) saves its keys without `swinv2.`."""
    bare = {key.removeprefix("swinv2."): value for key, value in export_state_dict(tiny_model, "hf").items()
            if not key.startswith("classifier.")}
    assert detect_layout(bare) == "hf"
    model = SwinTransformerV2(tiny_config)
    load_with_warning(model, bare, match="no classification head")
    body = {key: value for key, value in tiny_model.state_dict().items() if not key.startswith("head.")}
    for key, value in body.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_simmim_split_keeps_mask_token_and_decoder_apart(tiny_model):
    state = simmim_state(tiny_model)
    assert detect_layout(state) == "simmim"
    encoder, extras = split_simmim(state)
    assert set(extras) == {"encoder.mask_token", "decoder.0.weight", "decoder.0.bias"}
    body = {key: value for key, value in tiny_model.state_dict().items() if not key.startswith("head.")}
    assert_equal_states(encoder, body)


def test_simmim_checkpoint_loads_with_the_models_fresh_head(tiny_config, tiny_model):
    model = SwinTransformerV2(tiny_config)
    fresh_head = model.head.weight.detach().clone()
    load_with_warning(model, simmim_state(tiny_model), match="no classification head")
    assert torch.equal(model.head.weight, fresh_head)
    assert torch.equal(model.layers[1].blocks[1].attn.qkv.weight, tiny_model.layers[1].blocks[1].attn.qkv.weight)


def test_old_rpe_mlp_names_load(tmp_path, tiny_config, tiny_model):
    old = {key.replace(".cpb_mlp.", ".rpe_mlp."): value for key, value in official_state(tiny_model).items()}
    assert any(".rpe_mlp." in key for key in old)
    path = tmp_path / "old.pth"
    torch.save({"model": old}, path)
    model = load_pretrained(SwinTransformerV2(tiny_config), path)
    assert_equal_states(model.state_dict(), tiny_model.state_dict())


def test_weights_load_into_another_window_and_resolution(tmp_path, tiny_model):
    """The CPB MLP transfers; the tables are the target model's own (window 8 at 128 px here)."""
    path = tmp_path / "w4.pth"
    torch.save({"model": official_state(tiny_model)}, path)
    other = SwinV2Config(**{**TINY_ARCHITECTURE, "img_size": 128, "window_size": 8}, num_classes=TINY_CLASSES)
    model = load_pretrained(SwinTransformerV2(other), path)
    assert tuple(model.layers[0].blocks[0].attn.relative_coords_table.shape) == (15, 15, 2)
    assert_equal_states(model.state_dict(), tiny_model.state_dict())


def test_infer_config_reads_the_structure(tiny_model):
    assert infer_config(tiny_model.state_dict()) == dict(
        embed_dim=32, depths=[2, 2, 2, 1], num_heads=[1, 2, 4, 8], num_classes=TINY_CLASSES, in_chans=3,
        patch_size=4, qkv_bias=True, ape=False, patch_norm=True, extra_norm_period=0, mlp_ratio=4.0,
    )


def test_infer_config_reads_ape_image_size_and_extra_norm_period():
    config = SwinV2Config(**{**TINY_ARCHITECTURE, "depths": (2, 2, 6, 2)}, ape=True, extra_norm_period=3)
    inferred = infer_config(SwinTransformerV2(config).state_dict())
    assert (inferred["img_size"], inferred["extra_norm_period"], inferred["depths"]) == (64, 3, [2, 2, 6, 2])


# ------------------------------------------------------------------------------------ HF limits
def test_hf_export_refuses_main_branch_norm():
    config = SwinV2Config(**{**TINY_ARCHITECTURE, "depths": (2, 2, 6, 2)}, extra_norm_period=6)
    with pytest.raises(CheckpointError) as error:
        export_state_dict(SwinTransformerV2(config), "hf")
    assert_message(error, "main_branch_norm", "official")


def test_hf_conversion_refuses_absolute_position_embedding(tiny_model):
    with pytest.raises(CheckpointError) as error:
        export_state_dict(SwinTransformerV2(SwinV2Config(**TINY_ARCHITECTURE, ape=True)), "hf")
    assert_message(error, "absolute_pos_embed")
    hf = export_state_dict(tiny_model, "hf")
    hf["swinv2.embeddings.position_embeddings"] = torch.zeros(1, 16 * 16 + 1, 32)  # (1, N+1, C)
    with pytest.raises(CheckpointError) as error:
        to_project(hf, "hf")
    assert_message(error, "absolute position embedding")


# ------------------------------------------------------------------------------------ errors
def test_mismatch_lists_every_missing_unexpected_and_misshaped_key(tiny_config, tiny_model):
    state = tiny_model.state_dict()
    del state["layers.0.blocks.1.attn.v_bias"]
    state["layers.9.blocks.0.attn.extra"] = torch.zeros(3, 5)
    state["layers.2.blocks.0.attn.logit_scale"] = torch.zeros(5, 1, 1)
    with pytest.raises(CheckpointError) as error:
        load_state_dict_into(SwinTransformerV2(tiny_config), state)
    assert_message(
        error,
        "layers.0.blocks.1.attn.v_bias: expected (32,)",
        "layers.9.blocks.0.attn.extra: found (3, 5)",
        "layers.2.blocks.0.attn.logit_scale: expected (4, 1, 1), found (5, 1, 1)",
        "missing", "unexpected", "wrong shape",
    )


def test_model_of_another_size_gets_the_checkpoints_structure_in_the_error(tmp_path, tiny_model):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_model.state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        swinv2.create_model("swinv2_tiny_window8_256", pretrained=path)
    assert_message(error, "embed_dim=32", "depths=[2, 2, 2, 1]", "patch_embed.proj.weight: expected (96, 3, 4, 4)")


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path / "nowhere.pth")
    assert_message(error, "does not exist", "nowhere.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path, tiny_model, suffix):
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".pth":
        torch.save({"model": tiny_model.state_dict()}, whole)
    else:
        save_file(tiny_model.state_dict(), whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(cut)
    assert_message(error, "truncated", "cut" + suffix)


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert_message(error, "not a checkpoint", "404 Not Found")


def test_pickle_without_tensors_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "log.pth"
    torch.save({"epoch": 3, "max_accuracy": 81.2}, path)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert_message(error, "not a checkpoint", "no tensors", "epoch")


class TrainingConfig:
    """Stands in for the yacs CfgNode that official training checkpoints pickle next to the weights."""

    def __init__(self) -> None:
        self.lr = 1e-3


def test_pickle_that_needs_code_is_refused_with_the_fix(tmp_path, tiny_model):
    path = tmp_path / "ckpt_epoch_299.pth"
    torch.save({"model": tiny_model.state_dict(), "config": TrainingConfig()}, path)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert_message(error, "TrainingConfig", "never unpickles code", "weights_only=False", "torch.save({'model'")


def test_head_of_another_class_count_needs_num_classes(tmp_path, tiny_model):
    path = tmp_path / "tiny.pth"
    torch.save({"model": tiny_model.state_dict()}, path)
    with pytest.raises(CheckpointError) as error:
        swinv2.create_model("swinv2_tiny_window8_256", pretrained=path, **TINY_ARCHITECTURE)
    assert_message(error, "10 classes", "1000", "num_classes=10", "num_classes=1000")


def test_num_classes_reinitialises_the_head(tmp_path, tiny_model):
    path = tmp_path / "tiny.pth"
    torch.save({"model": tiny_model.state_dict()}, path)
    with pytest.warns(UserWarning, match="re-initialised the classification head"):
        model = swinv2.create_model("swinv2_tiny_window8_256", pretrained=path, num_classes=5, **TINY_ARCHITECTURE)
    assert tuple(model.head.weight.shape) == (5, 256)
    assert torch.all(model.head.bias == 0)  # official init: Linear bias 0, not a slice of the old head
    source = tiny_model.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, source[key]), key


def test_unknown_keys_are_not_a_layout():
    with pytest.raises(CheckpointError) as error:
        detect_layout({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)})
    assert_message(error, "cannot tell the layout", "conv1.weight", "layout=")


# ------------------------------------------------------------------------------------ files
def test_save_pretrained_from_pretrained_round_trip(tmp_path, tiny_model, tiny_input):
    directory = swinv2.save_pretrained(tiny_model, tmp_path / "tiny")
    assert sorted(path.name for path in directory.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((directory / "config.json").read_text())
    assert config["format"] == "swinv2" and config["embed_dim"] == 32 and config["window_size"] == [4, 4]

    model = swinv2.from_pretrained(directory).eval()
    assert model.config == tiny_model.config
    with torch.no_grad():
        assert torch.equal(model(tiny_input), tiny_model(tiny_input))

    with pytest.warns(UserWarning, match="re-initialised"):
        relabelled = swinv2.from_pretrained(directory, num_classes=3)
    assert tuple(relabelled.head.weight.shape) == (3, 256)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    write_safetensors({"a": torch.ones(2)}, target)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half a file")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == [target]
    assert torch.equal(read_checkpoint(target)[0]["a"], torch.ones(2))


@pytest.mark.parametrize(
    "dst_name, target_layout, detected",
    [
        ("out.safetensors", "timm", "timm"),
        ("out.pth", "official", "project"),  # the official names without buffers are ours
        ("out.bin", "hf", "hf"),
        ("out.safetensors", "project", "project"),
    ],
)
def test_convert_checkpoint_files(tmp_path, tiny_config, tiny_model, dst_name, target_layout, detected):
    src = tmp_path / "official.pth"
    torch.save({"model": official_state(tiny_model)}, src)
    dst = convert_checkpoint(src, tmp_path / dst_name, target_layout=target_layout)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["official.pth", dst_name])  # no temporaries
    if target_layout == "official":
        raw = torch.load(dst, weights_only=True)
        assert set(raw) == {"model"}  # wrapped as the official scripts save
    assert detect_layout(read_checkpoint(dst)[0]) == detected
    model = load_pretrained(SwinTransformerV2(tiny_config), dst)
    assert_equal_states(model.state_dict(), tiny_model.state_dict())


def test_convert_simmim_to_project_directory(tmp_path, tiny_model):
    src = tmp_path / "simmim.pth"
    torch.save({"model": simmim_state(tiny_model)}, src)
    with pytest.warns(UserWarning, match="dropping the SimMIM mask token"):
        directory = convert_checkpoint(src, tmp_path / "encoder", img_size=64, window_size=4)
    with pytest.warns(UserWarning, match="no classification head"):
        model = swinv2.from_pretrained(directory, num_classes=TINY_CLASSES)
    assert model.config.num_classes == TINY_CLASSES
    assert torch.equal(model.patch_embed.proj.weight, tiny_model.patch_embed.proj.weight)

    kept = convert_checkpoint(src, tmp_path / "simmim.safetensors", target_layout="simmim")
    expected = {f"encoder.{key}": value for key, value in tiny_model.state_dict().items() if not key.startswith("head.")}
    extras = ("encoder.mask_token", "decoder.0.weight", "decoder.0.bias")
    assert_equal_states(read_checkpoint(kept)[0], {**expected, **{key: simmim_state(tiny_model)[key] for key in extras}})


def test_convert_to_directory_checks_the_config_against_the_weights(tmp_path, tiny_model):
    src = tmp_path / "tiny.safetensors"
    save_file(tiny_model.state_dict(), src)
    with pytest.raises(CheckpointError) as error:  # SwinV2-T's defaults do not fit these shapes
        convert_checkpoint(src, tmp_path / "out", embed_dim=96)
    assert_message(error, "patch_embed.proj.weight: expected (96, 3, 4, 4), found (32, 3, 4, 4)")
    assert not (tmp_path / "out").exists()
