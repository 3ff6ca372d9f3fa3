"""`pretrain(config)`: SimMIM self-supervised pre-training behind `swinv2 pretrain`.

The loop is classification training's (`swinv2.train.loop.run_task`: run directory, AdamW with the
per-step warm-up + cosine schedule, accumulation, clipping, loss scaler, NaN guard, checkpoints and exact
resume, processes, metrics.jsonl, bars, curves); `SimMIMTask` brings what differs:

- data: the training images without their labels, through SimMIM's transform (random resized crop
  of 67-100% of the area, aspect 3/4-4/3, horizontal flip, normalisation), and a random mask per image
  drawn from torch's generator (so a checkpoint's saved random state replays it on resume);
- model and loss: `swinv2.create_simmim` (encoder + mask token + pixel-shuffle decoder, masked L1 on
  locally normalised pixels);
- evaluation: the same loss on the test images (evaluation preprocessing, masks from a fixed seed, so
  successive evaluations are comparable) and a picture of reconstructions, `reconstructions/step-N.png`;
- at the end: `model/simmim.pth`, the whole model in the official SimMIM layout, which
  `swinv2 train --init-from` and `create_simmim(pretrained=...)` read, and `reconstruction.png`."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoints.loading import load_simmim, save_simmim
from ..data import EvalPreprocess, build_dataset, make_loader
from ..data.augment import Normalize, RandomResizedCropFlip, pair
from ..errors import ConfigError
from ..models.simmim import SimMIM, create_simmim
from ..plots import plot_reconstructions
from .config import AUTO, PretrainConfig
from .distributed import Distributed
from .loop import Evaluation, Task, TrainResult, first, normalisation, run_task
from .precision import autocast

SIMMIM_FILE = "simmim.pth"
RECONSTRUCTION_NAME = "reconstruction.png"
RECONSTRUCTION_DIR = "reconstructions"
PICTURE_IMAGES = 8


class SimMIMTransform(nn.Module):
    """uint8 (B, C, H, W) -> float normalised (B, C, img, img): the official SimMIMTransform's random
    resized crop (bicubic) and flip, done on the whole batch on the device, then normalisation."""

    def __init__(self, img_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                 scale: Sequence[float] = (0.67, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5) -> None:
        super().__init__()
        self.crop_flip = RandomResizedCropFlip(pair(img_size), scale, ratio, hflip)
        self.normalize = Normalize(mean, std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.crop_flip(images.float() / 255.0).clamp(0.0, 1.0))


@dataclass
class ReconstructionResult:
    """SimMIM's loss on the evaluation images: masked L1, on normalised targets when the model uses them."""

    loss: float
    count: int  # images evaluated


def norm_target_window(config: PretrainConfig) -> int | str | None:
    """create_simmim's norm_target_window: None (raw pixels), an odd size, or "auto" (47 px scaled)."""
    simmim = config.simmim
    if not simmim.norm_target:
        return None
    return AUTO if simmim.norm_target_window is None else simmim.norm_target_window


def build_simmim(config: PretrainConfig, channels: int, initialise: bool = True) -> SimMIM:
    """The configured SimMIM model; `model.init_from` (a SimMIM checkpoint) continues from its weights
    unless `initialise` is False (a resumed run, whose weights come from its checkpoint)."""
    overrides = dict(config.model.overrides)
    overrides.pop("num_classes", None)  # no head: a classification recipe's model section fits as it is
    overrides["in_chans"] = channels
    if config.data.img_size is not None:
        overrides["img_size"] = config.data.img_size
    simmim = config.simmim
    model = create_simmim(config.model.name, norm_target_window=norm_target_window(config),
                          mask_patch_size=simmim.mask_patch_size, mask_ratio=simmim.mask_ratio, **overrides)
    if config.model.init_from and initialise:
        load_simmim(model, config.model.init_from)
    return model


def check_pretrain_config(config: PretrainConfig) -> None:
    """What a classification run allows but pre-training cannot use."""
    if config.optim.layer_decay not in (None, AUTO):
        raise ConfigError(f"optim.layer_decay={config.optim.layer_decay}: layer-wise lr decay is for fine-tuning; "
                          "SimMIM pre-training trains every layer at the same rate (set it to null)")
    if config.data.images_per_class is not None:
        raise ConfigError("data.images_per_class picks images by their labels; pre-training uses no labels "
                          "(use data.max_train_images for a smaller run)")


class SimMIMTask(Task):
    """SimMIM pre-training on the loop of `swinv2.train.loop` (see the module's docstring)."""

    command = "swinv2 pretrain"
    verb = "pre-training (SimMIM)"

    def __init__(self, config: PretrainConfig, device: torch.device, precision: str, distributed: Distributed,
                 run_dir: Path, initialise: bool) -> None:
        super().__init__(config, device, precision, distributed, run_dir, initialise)
        check_pretrain_config(config)
        data, run = config.data, config.run
        train_set = build_dataset(data.dataset, data.train_path, split="train", load_size=data.load_size,
                                  channels=data.channels)
        eval_set = build_dataset(data.dataset, data.val_path or data.train_path, split="test", load_size=data.load_size,
                                 channels=data.channels)
        self.train_set, self.eval_set = first(train_set, data.max_train_images), first(eval_set, data.max_val_images)
        self.mean, self.std = normalisation(data)
        self.model = self.build_model(initialise).to(device)
        img_size = self.model.config.img_size
        simmim = config.simmim
        self.transform = SimMIMTransform(img_size, self.mean, self.std, simmim.crop_scale, simmim.crop_ratio,
                                         simmim.hflip).to(device)
        self.preprocess = EvalPreprocess(img_size=img_size, mean=self.mean, std=self.std, crop_pct=data.crop_pct).to(device)
        self.eval_loader = make_loader(self.eval_set, run.eval_batch_size or 2 * run.batch_size, shuffle=False,
                                       num_workers=data.num_workers)

    def build_model(self, initialise: bool) -> SimMIM:
        return build_simmim(self.config, self.config.data.channels, initialise)

    def layer_decay(self) -> float | None:
        return None  # check_pretrain_config allows only null and auto

    def describe(self) -> str:
        masks = self.model.mask_generator
        window = self.model.norm_target_window
        return (f"{len(self.train_set)} images without labels, {masks.mask_count} of {masks.patch_count} "
                f"{masks.mask_patch_size} px mask patches masked, "
                f"{f'targets normalised over {window} px' if window else 'raw pixel targets'}")

    def dataset_identity(self) -> dict[str, int]:
        return {"train_images": len(self.train_set)}

    def loss(self, trained: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        inputs = self.transform(images)  # the labels are never used
        mask = self.model.random_mask(len(inputs))
        with autocast(self.device, self.precision):
            return trained(inputs, mask).float()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> Evaluation:
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(self.config.run.seed)
        total, count = 0.0, 0
        for batch in self.eval_loader:
            inputs = self.preprocess(batch.images.to(self.device))
            mask = self.model.mask_generator(len(inputs), generator=generator, device=self.device)
            with autocast(self.device, self.precision):
                total += float(model(inputs, mask)) * len(inputs)
            count += len(inputs)
        # Under FSDP only the full forward gathers the shards, so the pictures wait for the gathered final model.
        sharded = self.distributed.enabled and self.config.run.distributed == "fsdp"
        if self.distributed.is_main and not sharded:
            self.write_picture(model, self.run_dir / RECONSTRUCTION_DIR / f"step-{step:08d}.png")
        model.train(was_training)
        result = ReconstructionResult(total / max(count, 1), count)
        text = f"reconstruction loss {result.loss:.4f} on {count} test images"
        # best.pt keeps the highest metric: the lowest loss.
        return Evaluation(result, {"eval_loss": result.loss}, -result.loss if math.isfinite(result.loss) else None, text)

    def write_picture(self, model: SimMIM, path: Path) -> Path:
        """Original / masked / reconstructed for the first PICTURE_IMAGES evaluation images, with fixed masks."""
        count = min(PICTURE_IMAGES, len(self.eval_set))
        images = self.preprocess(torch.stack([self.eval_set[index][0] for index in range(count)]).to(self.device))
        generator = torch.Generator().manual_seed(self.config.run.seed + 1)
        mask = self.model.mask_generator(count, generator=generator, device=self.device)
        was_training = model.training
        model.eval()
        reconstructions = model.reconstruct(images, mask)  # fp32: a handful of images
        model.train(was_training)
        return plot_reconstructions(images.cpu(), mask.cpu(), reconstructions.cpu(), path, self.mean, self.std,
                                    title=f"SimMIM reconstructions: {self.run_dir.name}")

    def finish(self, model: SimMIM, model_dir: Path, evaluation: Evaluation) -> list[tuple[str, Path]]:
        checkpoint = save_simmim(model, model_dir / SIMMIM_FILE)
        picture = self.write_picture(model, self.run_dir / RECONSTRUCTION_NAME)
        return [("SimMIM checkpoint (official layout; fine-tune with `swinv2 train --init-from`)", checkpoint),
                ("reconstructions", picture), ("reconstructions during training", self.run_dir / RECONSTRUCTION_DIR)]

    def final_line(self, evaluation: Evaluation) -> str:
        return f"reconstruction loss: {evaluation.result.loss:.4f} on {evaluation.result.count} test images"


def pretrain(config: PretrainConfig, progress: bool | None = None) -> TrainResult:
    """SimMIM pre-training as `config` says; the result's `model_dir` holds `simmim.pth` and `test` is the
    final ReconstructionResult. Under torchrun every process calls this."""
    return run_task(config, SimMIMTask, progress)
