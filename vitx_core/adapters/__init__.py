"""Model adapters: one interface over timm and Hugging Face ViT classifiers."""

from .base import VitAdapter, auto_device, count_hooks, state_dict_hash
from .hf_adapter import HFAdapter
from .loading import (
    adapter_from_module,
    demo_model_dir,
    load_model,
    load_state_dict_file,
    read_model_card,
    save_model_dir,
)
from .timm_adapter import TimmAdapter

__all__ = [
    "HFAdapter",
    "TimmAdapter",
    "VitAdapter",
    "adapter_from_module",
    "auto_device",
    "count_hooks",
    "demo_model_dir",
    "load_model",
    "load_state_dict_file",
    "read_model_card",
    "save_model_dir",
    "state_dict_hash",
]
