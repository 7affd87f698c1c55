"""bvit-interp: per-step, per-head interpretability for recurrent (bViT) and standard ViTs."""

from .model import BViT, BViTConfig, build_model, get_config, load_model, save_model
from .pruning import masked as _masked  # noqa: F401  registers the step masks kept beside checkpoints

__version__ = "0.1.0"

__all__ = ["BViT", "BViTConfig", "__version__", "build_model", "get_config", "load_model", "save_model"]
