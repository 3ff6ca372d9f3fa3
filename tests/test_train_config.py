"""Training configuration (YAML + dotted overrides into dataclasses, recipes) and precision choice on CPU."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import swinv2
from swinv2.errors import ConfigError
from swinv2.train import (
    TrainConfig,
    autocast,
    config_to_yaml,
    list_recipes,
    load_config,
    make_grad_scaler,
    resolve_precision,
)
from swinv2.train.config import recipe_text


def write(tmp_path, text: str):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_resolve_types(tmp_path):
    path = write(tmp_path, """
optim:
  base_lr: 1e-3          # YAML 1.1 reads this as a string: it must still become a float
  betas: [0.8, 0.9]
schedule:
  epochs: 5              # an int where a float is expected
  warmup_epochs: 1
run:
""")
    cfg = load_config(path, [
        "run.batch_size=64",
        "optim.clip_grad=null",
        "augment.randaugment=[1, 5]",
        "run.name=007",  # stays text: YAML alone would make it the int 7
        "model.overrides.drop_path_rate=0.3",
        "model.overrides.depths=[1, 1]",
        "data.mean=[0.5]", "data.std=[0.25]", "data.channels=1",
    ])
    assert cfg.optim.base_lr == 1e-3 and isinstance(cfg.optim.base_lr, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.schedule.epochs == 5.0 and isinstance(cfg.schedule.epochs, float)
    assert cfg.run.batch_size == 64 and cfg.run.name == "007"
    assert cfg.optim.clip_grad is None
    assert cfg.augment.randaugment == (1, 5)
    assert cfg.model.overrides == {"drop_path_rate": 0.3, "depths": [1, 1]}
    assert (cfg.data.mean, cfg.data.std, cfg.data.channels) == ((0.5,), (0.25,), 1)
    # Untouched keys keep the defaults.
    assert cfg.optim.weight_decay == 0.05 and cfg.schedule.min_lr == 5e-6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.base_rate=1e-3"], r"optim\.base_rate.*valid keys of optim: base_lr"),
        (["optimizer.base_lr=1e-3"], r"unknown section 'optimizer'.*optim"),
        (["run.batch_size=abc"], r"run\.batch_size must be an integer, got 'abc'"),
        (["run.batch_size=2.5"], r"run\.batch_size must be an integer"),
        (["optim.betas=[0.9]"], r"optim\.betas must be a list of 2 numbers"),
        (["run.compile=maybe"], r"run\.compile must be true or false"),
        (["run.keep_freed_memory=sometimes"], r"run\.keep_freed_memory must be true or false or null"),
        (["run.device=gpu"], r"run\.device must be auto, cpu, cuda or cuda:N"),
        (["run.precision=fp8"], r"run\.precision must be one of auto, fp32, bf16, fp16"),
        (["data.dataset=cifar"], r"data\.dataset must be one of"),
        (["schedule.warmup_epochs=400"], r"schedule\.warmup_epochs must be in \[0, epochs=300.0\]"),
        (["model.name=swinv2_tiny"], r"model\.name must be a registered model"),
        (["model.overrides.depthz=[2]"], r"unknown SwinV2Config fields \['depthz'\]"),
        (["run.name.first=x"], r"only model.overrides takes a sub-key"),
        (["optim.base_lr"], r"must look like section.key=value"),
        (["data.mean=[0.5]"], r"data\.mean needs one value per channel \(3\)"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = write(tmp_path, "augment:\n  mixup: 0.2\n  cutmixx: 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown key augment\.cutmixx in .*train\.yaml.*cutmix"):
        load_config(path)
    with pytest.raises(ConfigError, match="neither a config file nor a recipe"):
        load_config("imagenet-1k")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_round_trip(tmp_path):
    cfg = load_config("imagenet-22k-to-1k", ["run.ema_decay=0.9998", "data.train_path=/data/in1k/train"])
    text = config_to_yaml(cfg)
    again = load_config(write(tmp_path, text))
    assert again == cfg
    assert config_to_yaml(again) == text
    assert "betas: [0.9, 0.999]" in text  # lists on one line, readable in the run directory


def test_defaults_round_trip(tmp_path):
    assert load_config(write(tmp_path, config_to_yaml(TrainConfig()))) == TrainConfig() == load_config(None)


def test_every_recipe_loads_and_builds_its_model():
    assert list_recipes() == ["fashion-mnist", "imagenet-1k-scratch", "imagenet-22k-to-1k"]
    for name in list_recipes():
        cfg = load_config(name)
        config = swinv2.get_config(cfg.model.name, **cfg.model.overrides)  # a valid model
        assert cfg.run.name == name and "#" in recipe_text(name)  # each value says where it comes from
        if name == "fashion-mnist":
            assert (config.in_chans, config.num_classes, config.img_size) == (1, 10, (28, 28))
            assert (cfg.data.dataset, cfg.data.channels, cfg.data.img_size) == ("fashion-mnist", 1, 28)


def test_official_recipe_values():
    scratch = load_config("imagenet-1k-scratch")
    assert dataclasses.astuple(scratch.optim) == (5e-4, 512, 0.05, (0.9, 0.999), 1e-8, 5.0, None, 1)
    assert dataclasses.astuple(scratch.schedule) == (300.0, 20.0, 5e-7, 5e-6, None)
    assert swinv2.get_config(scratch.model.name).drop_path_rate == 0.2  # tiny, from the registry
    assert (scratch.augment.randaugment, scratch.augment.mixup, scratch.augment.cutmix) == ((2, 9), 0.8, 1.0)
    assert (scratch.augment.label_smoothing, scratch.augment.random_erasing, scratch.augment.color_jitter) == (
        0.1, 0.25, 0.4)
    assert scratch.run.batch_size == 128

    finetune = load_config("imagenet-22k-to-1k")
    model = swinv2.get_config(finetune.model.name, **finetune.model.overrides)
    assert model.drop_path_rate == 0.2 and model.window_size == (16, 16) and model.img_size == (256, 256)
    assert model.pretrained_window_sizes == ((12, 12), (12, 12), (12, 12), (6, 6))
    assert dataclasses.astuple(finetune.schedule) == (30.0, 5.0, 2e-8, 2e-7, None)
    assert (finetune.optim.base_lr, finetune.optim.weight_decay) == (2e-5, 1e-8)


def test_sections_check_values_built_in_python():
    with pytest.raises(ConfigError, match=r"optim\.layer_decay must be null or in \(0, 1\]"):
        load_config(None, ["optim.layer_decay=1.5"])
    with pytest.raises(ConfigError, match=r"augment\.scale must be \(low, high\)"):
        dataclasses.replace(TrainConfig().augment, scale=(0.9, 0.1))


# ------------------------------------------------------------------------------------ precision
def cpu_flags() -> set[str]:
    """The kernel's list of this CPU's instruction-set extensions (independent of torch's detection)."""
    for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not cpu_flags(), reason="needs Linux's /proc/cpuinfo")
def test_auto_precision_on_cpu_is_bf16_only_with_bf16_instructions():
    """bf16 autocast pays only where the CPU multiplies bf16 in hardware; elsewhere it is emulated (slower than fp32)."""
    native = bool(cpu_flags() & {"amx_bf16", "amx_tile", "avx512_bf16"})
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_auto_precision_follows_the_cpu_capability(monkeypatch):
    import swinv2.train.precision as precision

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"


def test_precision_resolution_on_cpu():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_precision("half", "cpu")
    assert make_grad_scaler("cpu", "bf16") is None and make_grad_scaler("cpu", "auto") is None


def test_autocast_on_cpu_runs_matmuls_in_bf16():
    a = torch.randn(4, 4)
    with autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32
