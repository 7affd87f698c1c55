"""The embedded default: where the bundled models live and how a ``--model`` argument is resolved.

``--model`` accepts a bundled name (``bvit_tiny``, ``bvit_tiny_te``, ``bvit_tiny_reg``,
``vit_tiny``) or a checkpoint path (``path/name``, ``.safetensors`` or ``.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .model import BViT, load_model
from .model.io import checkpoint_paths

MODELS_DIR = Path(os.environ.get("BVIT_INTERP_MODELS", Path(__file__).resolve().parent.parent / "models"))
BUNDLED = ("bvit_tiny", "bvit_tiny_te", "bvit_tiny_reg", "vit_tiny")
DEFAULT_MODEL = "bvit_tiny"
DEFAULT_DATA = "shapes"


def model_path(spec: str) -> Path:
    """Checkpoint stem for a bundled name or a user path; FileNotFoundError naming both tries."""
    if spec in BUNDLED or not any(sep in spec for sep in ("/", os.sep, ".")):
        weights, _ = checkpoint_paths(MODELS_DIR / spec)
        if weights.exists():
            return MODELS_DIR / spec
    weights, _ = checkpoint_paths(spec)
    if weights.exists():
        return weights.with_suffix("")
    raise FileNotFoundError(
        f"model {spec!r} not found: neither a bundled model in {MODELS_DIR} ({', '.join(BUNDLED)}) "
        f"nor a checkpoint at {weights}"
    )


def resolve_model(spec: str, device: str = "cpu") -> BViT:
    """Load a bundled model by name or a checkpoint by path, in eval mode."""
    return load_model(model_path(spec), map_location=device)


def model_label(spec: str) -> str:
    """Short name for tables and plots: the checkpoint's file stem."""
    return Path(spec).name.removesuffix(".safetensors").removesuffix(".json")
