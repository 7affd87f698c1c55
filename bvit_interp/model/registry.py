"""Register every named config with timm, so ``timm.create_model("bvit_b")`` works after ``import bvit_interp``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from timm.models import register_model

from .bvit import BViT
from .config import MODEL_CONFIGS, get_config

_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


def _entrypoint(name: str) -> Callable[..., BViT]:
    def create(pretrained: bool = False, **kwargs: Any) -> BViT:
        if pretrained:
            raise ValueError(
                f"{name}: no pretrained weights are downloaded by bvit-interp; "
                "use bvit_interp.load_model(path) or timm.create_model(..., checkpoint_path=...)"
            )
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        return BViT(get_config(name, **kwargs))

    create.__name__ = name
    create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"timm entrypoint for the bvit-interp config {name!r}."
    return create


def register_all() -> None:
    """Register each config once (re-importing the module does not re-register)."""
    module = sys.modules[__name__]
    for name in MODEL_CONFIGS:
        if not hasattr(module, name):
            fn = _entrypoint(name)
            setattr(module, name, fn)
            register_model(fn)
