"""Swin Transformer V2 and SimMIM, exact to the official weights."""
from .checkpoints import (
    convert_checkpoint,
    export_state_dict,
    from_pretrained,
    load_pretrained,
    read_checkpoint,
    save_pretrained,
)
from .checkpoints.loading import save_simmim
from .data.masking import MaskGenerator
from .errors import CheckpointError, ConfigError, InputError, SwinV2Error
from .models import (
    SimMIM,
    SwinTransformerV2,
    SwinV2Config,
    create_model,
    create_simmim,
    get_config,
    list_models,
    register_model,
)

__version__ = "0.1.0"
__all__ = [
    "SwinTransformerV2", "SwinV2Config", "create_model", "get_config", "list_models", "register_model",
    "convert_checkpoint", "export_state_dict", "from_pretrained", "load_pretrained", "read_checkpoint",
    "save_pretrained",
    "SimMIM", "MaskGenerator", "create_simmim", "save_simmim",
    "CheckpointError", "ConfigError", "InputError", "SwinV2Error",
]
