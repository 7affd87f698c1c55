"""The model package: BViT (blocks x steps), named configs, hooks, checkpoints and importers."""

from .bvit import BViT
from .config import MODEL_CONFIGS, BViTConfig, get_config
from .convert import import_timm_vit, import_torchvision_vit
from .hooks import ALL_SITES, BLOCK_SITES, ActivationCache, hook_layer, hook_name
from .io import build_model, load_model, read_checkpoint_info, save_model
from .registry import register_all
from .taps import StepTaps

register_all()

__all__ = [
    "ALL_SITES",
    "BLOCK_SITES",
    "MODEL_CONFIGS",
    "ActivationCache",
    "BViT",
    "BViTConfig",
    "StepTaps",
    "build_model",
    "get_config",
    "hook_layer",
    "hook_name",
    "import_timm_vit",
    "import_torchvision_vit",
    "load_model",
    "read_checkpoint_info",
    "save_model",
]
