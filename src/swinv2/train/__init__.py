"""Training on real images: configuration, optimizer, schedule, EMA, mixed precision, checkpoints and resume,
multi-process training. The loops: `swinv2.train.loop.train` (classification) and
`swinv2.train.pretrain.pretrain` (SimMIM), one loop with two tasks."""
from .checkpointing import CheckpointManager, RandomState, TrainingProgress, load_latest
from .config import (
    AugmentSection,
    DataSection,
    ModelSection,
    OptimSection,
    PretrainConfig,
    RunSection,
    ScheduleSection,
    SimMIMSection,
    TrainConfig,
    config_to_yaml,
    list_recipes,
    load_config,
)
from .distributed import Distributed, ModelState, OptimizerState, wrap_model
from .ema import ModelEma
from .optim import build_optimizer, layer_id, parameter_groups, resolve_layer_decay, scaled_lr
from .precision import autocast, make_grad_scaler, resolve_device, resolve_precision
from .schedule import WarmupCosineSchedule
