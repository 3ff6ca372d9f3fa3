"""Training on real images: configuration, optimizer, schedule, EMA and mixed precision."""
from .config import (
    AugmentSection,
    DataSection,
    ModelSection,
    OptimSection,
    RunSection,
    ScheduleSection,
    TrainConfig,
    config_to_yaml,
    list_recipes,
    load_config,
)
from .ema import ModelEma
from .optim import build_optimizer, layer_id, parameter_groups, scaled_lr
from .precision import autocast, make_grad_scaler, resolve_device, resolve_precision
from .schedule import WarmupCosineSchedule
