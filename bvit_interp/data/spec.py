"""A run's ``meta["data"]``: which images it used, as a dict the data layer can open again.

``describe`` turns what a command opened (a ``--data`` spec string, its split, the shapes config)
into that dict; ``reopen`` opens the same images again (the app does, to show a run's images).
Kinds and their fields, plus ``display`` (a one-line description) and ``spec`` (the ``--data``
string it came from):

- ``shapes``: ``split``, ``config`` (``ShapesConfig.to_dict()``): rendered in memory, with masks;
- ``imagenet-s``: ``root``, ``split``: images and segmentation masks;
- ``imagefolder``: ``root``, ``split``: class folders of images (``build_datasets``);
- ``cifar10`` / ``cifar100``: ``root``, ``split`` (``val`` = the test set).

Runs written before this format hold a display string (e.g. ``shapes:val (img_size=32, seed=0)``
or ``imagenet-s:ROOT (validation)``); ``as_spec`` and ``reopen`` read those too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .shapes import UNRECORDED_SHAPES_VERSION, ShapesConfig

KINDS = ("shapes", "imagenet-s", "imagefolder", "cifar10", "cifar100")
_CIFAR = ("cifar10:", "cifar100:")


def _display(data: Mapping[str, Any]) -> str:
    """The one-line description of a data dict."""
    kind, split = data["kind"], data.get("split", "val")
    if kind == "shapes":
        cfg = data.get("config") or {}
        recorded = cfg.get("version", UNRECORDED_SHAPES_VERSION)
        version = f", version={recorded}" if recorded != UNRECORDED_SHAPES_VERSION else ""
        return f"shapes:{split} (img_size={cfg.get('img_size', 32)}, seed={cfg.get('seed', 0)}{version})"
    if kind == "imagenet-s":
        return f"imagenet-s:{data['root']} ({split})"
    if kind in ("cifar10", "cifar100"):
        return f"{kind}:{data['root']} ({split})"
    return f"{data['root']} ({split})"


def describe(spec: str, split: str | None = None, shapes: ShapesConfig | None = None,
             segmentation: bool = False) -> dict[str, Any]:
    """``meta["data"]`` of the ``--data`` string ``spec`` as a command opens it.

    ``shapes`` / ``shapes:IMG_SIZE`` (``shapes``: the config actually rendered, default
    ``ShapesConfig()``), ``cifar10:ROOT`` / ``cifar100:ROOT``, or a directory: an ImageNet-S
    root when the command reads its segmentation masks (``segmentation``), else an ImageFolder
    root. ``split`` defaults to ``val`` (``validation`` for ImageNet-S).
    """
    spec = str(spec)
    if spec == "shapes" or spec.startswith("shapes:"):
        if shapes is None:
            size = spec.split(":", 1)[1] if ":" in spec else ""
            shapes = ShapesConfig(img_size=int(size)) if size.isdigit() else ShapesConfig()
        data: dict[str, Any] = {"kind": "shapes", "split": split or "val", "config": shapes.to_dict()}
    elif spec.startswith(_CIFAR):
        kind, root = spec.split(":", 1)
        data = {"kind": kind, "root": str(Path(root).expanduser().resolve()), "split": split or "val"}
    else:
        root = str(Path(spec).expanduser().resolve())
        if segmentation:
            data = {"kind": "imagenet-s", "root": root, "split": split or "validation"}
        else:
            data = {"kind": "imagefolder", "root": root, "split": split or "val"}
    data["spec"] = spec
    data["display"] = _display(data)
    return json.loads(json.dumps(data))  # plain JSON values: what meta.json gives back on resume


_SHAPES_DESC = re.compile(r"^shapes:(?P<split>\w+) \(img_size=(?P<size>\d+), seed=(?P<seed>\d+)\)$")
_IMAGENET_S_DESC = re.compile(r"^imagenet-s:(?P<root>.+) \((?P<split>[^()]+)\)$")


def as_spec(data: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """A data dict from ``meta["data"]``: a dict as it is, an old display / spec string parsed.

    ValueError when there is nothing to read (no data recorded, an unknown kind).
    """
    if isinstance(data, Mapping):
        if data.get("kind") not in KINDS:
            raise ValueError(f"meta data of unknown kind {data.get('kind')!r} (known: {', '.join(KINDS)})")
        return dict(data)
    if not isinstance(data, str) or not data.strip():
        raise ValueError("the run records no data")
    desc = data.strip()
    match = _SHAPES_DESC.match(desc)
    if match:
        cfg = ShapesConfig(img_size=int(match["size"]), seed=int(match["seed"]))
        return {**describe("shapes", match["split"], cfg), "display": desc}
    if desc.startswith("shapes"):  # "shapes", "shapes:64"; anything else shapes-like as the default set
        return describe(desc if desc == "shapes" or desc[7:].isdigit() else "shapes")
    match = _IMAGENET_S_DESC.match(desc)
    if match:
        return describe(match["root"], match["split"], segmentation=True)
    return describe(desc)


__all__ = ["KINDS", "as_spec", "describe"]
