"""`train(config)`: the training and fine-tuning loop behind `swinv2 train` and `make demo`.

One epoch: uint8 batches from the loader -> augmentation on the device -> forward under autocast ->
soft-target cross-entropy -> backward (accumulated) -> clip -> AdamW step with the per-iteration
warm-up + cosine learning rate -> EMA. After each evaluation the metrics go to metrics.jsonl (and
TensorBoard); at the end the run directory holds the model, the curves, the confusion matrix and a
picture of predictions."""
from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm import tqdm

from ..checkpoints import load_pretrained
from ..data import DATASET_STATS, EvalPreprocess, TrainAugmentation, build_dataset, make_loader, soft_target_cross_entropy
from ..models import SwinTransformerV2, create_model
from ..plots import plot_confusion, plot_curves, plot_predictions
from .artifacts import save_classifier
from .config import TrainConfig, config_to_yaml
from .ema import ModelEma
from .evaluate import EvalResult, evaluate
from .metrics import MetricsLogger
from .optim import build_optimizer, scaled_lr
from .precision import autocast, make_grad_scaler, resolve_device, resolve_precision
from .schedule import WarmupCosineSchedule


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    test: EvalResult
    wall_seconds: float
    images_seen: int
    skipped_images: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def first(dataset, count: int | None):
    """The first `count` items (all when None): small runs and tests."""
    return dataset if count is None or count >= len(dataset) else Subset(dataset, range(count))


def dataset_classes(dataset) -> list[str]:
    return dataset.dataset.classes if isinstance(dataset, Subset) else dataset.classes


def build_model(config: TrainConfig, num_classes: int, channels: int) -> SwinTransformerV2:
    """The configured model for this dataset; `init_from` loads any checkpoint (new head if needed)."""
    overrides = dict(config.model.overrides)
    overrides.update(num_classes=num_classes, in_chans=channels)
    if config.data.img_size is not None:
        overrides["img_size"] = config.data.img_size
    model = create_model(config.model.name, **overrides)
    if config.model.init_from:
        # Fine-tuning: the body transfers (any window or resolution); a head of another class count is new.
        load_pretrained(model, config.model.init_from, reset_head=True)
    return model


def train(config: TrainConfig, progress: bool | None = None) -> TrainResult:
    """Train or fine-tune as `config` says; returns where everything was written and the final test metrics."""
    started = time.perf_counter()
    progress = sys.stderr.isatty() if progress is None else progress
    device = resolve_device(config.run.device)  # before anything is written: a bad device leaves no run behind
    precision = resolve_precision(config.run.precision, device)
    run_dir = Path(config.run.output_dir) / config.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = config_to_yaml(config)
    (run_dir / "config.yaml").write_text(resolved)
    print(f"resolved configuration (saved to {run_dir / 'config.yaml'}):\n{resolved}")

    seed_everything(config.run.seed)
    data = config.data
    train_set = build_dataset(data.dataset, data.train_path, split="train", load_size=data.load_size, channels=data.channels)
    test_set = build_dataset(data.dataset, data.val_path, split="test", load_size=data.load_size, channels=data.channels)
    train_set, test_set = first(train_set, data.max_train_images), first(test_set, data.max_val_images)
    classes = dataset_classes(train_set)
    # Normalisation statistics: given, else the dataset's own (Fashion-MNIST), else ImageNet's.
    mean, std = (data.mean, data.std) if data.mean is not None else DATASET_STATS.get(data.dataset, DATASET_STATS["imagenet"])

    model = build_model(config, len(classes), data.channels).to(device)
    img_size = model.config.img_size
    augment = config.augment
    augmentation = TrainAugmentation(
        img_size=img_size, mean=mean, std=std, num_classes=len(classes), **dataclasses.asdict(augment)
    ).to(device)
    preprocess = EvalPreprocess(img_size=img_size, mean=mean, std=std, crop_pct=data.crop_pct).to(device)

    run = config.run
    loader = make_loader(train_set, run.batch_size, shuffle=True, num_workers=data.num_workers, seed=run.seed,
                         drop_last=True)
    test_loader = make_loader(test_set, run.eval_batch_size or 2 * run.batch_size, shuffle=False,
                              num_workers=data.num_workers)
    accumulation = config.optim.accumulation_steps
    steps_per_epoch = max(len(loader) // accumulation, 1)
    total_steps = int(config.schedule.max_steps or math.ceil(config.schedule.epochs * steps_per_epoch))
    epochs = math.ceil(total_steps / steps_per_epoch)
    # Learning rates are given per 512 images, as in the official configs, and scaled linearly.
    lr_scale = scaled_lr(1.0, run.batch_size, accumulation, 1, config.optim.lr_reference_batch)
    optimizer = build_optimizer(model, config.optim, config.optim.base_lr * lr_scale)
    schedule = WarmupCosineSchedule(
        optimizer,
        peak_lr=config.optim.base_lr * lr_scale,
        warmup_lr=config.schedule.warmup_lr * lr_scale,
        min_lr=config.schedule.min_lr * lr_scale,
        warmup_steps=round(config.schedule.warmup_epochs * steps_per_epoch),
        total_steps=total_steps,
    )
    scaler = make_grad_scaler(device, precision)
    ema = ModelEma(model, run.ema_decay) if run.ema_decay else None
    trained = torch.compile(model) if run.compile else model
    logger = MetricsLogger(run_dir)
    print(f"training {config.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) on "
          f"{len(train_set)} images, {len(classes)} classes, {device}, {precision}; {epochs} epochs of "
          f"{steps_per_epoch} steps, peak lr {config.optim.base_lr * lr_scale:.3g}")

    step, images_seen, skipped = 0, 0, 0
    test_result = None
    for epoch in range(epochs):
        model.train()
        window_start, window_images = time.perf_counter(), 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False, dynamic_ncols=True)
        for index, batch in enumerate(bar):
            skipped += batch.skipped
            images, labels = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
            inputs, targets = augmentation(images, labels)
            with autocast(device, precision):
                logits = trained(inputs)
            loss = soft_target_cross_entropy(logits.float(), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower the learning rate or use fp32")
            (scaler.scale(loss / accumulation) if scaler else loss / accumulation).backward()
            images_seen += len(labels)
            window_images += len(labels)
            if (index + 1) % accumulation:
                continue
            schedule.step(step)
            if scaler:
                scaler.unscale_(optimizer)
            if config.optim.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_grad)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema:
                ema.update(model)
            step += 1
            if step % run.log_every == 0 or step == total_steps:
                rate = window_images / (time.perf_counter() - window_start)
                lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
                logger.log(dict(step=step, epoch=epoch + step % steps_per_epoch / steps_per_epoch,
                                train_loss=loss.item(), lr=lr, images_per_second=rate))
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
                window_start, window_images = time.perf_counter(), 0
            if step >= total_steps:
                break
        last = epoch == epochs - 1 or step >= total_steps
        if last or (epoch + 1) % run.eval_every == 0:
            evaluated = ema.module if ema else model
            test_result = evaluate(evaluated, test_loader, preprocess, device, precision, len(classes))
            logger.log(dict(step=step, epoch=epoch + 1, eval_loss=test_result.loss, eval_top1=test_result.top1,
                            eval_top5=test_result.top5))
            print(f"epoch {epoch + 1}/{epochs}: test top-1 {test_result.top1:.2f}%, top-5 {test_result.top5:.2f}%, "
                  f"loss {test_result.loss:.4f}, {time.perf_counter() - started:.0f} s")
        if step >= total_steps:
            break
    logger.close()

    final = ema.module if ema else model
    model_dir = run_dir / "model"
    preprocessing = dict(img_size=list(img_size), crop_pct=data.crop_pct, mean=list(mean), std=list(std),
                         channels=data.channels)
    save_classifier(final, model_dir, classes, preprocessing)
    plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    plot_confusion(test_result.confusion, classes, run_dir / "confusion.png")
    write_predictions(final, test_set, preprocess, classes, device, precision, run_dir / "predictions.png")
    wall = time.perf_counter() - started
    print(f"run directory: {run_dir}\n  model: {model_dir}\n  curves: {run_dir / 'curves.png'}\n"
          f"  confusion matrix: {run_dir / 'confusion.png'}\n  predictions: {run_dir / 'predictions.png'}\n"
          f"  metrics: {run_dir / 'metrics.jsonl'}")
    if skipped:
        print(f"skipped {skipped} unreadable images")
    print(f"test accuracy: {test_result.top1:.2f}% on {test_result.count} images, wall time {wall:.0f} s")
    return TrainResult(run_dir, model_dir, test_result, wall, images_seen, skipped)


def write_predictions(model, dataset, preprocess, classes, device, precision, path: Path, count: int = 32) -> None:
    """A grid of the first test images with the model's predictions, for people to look at."""
    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    samples = [sample for sample in samples if sample is not None]
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([label for _, label in samples])
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        probabilities = model(preprocess(images.to(device))).float().softmax(-1).cpu()
    confidence, predictions = probabilities.max(-1)
    plot_predictions(images, labels, predictions, confidence, classes, path)
