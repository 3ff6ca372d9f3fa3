"""Reading, converting, loading and saving checkpoints: official, timm, Hugging Face and SimMIM layouts.

    state, config = read_checkpoint(path)          # any file or directory; never unpickles code
    load_pretrained(model, path, reset_head=False)  # strict, with one report of every key that does not fit
    save_pretrained(model, directory); from_pretrained(directory, **overrides)
    convert_checkpoint(src, dst, target_layout="hf")
"""
from .configs import config_from_hf, hf_config_json, infer_config
from .convert import convert_checkpoint, export_state_dict
from .io import read_checkpoint
from .layouts import LAYOUTS, detect_layout, from_project, join_simmim, split_simmim, to_project
from .loading import from_pretrained, load_pretrained, load_state_dict_into, save_pretrained

__all__ = [
    "LAYOUTS", "config_from_hf", "convert_checkpoint", "detect_layout", "export_state_dict", "from_pretrained",
    "from_project", "hf_config_json", "infer_config", "join_simmim", "load_pretrained", "load_state_dict_into",
    "read_checkpoint", "save_pretrained", "split_simmim", "to_project",
]
