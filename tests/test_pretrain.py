"""`swinv2 pretrain` (SimMIM on the shared training loop) and `swinv2 train --init-from` a SimMIM checkpoint.

The runs are tiny: a few hundred Fashion-MNIST training images (labels unused) resized to 16 px, a model
of one or two stages with 16 channels. What is checked is behaviour: the files a run leaves, a loss that
falls on a fixed batch, a resumed run equal bit for bit to an uninterrupted one, and a fine-tune that
starts from exactly the pre-trained encoder with the layer-wise learning rates of SPEC section 3."""
from __future__ import annotations

import json

import pytest
import torch
from test_resume import Interrupted, assert_identical, training_state

from swinv2 import save_simmim
from swinv2.checkpoints import save_pretrained
from swinv2.cli import main
from swinv2.data import MaskGenerator, build_dataset
from swinv2.errors import CheckpointError, ConfigError
from swinv2.models import create_model, create_simmim, get_config
from swinv2.train import loop
from swinv2.train.config import PretrainConfig, list_recipes, load_config, recipe_text
from swinv2.train.metrics import read_metrics
from swinv2.train.optim import resolve_layer_decay
from swinv2.train.pretrain import SIMMIM_FILE, SimMIMTask, build_simmim, pretrain

ONE_STAGE = [
    "model.overrides.img_size=16", "model.overrides.patch_size=4", "model.overrides.window_size=4",
    "model.overrides.embed_dim=16", "model.overrides.depths=[2]", "model.overrides.num_heads=[1]",
    "simmim.mask_patch_size=4",  # 16 of the 4x4 px tokens, 10 of them masked
]
# Two stages: the encoder stride is 8 px, stage 1 maps 2x2 tokens (its window clamps to 2).
TWO_STAGES = [
    "model.overrides.img_size=16", "model.overrides.patch_size=4", "model.overrides.window_size=4",
    "model.overrides.embed_dim=16", "model.overrides.depths=[1, 2]", "model.overrides.num_heads=[1, 2]",
    "simmim.mask_patch_size=8",
]
FASHION_MNIST = [
    "data.dataset=fashion-mnist", "data.img_size=16", "data.channels=1", "data.crop_pct=1.0", "data.num_workers=0",
    "data.max_val_images=32",
]


def pretrain_config(tmp_path, name: str, *extra: str) -> PretrainConfig:
    return load_config(None, [
        *FASHION_MNIST, *ONE_STAGE, "data.max_train_images=80", "model.overrides.drop_path_rate=0.1",
        "optim.base_lr=0.05", "schedule.epochs=2", "schedule.warmup_epochs=0.5", "run.batch_size=16",
        "run.precision=fp32", "run.ema_decay=0.9", "run.log_every=1", f"run.output_dir={tmp_path}", f"run.name={name}",
        *extra,
    ], kind=PretrainConfig)


def fixed_batch_loss(model, images: torch.Tensor, mask: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(images, mask))


def test_cli_pretrain_writes_everything_and_learns(tmp_path, capsys):
    arguments = ["pretrain", "--no-progress", *FASHION_MNIST, *ONE_STAGE, "data.max_train_images=320",
                 "model.overrides.drop_path_rate=0.0", "optim.base_lr=0.1", "schedule.epochs=3",
                 "schedule.warmup_epochs=0.2", "run.batch_size=32", "run.precision=fp32", "run.log_every=2",
                 f"run.output_dir={tmp_path}", "run.name=cli"]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    assert "without labels, 10 of 16 4 px mask patches masked, targets normalised over 3 px" in output
    assert "reconstruction loss:" in output
    run = tmp_path / "cli"
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "reconstruction.png", "model/" + SIMMIM_FILE,
                 "checkpoints/latest.json", "checkpoints/best.pt"):
        assert (run / name).stat().st_size > 0, name
    assert sorted(path.name for path in (run / "reconstructions").iterdir()) == [
        "step-00000010.png", "step-00000020.png", "step-00000030.png"]  # one picture per evaluation (epoch)
    records = read_metrics(run / "metrics.jsonl")
    assert sum("eval_loss" in record for record in records) == 3 and any("train_loss" in record for record in records)
    config = load_config(run / "config.yaml", kind=PretrainConfig)
    assert config.simmim.mask_patch_size == 4 and config.run.name == "cli"

    # The saved model, in the official SimMIM layout, loads into a fresh SimMIM; on a fixed batch of images
    # and masks it reconstructs far better than the same model at its initialisation.
    trained = create_simmim("swinv2_tiny_window8_256", pretrained=run / "model" / SIMMIM_FILE, in_chans=1,
                            img_size=16, patch_size=4, window_size=4, embed_dim=16, depths=[2], num_heads=[1],
                            mask_patch_size=4)
    state = torch.load(run / "model" / SIMMIM_FILE, weights_only=True)["model"]
    assert "encoder.mask_token" in state and "decoder.0.weight" in state
    torch.manual_seed(0)
    initial = build_simmim(config, channels=1)
    dataset = build_dataset("fashion-mnist", split="test")  # a fixed batch of real images, normalised
    raw = torch.stack([dataset[index][0] for index in range(16)]).float() / 255.0
    images = torch.nn.functional.interpolate(raw, size=16, mode="bilinear", antialias=True)
    images = (images - 0.286) / 0.353
    mask = initial.mask_generator(16, generator=torch.Generator().manual_seed(1))
    before, after = fixed_batch_loss(initial, images, mask), fixed_batch_loss(trained, images, mask)
    assert after < 0.8 * before, (before, after)


def test_pretraining_loss_falls_on_a_fixed_batch(tmp_path):
    """One batch of 32 images seen again and again: the training loss on it ends well below where it began."""
    result = pretrain(pretrain_config(tmp_path, "fixed", "data.max_train_images=32", "run.batch_size=32",
                                      "schedule.epochs=40", "schedule.warmup_epochs=2", "optim.base_lr=0.2",
                                      "run.ema_decay=null", "run.eval_every=40", "model.overrides.drop_path_rate=0.0",
                                      "simmim.crop_scale=[1.0, 1.0]", "simmim.crop_ratio=[1.0, 1.0]",
                                      "simmim.hflip=0.0"))
    losses = [record["train_loss"] for record in read_metrics(result.run_dir / "metrics.jsonl") if "train_loss" in record]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.75 * first, (first, last)


def stop_at(batch: int):
    """SimMIMTask.loss that raises on its `batch`-th call, as a process killed in that step would."""
    original, calls = SimMIMTask.loss, []

    def loss(task, trained, images, labels):
        calls.append(1)
        if len(calls) == batch:
            raise Interrupted
        return original(task, trained, images, labels)

    return loss


@pytest.mark.slow
def test_pretraining_resumed_after_a_crash_is_bit_identical(tmp_path, monkeypatch):
    """Random crops, flips, masks, drop path and the EMA: all replayed exactly after a crash mid-epoch."""
    uninterrupted = pretrain(pretrain_config(tmp_path, "whole", "run.checkpoint_every=3"))
    assert uninterrupted.step == 10 and uninterrupted.completed

    with monkeypatch.context() as patch:
        patch.setattr(SimMIMTask, "loss", stop_at(9))  # in step 9: the last checkpoint is step 6, in epoch 2
        with pytest.raises(Interrupted):
            pretrain(pretrain_config(tmp_path, "split", "run.checkpoint_every=3"))
    resumed = pretrain(pretrain_config(tmp_path, "split", "run.checkpoint_every=3", f"run.resume={tmp_path / 'split'}"))
    assert resumed.step == 10 and resumed.completed
    assert_identical(training_state(uninterrupted.checkpoint), training_state(resumed.checkpoint))
    final = [torch.load(result.model_dir / SIMMIM_FILE, weights_only=True)["model"] for result in (uninterrupted, resumed)]
    assert_identical(*final, where="simmim.pth")
    drop_timing = [[{key: value for key, value in record.items() if key != "images_per_second"}
                    for record in read_metrics(result.run_dir / "metrics.jsonl")] for result in (uninterrupted, resumed)]
    assert drop_timing[0] == drop_timing[1]


def test_pretraining_resumes_from_a_planned_stop_with_the_cli(tmp_path, capsys):
    whole = pretrain(pretrain_config(tmp_path, "whole"))
    stopped = pretrain(pretrain_config(tmp_path, "split", "run.stop_after_steps=4"))
    assert not stopped.completed and "swinv2 pretrain --resume" in capsys.readouterr().out
    assert main(["pretrain", "--no-progress", "--resume", str(stopped.run_dir)]) == 0
    assert_identical(training_state(whole.checkpoint), training_state(stopped.run_dir))
    # A pre-training checkpoint is not a classification run's to resume, and says which command is.
    assert main(["train", "--resume", str(stopped.run_dir)]) == 2
    assert "swinv2 pretrain --resume" in capsys.readouterr().err


def capture_optimizer(monkeypatch) -> dict:
    """Record the model's weights and the optimizer's groups when the loop builds the optimizer (before any step)."""
    seen: dict = {}
    original = loop.build_optimizer

    def build(model, optim, lr):
        optimizer = original(model, optim, lr)
        seen["state"] = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        seen["buffers"] = {name: tuple(tensor.shape) for name, tensor in model.named_buffers()}
        seen["scales"] = {name: group["lr_scale"] for group in optimizer.param_groups for name in group["names"]}
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", build)
    return seen


FINE_TUNE = [
    *FASHION_MNIST, "data.max_train_images=64", "augment.randaugment=null", "augment.mixup=0.0", "augment.cutmix=0.0",
    "augment.random_erasing=0.0", "schedule.max_steps=2", "schedule.warmup_epochs=0", "run.batch_size=16",
    "run.precision=fp32", "run.eval_every=1",
]


@pytest.mark.slow
def test_fine_tune_from_simmim_at_another_window_loads_the_encoder_with_layer_decay(tmp_path, monkeypatch, capsys):
    pretrained = pretrain(pretrain_config(tmp_path, "pre", *TWO_STAGES, "run.ema_decay=null", "schedule.epochs=1"))
    simmim_file = pretrained.model_dir / SIMMIM_FILE
    checkpoint = torch.load(simmim_file, weights_only=True)["model"]
    seen = capture_optimizer(monkeypatch)
    arguments = ["train", "--no-progress", "--init-from", str(simmim_file), *FINE_TUNE, *TWO_STAGES[:-1],
                 "model.overrides.window_size=2",  # pre-trained with 4: the position-bias MLP transfers
                 f"run.output_dir={tmp_path}", "run.name=fine"]
    assert main(arguments) == 0
    assert "layer decay 0.75" in capsys.readouterr().out

    state = seen["state"]
    encoder = {key.removeprefix("encoder."): tensor for key, tensor in checkpoint.items()
               if key.startswith("encoder.") and key != "encoder.mask_token"}
    for key, tensor in encoder.items():
        assert torch.equal(state[key], tensor), key
    # The classifier's own: a new head; no mask token, no decoder; and position tables built for 2x2 windows.
    assert set(state) - set(encoder) == {"head.weight", "head.bias"}
    assert seen["buffers"]["layers.0.blocks.0.attn.relative_coords_table"] == (3, 3, 2)

    # SPEC 3 with depths [1, 2]: L = 5 layers; scale 0.75^(L - 1 - id).
    expected_ids = {"patch_embed.": 0, "layers.0.blocks.0.": 1, "layers.0.downsample.": 1, "layers.1.blocks.0.": 2,
                    "layers.1.blocks.1.": 3, "norm.": 4, "head.": 4}
    scales = seen["scales"]
    assert set(scales) == {name for name, _ in create_model(
        "swinv2_tiny_window8_256", img_size=16, patch_size=4, window_size=2, embed_dim=16, depths=[1, 2],
        num_heads=[1, 2], in_chans=1, num_classes=10).named_parameters()}
    for name, scale in scales.items():
        layer = next(layer for prefix, layer in expected_ids.items() if name.startswith(prefix))
        assert scale == pytest.approx(0.75 ** (4 - layer)), name

    # A value set in the configuration wins over auto: null is no layer decay.
    seen.clear()
    assert main([*arguments, "optim.layer_decay=null", "run.name=fine-flat"]) == 0
    assert set(seen["scales"].values()) == {1.0}


def test_layer_decay_auto_is_only_for_simmim_checkpoints(tmp_path):
    classifier = tmp_path / "classifier"
    save_pretrained(create_model("swinv2_tiny_window8_256", img_size=16, embed_dim=16, depths=[1], num_heads=[1],
                                 window_size=4, num_classes=3), classifier)
    simmim = create_simmim("swinv2_tiny_window8_256", img_size=16, embed_dim=16, depths=[1], num_heads=[1],
                           window_size=4, mask_patch_size=4)
    save_simmim(simmim, tmp_path / "simmim.pth")
    assert resolve_layer_decay("auto", str(tmp_path / "simmim.pth")) == 0.75
    assert resolve_layer_decay("auto", str(classifier)) is None
    assert resolve_layer_decay("auto", None) is None
    assert resolve_layer_decay(0.9, str(tmp_path / "simmim.pth")) == 0.9
    assert resolve_layer_decay(None, str(tmp_path / "simmim.pth")) is None


def test_pretrain_configuration_is_checked(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"simmim.mask_ratio must be in \(0, 1\]"):
        load_config(None, ["simmim.mask_ratio=1.5"], kind=PretrainConfig)
    with pytest.raises(ConfigError, match="simmim.norm_target_window must be odd"):
        load_config(None, ["simmim.norm_target_window=8"], kind=PretrainConfig)
    # A section of the other command is named as such.
    with pytest.raises(ConfigError, match=r"a simmim section makes it a `swinv2 pretrain` configuration"):
        load_config("simmim-fashion-mnist")
    with pytest.raises(ConfigError, match=r"an? augment section makes it a `swinv2 train` configuration"):
        load_config("fashion-mnist", kind=PretrainConfig)
    with pytest.raises(ConfigError, match="layer-wise lr decay is for fine-tuning"):
        pretrain(pretrain_config(tmp_path, "decay", "optim.layer_decay=0.75"))
    # A mask patch that does not divide the image is refused before training, with the sizes that do.
    assert main(["pretrain", *FASHION_MNIST, *ONE_STAGE, "simmim.mask_patch_size=12", f"run.output_dir={tmp_path}"]) == 2
    assert "4, 8, 16" in capsys.readouterr().err
    assert list_recipes(PretrainConfig) == ["simmim-fashion-mnist", "simmim-swinv2-base-192"]
    for recipe in list_recipes(PretrainConfig):
        config = load_config(recipe, kind=PretrainConfig)
        model = get_config(config.model.name, **config.model.overrides)  # a valid model
        assert config.run.name == recipe and "#" in recipe_text(recipe)  # each value says where it comes from
        # The mask patches fit the image and the model's patch; the official values for SwinV2-B.
        MaskGenerator(model.img_size, config.simmim.mask_patch_size, model.patch_size, config.simmim.mask_ratio)
    # The Fashion-MNIST pre-training recipe pre-trains the demo's model, so its checkpoint fine-tunes there.
    def shape(config):  # the architecture: what a checkpoint must match (not the head, not regularisation)
        return {key: value for key, value in config.model.overrides.items() if key not in ("num_classes", "drop_path_rate")}

    assert shape(load_config("fashion-mnist")) == shape(load_config("simmim-fashion-mnist", kind=PretrainConfig))
    official = load_config("simmim-swinv2-base-192", kind=PretrainConfig)
    assert (official.optim.base_lr, official.optim.weight_decay, official.schedule.epochs, official.schedule.warmup_epochs,
            official.schedule.warmup_lr, official.model.overrides["drop_path_rate"]) == (1e-4, 0.05, 800, 10, 5e-7, 0.1)
    assert (official.simmim.mask_patch_size, official.simmim.norm_target_window, official.data.img_size) == (32, 47, 192)


def test_balanced_label_subset_is_fixed_by_its_seed(tmp_path):
    dataset = build_dataset("fashion-mnist")
    first, again, other = (loop.balanced_subset(dataset, 6, seed) for seed in (1, 1, 2))
    assert first.indices == again.indices and first.indices != other.indices
    assert torch.bincount(loop.dataset_labels(first), minlength=10).tolist() == [6] * 10
    with pytest.raises(ConfigError, match="has only"):
        loop.balanced_subset(loop.first(dataset, 100), 50, 0)
    assert json.dumps(first.indices)  # plain ints
    with pytest.raises(CheckpointError):
        resolve_layer_decay("auto", str(tmp_path / "missing.pth"))
