from .backbone import SwinTransformerV2, SwinTransformerV2Stage
from .config import SwinV2Config
from .registry import create_model, create_on_meta, get_config, list_models, register_model
from .simmim import SimMIM, SwinTransformerV2ForSimMIM, create_simmim

__all__ = [
    "SwinTransformerV2", "SwinTransformerV2Stage", "SwinV2Config",
    "create_model", "create_on_meta", "get_config", "list_models", "register_model",
    "SimMIM", "SwinTransformerV2ForSimMIM", "create_simmim",
]
