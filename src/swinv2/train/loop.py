"""`train(config)`: the training and fine-tuning loop behind `swinv2 train` and `make demo`.

`run_task` is the loop itself, shared with SimMIM pre-training (swinv2.train.pretrain): the run directory,
the optimizer and its per-step schedule, gradient accumulation and clipping, the loss scaler, the NaN guard,
checkpoints and resume, processes, logs, progress bars and curves. A `Task` brings what differs: its data,
model, loss, evaluation and what is saved at the end; `ClassificationTask` is the one of this module.

One epoch: uint8 batches from the loader -> augmentation on the device -> forward under autocast ->
soft-target cross-entropy -> backward (accumulated) -> clip -> AdamW step with the per-iteration
warm-up + cosine learning rate -> EMA. After each evaluation the metrics go to metrics.jsonl (and
TensorBoard); at the end the run directory holds the model, the curves, the confusion matrix and a
picture of predictions.

Checkpoints (swinv2.train.checkpointing) are saved every run.checkpoint_every steps and at every epoch
end; run.resume continues from one bit for bit: the model, optimizer, schedule, scaler, EMA, random
generators and the position in the epoch's data order are all restored. A NaN or infinite loss stops
the run before its step. Under torchrun the same loop runs in every process (swinv2.train.distributed)."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from ..allocator import keep_freed_memory, resolve_keep_freed_memory
from ..checkpoints import load_pretrained
from ..data import (
    DATASET_STATS,
    EvalPreprocess,
    TrainAugmentation,
    build_dataset,
    make_loader,
    soft_target_cross_entropy,
)
from ..errors import ConfigError, SwinV2Error
from ..models import SwinTransformerV2, create_model
from ..plots import plot_confusion, plot_curves, plot_predictions
from .artifacts import save_classifier
from .checkpointing import (
    CHECKPOINT_DIR,
    CheckpointManager,
    RandomState,
    TrainingProgress,
    check_compatible,
    load_latest,
)
from .config import (
    COMMANDS,
    Config,
    DataSection,
    TrainConfig,
    apply_override,
    config_from_dict,
    config_to_yaml,
    plain,
    sections,
)
from .distributed import (
    Distributed,
    ModelState,
    OptimizerState,
    gradient_sync,
    wrap_model,
)
from .ema import ModelEma
from .evaluate import evaluate
from .metrics import METRICS_NAME, MetricsLogger, read_metrics
from .optim import build_optimizer, resolve_layer_decay, scaled_lr
from .precision import autocast, make_grad_scaler, resolve_device, resolve_precision
from .schedule import WarmupCosineSchedule

# Fields that may change between an interrupted run and its resumption: where and how often things are
# written, how many images are evaluated with, how the processes share the work. None of them changes
# the trained numbers; every other field must match the checkpoint's.
RESUME_FREE_FIELDS = frozenset((
    "run.name", "run.output_dir", "run.log_every", "run.eval_every", "run.eval_batch_size", "run.checkpoint_every",
    "run.keep_last", "run.resume", "run.stop_after_steps", "run.distributed", "run.keep_freed_memory",
    "data.num_workers",
    "model.init_from",  # the weights come from the checkpoint
))


@dataclass
class TrainResult:
    """What a run, training or pre-training, leaves behind."""

    run_dir: Path
    model_dir: Path | None  # None when the run stopped early (run.stop_after_steps) or on processes other than rank 0
    test: Any  # the last evaluation's result: an EvalResult, or pre-training's ReconstructionResult
    wall_seconds: float
    images_seen: int
    skipped_images: int
    step: int = 0  # optimizer steps done
    completed: bool = True  # False: stopped at run.stop_after_steps, to be continued with --resume
    checkpoint: Path | None = None  # the last checkpoint saved


@dataclass
class Evaluation:
    """One evaluation as the loop handles it: the task's own result, the record for metrics.jsonl, the
    number whose highest value best.pt keeps (None: no best.pt), and the words printed after "epoch E/N: "."""

    result: Any
    record: dict[str, float]
    metric: float | None
    text: str


class NonFiniteLossError(SwinV2Error, FloatingPointError):
    """A NaN or infinite loss: the run stops before the step, so no checkpoint holds the bad weights."""


class Task:
    """What one kind of training brings to `run_task`: data, model, loss, evaluation, final files.

    A task is built by the loop after the run's generators are seeded (so the model's initialisation is
    repeatable); `initialise` is False for a resumed run, whose weights come from its checkpoint.
    Subclasses set `model` (the bare model, on `device`) and `train_set` in __init__."""

    command = "swinv2 train"  # the command that resumes a run of this task, for messages
    verb = "training"
    model: nn.Module
    train_set: Any

    def __init__(self, config: Config, device: torch.device, precision: str, distributed: Distributed,
                 run_dir: Path, initialise: bool) -> None:
        self.config, self.device, self.precision = config, device, precision
        self.distributed, self.run_dir = distributed, run_dir

    def build_model(self, initialise: bool) -> nn.Module:
        """A new model as configured (on the CPU); the loop uses it to gather FSDP shards at the end."""
        raise NotImplementedError

    def layer_decay(self) -> float | None:
        """optim.layer_decay, resolved to a number or None."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the run trains on, for the opening line: "60000 images, 10 classes"."""
        raise NotImplementedError

    def dataset_identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on about the data to be resumed by this run."""
        raise NotImplementedError

    def loss(self, trained: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The scalar training loss of one uint8 batch on the device, through `trained` (the wrapped model)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, step: int) -> Evaluation:
        """Evaluate `model` after optimizer step `step` (every process calls this; under FSDP the model is sharded)."""
        raise NotImplementedError

    def finish(self, model: nn.Module, model_dir: Path, evaluation: Evaluation) -> list[tuple[str, Path]]:
        """Write the final model and pictures (main process only); returns (what, path) pairs to print."""
        raise NotImplementedError

    def final_line(self, evaluation: Evaluation) -> str:
        raise NotImplementedError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def first(dataset, count: int | None):
    """The first `count` items (all when None): small runs and tests."""
    return dataset if count is None or count >= len(dataset) else Subset(dataset, range(count))


def dataset_classes(dataset) -> list[str]:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset.classes


def dataset_labels(dataset) -> torch.Tensor:
    """Every item's label, without reading the images."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if hasattr(dataset, "labels"):
        return torch.as_tensor(dataset.labels)
    return torch.tensor([label for _, label in dataset.samples])


def balanced_subset(dataset, per_class: int, seed: int) -> Subset:
    """`per_class` items of every class drawn at random with `seed` (a generator of its own, so the run's
    random streams are untouched), kept in the dataset's order."""
    labels = dataset_labels(dataset)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, name in enumerate(dataset_classes(dataset)):
        members = (labels == label).nonzero().flatten()
        if len(members) < per_class:
            raise ConfigError(f"data.images_per_class={per_class}, but class {name!r} has only {len(members)} "
                              "training images")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return Subset(dataset, torch.cat(chosen).sort().values.tolist())


def normalisation(data: DataSection) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation statistics: given, else the dataset's own (Fashion-MNIST), else ImageNet's."""
    if data.mean is not None:
        return data.mean, data.std
    return DATASET_STATS.get(data.dataset, DATASET_STATS["imagenet"])


def build_model(config: TrainConfig, num_classes: int, channels: int, initialise: bool = True) -> SwinTransformerV2:
    """The configured model for this dataset; `init_from` loads any checkpoint (new head if needed)
    unless `initialise` is False (a resumed run, whose weights come from its checkpoint)."""
    overrides = dict(config.model.overrides)
    overrides.update(num_classes=num_classes, in_chans=channels)
    if config.data.img_size is not None:
        overrides["img_size"] = config.data.img_size
    model = create_model(config.model.name, **overrides)
    if config.model.init_from and initialise:
        # Fine-tuning: the body transfers (any window or resolution); a head of another class count is new.
        # A SimMIM checkpoint's encoder loads without its prefix, the mask token and decoder are left out.
        load_pretrained(model, config.model.init_from, reset_head=True)
    return model


class ClassificationTask(Task):
    """Image classification: soft-target cross-entropy on augmented batches, top-1/top-5 on the test set."""

    def __init__(self, config: TrainConfig, device: torch.device, precision: str, distributed: Distributed,
                 run_dir: Path, initialise: bool) -> None:
        super().__init__(config, device, precision, distributed, run_dir, initialise)
        data, run = config.data, config.run
        train_set = build_dataset(data.dataset, data.train_path, split="train", load_size=data.load_size,
                                  channels=data.channels)
        test_set = build_dataset(data.dataset, data.val_path, split="test", load_size=data.load_size, channels=data.channels)
        if data.images_per_class:
            train_set = balanced_subset(train_set, data.images_per_class, data.subset_seed)
        self.train_set, self.test_set = first(train_set, data.max_train_images), first(test_set, data.max_val_images)
        self.classes = dataset_classes(self.train_set)
        self.mean, self.std = normalisation(data)
        self.model = self.build_model(initialise).to(device)
        img_size = self.model.config.img_size
        self.augmentation = TrainAugmentation(
            img_size=img_size, mean=self.mean, std=self.std, num_classes=len(self.classes),
            **dataclasses.asdict(config.augment)
        ).to(device)
        self.preprocess = EvalPreprocess(img_size=img_size, mean=self.mean, std=self.std, crop_pct=data.crop_pct).to(device)
        self.test_loader = make_loader(self.test_set, run.eval_batch_size or 2 * run.batch_size, shuffle=False,
                                       num_workers=data.num_workers)

    def build_model(self, initialise: bool) -> SwinTransformerV2:
        return build_model(self.config, len(self.classes), self.config.data.channels, initialise)

    def layer_decay(self) -> float | None:
        return resolve_layer_decay(self.config.optim.layer_decay, self.config.model.init_from)

    def describe(self) -> str:
        return f"{len(self.train_set)} images, {len(self.classes)} classes"

    def dataset_identity(self) -> dict[str, Any]:
        return {"train_images": len(self.train_set), "classes": list(self.classes)}

    def loss(self, trained: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        inputs, targets = self.augmentation(images, labels)
        with autocast(self.device, self.precision):
            logits = trained(inputs)
        return soft_target_cross_entropy(logits.float(), targets)

    def evaluate(self, model: nn.Module, step: int) -> Evaluation:
        result = evaluate(model, self.test_loader, self.preprocess, self.device, self.precision, len(self.classes))
        record = {"eval_loss": result.loss, "eval_top1": result.top1, "eval_top5": result.top5}
        text = f"test top-1 {result.top1:.2f}%, top-5 {result.top5:.2f}%, loss {result.loss:.4f}"
        return Evaluation(result, record, result.top1, text)

    def finish(self, model: SwinTransformerV2, model_dir: Path, evaluation: Evaluation) -> list[tuple[str, Path]]:
        preprocessing = {"img_size": list(model.config.img_size), "crop_pct": self.config.data.crop_pct,
                         "mean": list(self.mean), "std": list(self.std), "channels": self.config.data.channels}
        save_classifier(model, model_dir, self.classes, preprocessing)
        confusion, predictions = self.run_dir / "confusion.png", self.run_dir / "predictions.png"
        plot_confusion(evaluation.result.confusion, self.classes, confusion)
        write_predictions(model, self.test_set, self.preprocess, self.classes, self.device, self.precision, predictions)
        return [("confusion matrix", confusion), ("predictions", predictions)]

    def final_line(self, evaluation: Evaluation) -> str:
        return f"test accuracy: {evaluation.result.top1:.2f}% on {evaluation.result.count} images"


def resume_config(path: str | Path, overrides: list[str] = (), kind: type[Config] = TrainConfig) -> Config:
    """The configuration a checkpoint was trained with, plus `section.key=value` overrides, set to resume
    from it: what `swinv2 train --resume DIR` (`swinv2 pretrain --resume DIR`) runs when no CONFIG is given."""
    found, checkpoint = load_latest(path)
    saved = checkpoint["metadata"]["compatibility"]
    missing = [section for section in sections(kind) if section not in saved]
    if missing:
        other = next((command for other, command in COMMANDS.items() if all(name in saved for name in sections(other))),
                     "another command")
        raise ConfigError(f"{found} is not a `{COMMANDS[kind]}` checkpoint (it has no {', '.join(missing)} section): "
                          f"resume it with `{other} --resume {path}`")
    values = {section: copy.deepcopy(saved[section]) for section in sections(kind)}
    values["run"].update(resume=str(path), stop_after_steps=None)  # a stop that was reached is not repeated
    for override in overrides:
        apply_override(values, override, kind)
    return config_from_dict(values, f"the configuration saved in {found}", kind)


def trim_metrics(path: Path, step: int) -> None:
    """Drop the records an interrupted run logged after its last checkpoint: they are logged again."""
    if path.exists():
        kept = [record for record in read_metrics(path) if record.get("step", 0) <= step]
        path.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")


def train(config: TrainConfig, progress: bool | None = None) -> TrainResult:
    """Train or fine-tune as `config` says; returns where everything was written and the final test metrics.

    Under torchrun every process calls this; the processes share the work as run.distributed says."""
    return run_task(config, ClassificationTask, progress)


def run_task(config: Config, task_class: type[Task], progress: bool | None = None) -> TrainResult:
    """Run `task_class`'s training as `config` says (see the module's docstring)."""
    started = time.perf_counter()
    device = resolve_device(config.run.device)  # before anything is written: a bad device leaves no run behind
    distributed = Distributed.from_environment(device)
    finished = False
    try:
        result = train_process(config, task_class, progress, distributed, distributed.device(device), started)
        finished = True
        return result
    finally:
        distributed.close(finished)


def train_process(config: Config, task_class: type[Task], progress: bool | None, distributed: Distributed,
                  device: torch.device, started: float) -> TrainResult:
    main = distributed.is_main
    say = print if main else (lambda *_, **__: None)
    progress = (sys.stderr.isatty() if progress is None else progress) and main
    precision = resolve_precision(config.run.precision, device)
    run = config.run
    if resolve_keep_freed_memory(run.keep_freed_memory, device.type):
        say(keep_freed_memory())  # before the model and the data: what they allocate is kept for reuse
    if run.distributed == "fsdp" and run.ema_decay and distributed.enabled:
        raise ConfigError("run.ema_decay with run.distributed=fsdp: the EMA would hold a whole unsharded copy of the "
                          "model on every process; use run.distributed=ddp or run.ema_decay=null")
    resumed_from, checkpoint = load_latest(run.resume) if run.resume else (None, None)
    run_dir = Path(run.output_dir) / run.name
    resolved = config_to_yaml(config)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(resolved)
    say(f"resolved configuration (saved to {run_dir / 'config.yaml'}):\n{resolved}")

    seed_everything(run.seed)
    task = task_class(config, device, precision, distributed, run_dir, initialise=checkpoint is None)
    model = task.model
    # DDP copies rank 0's weights to the others; FSDP shards in place, so the optimizer comes after.
    wrapped = wrap_model(model, run.distributed, distributed, device)
    if distributed.rank > 0:
        # Each process augments (and drops paths) with its own random numbers; rank 0 keeps the stream a
        # single process would have.
        seed_everything(run.seed + distributed.rank)

    loader = make_loader(task.train_set, run.batch_size, shuffle=True, num_workers=config.data.num_workers,
                         seed=run.seed, drop_last=True, rank=distributed.rank, world_size=distributed.world_size)
    sampler = loader.batch_sampler
    accumulation = config.optim.accumulation_steps
    if sampler.batches_per_epoch < accumulation:
        raise ConfigError(
            f"an epoch has {sampler.batches_per_epoch} batches of {run.batch_size} per process, fewer than "
            f"optim.accumulation_steps={accumulation}: use more images, a smaller run.batch_size or fewer steps"
        )
    steps_per_epoch = sampler.batches_per_epoch // accumulation
    batches_per_epoch = steps_per_epoch * accumulation  # a last incomplete accumulation group is left out
    total_steps = int(config.schedule.max_steps or math.ceil(config.schedule.epochs * steps_per_epoch))
    epochs = math.ceil(total_steps / steps_per_epoch)
    # The layer decay the optimizer's groups were built with: a resumed run takes its checkpoint's.
    saved = checkpoint["metadata"] if checkpoint is not None else {}
    layer_decay = saved["layer_decay"] if "layer_decay" in saved else task.layer_decay()
    # Learning rates are given per 512 images, as in the official configs, and scaled linearly.
    lr_scale = scaled_lr(1.0, run.batch_size, accumulation, distributed.world_size, config.optim.lr_reference_batch)
    peak_lr = config.optim.base_lr * lr_scale
    optimizer = build_optimizer(model, dataclasses.replace(config.optim, layer_decay=layer_decay), peak_lr)
    schedule = WarmupCosineSchedule(
        optimizer,
        peak_lr=peak_lr,
        warmup_lr=config.schedule.warmup_lr * lr_scale,
        min_lr=config.schedule.min_lr * lr_scale,
        warmup_steps=round(config.schedule.warmup_epochs * steps_per_epoch),
        total_steps=total_steps,
    )
    scaler = make_grad_scaler(device, precision)
    ema = ModelEma(model, run.ema_decay) if run.ema_decay else None
    trained = torch.compile(wrapped) if run.compile else wrapped

    position = TrainingProgress()
    checkpoints = CheckpointManager(run_dir / CHECKPOINT_DIR, run.keep_last, distributed)
    stateful = {"model": ModelState(model), "optimizer": OptimizerState(model, optimizer), "schedule": schedule,
                "scaler": scaler, "ema": ema, "progress": position, "checkpoints": checkpoints,
                "rng": RandomState(distributed)}  # last: restored after everything else has drawn its numbers
    # What a checkpoint must agree on to be resumed by this run: the configuration's sections, the data, and
    # the number of processes (it decides which images each process sees).
    compatibility = {**plain(dataclasses.asdict(config)), "world_size": distributed.world_size,
                     "dataset": task.dataset_identity()}
    resuming = checkpoint is not None
    if resuming:
        check_compatible(checkpoint, compatibility, resumed_from, RESUME_FREE_FIELDS)
        for name, item in stateful.items():
            if item is not None:
                item.load_state_dict(checkpoint[name])
        del checkpoint, saved  # its tensors are copied in; do not hold a second copy of the model and optimizer
        if run.stop_after_steps and position.step >= run.stop_after_steps:
            raise ConfigError(f"run.stop_after_steps={run.stop_after_steps} but {resumed_from} is already at step "
                              f"{position.step}: raise it or set it to null")
        say(f"resumed from {resumed_from}: step {position.step} of {total_steps}, epoch {position.epoch + 1}, "
            f"{position.batches_done} batches into it")

    def save(metric: float | None = None) -> Path:
        return checkpoints.save(position.step, stateful, {"compatibility": compatibility, "layer_decay": layer_decay},
                                metric)

    logger = None
    if main:
        if resuming:
            trim_metrics(run_dir / METRICS_NAME, position.step)
        logger = MetricsLogger(run_dir)
    say(f"{task.verb} {config.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) on "
        f"{task.describe()}, {device}, {precision}"
        f"{f', {distributed.world_size} processes ({run.distributed})' if distributed.enabled else ''}; {epochs} epochs "
        f"of {steps_per_epoch} steps, peak lr {peak_lr:.3g}{f', layer decay {layer_decay}' if layer_decay else ''}")

    def evaluate_and_log() -> Evaluation:
        evaluation = task.evaluate(ema.module if ema else model, position.step)
        if logger:
            logger.log({"step": position.step, "epoch": position.epoch, **evaluation.record})
        say(f"epoch {position.epoch}/{epochs}: {evaluation.text}, {time.perf_counter() - started:.0f} s")
        return evaluation

    evaluation, stopped = None, False
    stop_after = run.stop_after_steps
    for epoch in range(position.epoch, epochs):
        if position.step >= total_steps:
            break
        wrapped.train()
        sampler.set_epoch(epoch, position.batches_done)
        window_start, window_images = time.perf_counter(), 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False, dynamic_ncols=True,
                   initial=position.batches_done, total=sampler.batches_per_epoch)
        for batch in bar:
            position.skipped_images += batch.skipped
            images, labels = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
            steps_now = (position.batches_done + 1) % accumulation == 0
            with gradient_sync(wrapped, steps_now):
                loss = task.loss(trained, images, labels)
                check_finite(loss, position, epoch, distributed, checkpoints.last_saved or resumed_from)
                (scaler.scale(loss / accumulation) if scaler else loss / accumulation).backward()
            position.batches_done += 1
            position.images_seen += len(images) * distributed.world_size
            window_images += len(images) * distributed.world_size
            if not steps_now:
                continue
            schedule.step(position.step)
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
            position.step += 1
            step = position.step
            if main and (step % run.log_every == 0 or step == total_steps):
                rate = window_images / (time.perf_counter() - window_start)
                lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
                logger.log({"step": step, "epoch": epoch + step % steps_per_epoch / steps_per_epoch,
                            "train_loss": loss.item(), "lr": lr, "images_per_second": rate})
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
                window_start, window_images = time.perf_counter(), 0
            stopped = bool(stop_after) and step >= stop_after
            if position.batches_done == batches_per_epoch or step >= total_steps:
                break  # the epoch's end: evaluated and saved below
            if stopped or (run.checkpoint_every and step % run.checkpoint_every == 0):
                save()
            if stopped:
                break
        if position.batches_done == batches_per_epoch or position.step >= total_steps:
            position.epoch, position.batches_done = epoch + 1, 0
            metric = None
            if position.step >= total_steps or (epoch + 1) % run.eval_every == 0:
                evaluation = evaluate_and_log()
                metric = evaluation.metric
            saving = time.perf_counter()
            path = save(metric)
            say(f"checkpoint {path} ({time.perf_counter() - saving:.2f} s)")
        if stopped:
            break
    if logger:
        logger.close()

    wall = time.perf_counter() - started
    done = {"images_seen": position.images_seen, "skipped_images": position.skipped_images, "step": position.step,
            "checkpoint": checkpoints.last_saved}
    if stopped and position.step < total_steps:
        say(f"stopped after step {position.step} of {total_steps} (run.stop_after_steps); continue with "
            f"`{task.command} --resume {run_dir}`")
        return TrainResult(run_dir, None, evaluation and evaluation.result, wall, completed=False, **done)
    if evaluation is None:  # resumed from the final checkpoint
        evaluation = task.evaluate(ema.module if ema else model, position.step)
    final = final_model(config, task, model, ema, distributed, device)
    if not main:
        return TrainResult(run_dir, None, evaluation.result, wall, **done)
    model_dir = run_dir / "model"
    written = task.finish(final, model_dir, evaluation)
    plot_curves(run_dir / METRICS_NAME, run_dir / "curves.png")
    wall = time.perf_counter() - started
    lines = [f"run directory: {run_dir}", f"  model: {model_dir}", f"  curves: {run_dir / 'curves.png'}",
             *(f"  {what}: {path}" for what, path in written), f"  metrics: {run_dir / METRICS_NAME}",
             f"  checkpoints: {checkpoints.directory}"]
    print("\n".join(lines))
    if position.skipped_images:
        print(f"skipped {position.skipped_images} unreadable images")
    print(f"{task.final_line(evaluation)}, wall time {wall:.0f} s")
    return TrainResult(run_dir, model_dir, evaluation.result, wall, **done)


def check_finite(loss: torch.Tensor, position: TrainingProgress, epoch: int, distributed: Distributed,
                 last_good: Path | None) -> None:
    """Stop on a NaN or infinite loss before it reaches the weights; every process stops together."""
    finite = torch.isfinite(loss.detach()).reshape(1).float()
    if distributed.enabled:  # one process's NaN must stop all of them, or the others wait forever
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if bool(finite.item()):
        return
    kept = (f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it")
    raise NonFiniteLossError(
        f"the training loss is {loss.item()} at step {position.step + 1} (epoch {epoch + 1}, batch "
        f"{position.batches_done + 1}); the run stopped before that step, {kept}. Lower optim.base_lr, lengthen "
        "schedule.warmup_epochs or use run.precision=fp32, then start again from it with model.init_from=CHECKPOINT "
        "(resuming it unchanged would repeat the same steps exactly)"
    )


def final_model(config: Config, task: Task, model: nn.Module, ema: ModelEma | None, distributed: Distributed,
                device: torch.device) -> nn.Module | None:
    """The model to save: the EMA when there is one; under FSDP the full weights, gathered on rank 0."""
    if ema:
        return ema.module
    if not (distributed.enabled and config.run.distributed == "fsdp"):
        return model
    state = ModelState(model).state_dict()  # a collective: every process takes part
    if not distributed.is_main:
        return None
    whole = task.build_model(initialise=False)
    whole.load_state_dict(state)
    return whole.to(device)


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
