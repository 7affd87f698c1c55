"""Export the procedural shapes data to disk: ImageNet-S layout (with masks) or ImageFolder.

Why: the ImageNet-S export lets the pointing game, and any outside tool that reads
ImageNet-S, run on the embedded default exactly as on the real data; the ImageFolder export
feeds generic training code. Images are written as JPEG (quality 95, no chroma subsampling,
so pixels change slightly), masks as PNG (lossless: they equal the rendered masks).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..atomic import atomic_write
from .imagenet_s import encode_mask
from .shapes import ShapesConfig, class_names, class_wnids, render_sample, split_length

FORMATS = ("imagenet-s", "imagefolder")
# Shapes split -> ImageNet-S folder name (train images with masks are "train-semi" there).
IMAGENET_S_FOLDERS = {"val": "validation", "train": "train-semi"}
EXPORT_META = "shapes_export.json"


def _save_image(img: Image.Image, path: Path, fmt: str, **kwargs: object) -> None:
    """Atomically save a PIL image in ``fmt`` ("JPEG" or "PNG")."""
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **kwargs))


def _write_text(path: Path, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty ``out`` unless ``force``; with force, drop a previous export's folders."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"export target is not a directory: {out}")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"export directory {out} is not empty; pass force=True (--force) to write into it"
            )
        meta = out / EXPORT_META
        if meta.is_file():  # only folders that an earlier export wrote itself are removed
            try:
                folders = json.loads(meta.read_text()).get("folders", [])
            except (ValueError, OSError):
                folders = []
            for name in folders:
                if isinstance(name, str) and name and "/" not in name and name not in (".", ".."):
                    shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def export_shapes(
    out_dir: str | os.PathLike,
    fmt: str = "imagenet-s",
    config: ShapesConfig | None = None,
    split: str = "val",
    limit: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Render the first ``limit`` samples (default: the whole split) of ``split`` to ``out_dir``.

    ``imagenet-s``: ``<folder>/<wnid>/shape_<idx:06d>.JPEG`` and
    ``<folder>-segmentation/<wnid>/shape_<idx:06d>.png`` (object = label + 1, else 0), with
    ``<folder>`` = validation (val) or train-semi (train), plus
    ``ImageNetS_categories_im10.txt``, ``ImageNetS_im10_<folder>.txt`` and ``shapes_export.json``.
    ``imagefolder``: ``<split>/<class_name>/shape_<idx:06d>.png`` plus ``shapes_export.json``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    config = config if config is not None else ShapesConfig()
    length = split_length(config, split)
    count = length if limit is None else int(limit)
    if not 0 < count <= length:
        raise ValueError(f"limit must be in [1, {length}] for shapes {split}, got {limit}")
    out = Path(out_dir)
    _prepare_out_dir(out, force)

    names, wnids = class_names(config), class_wnids(config)
    num_classes = len(names)
    if fmt == "imagenet-s":
        folder = IMAGENET_S_FOLDERS[split]
        folders = [folder, f"{folder}-segmentation"]
        for wnid in wnids:
            (out / folder / wnid).mkdir(parents=True, exist_ok=True)
            (out / f"{folder}-segmentation" / wnid).mkdir(parents=True, exist_ok=True)
    else:
        folder = split
        folders = [folder]
        for name in names:
            (out / folder / name).mkdir(parents=True, exist_ok=True)

    per_class = [0] * num_classes
    fractions = []
    listed = []
    for idx in tqdm(range(count), desc=f"export shapes {split}", unit="img", disable=not progress):
        s = render_sample(config, split, idx)
        per_class[s.label] += 1
        fractions.append(float(s.mask.mean()))
        img = Image.fromarray(s.image)
        stem = f"shape_{idx:06d}"
        if fmt == "imagenet-s":
            wnid = wnids[s.label]
            rel = f"{wnid}/{stem}.JPEG"
            _save_image(img, out / folder / rel, "JPEG", quality=95, subsampling=0)
            ids = np.where(s.mask, s.label + 1, 0).astype(np.int32)
            mask_img = Image.fromarray(encode_mask(ids))
            _save_image(mask_img, out / f"{folder}-segmentation" / wnid / f"{stem}.png", "PNG")
            listed.append(rel)
        else:
            _save_image(img, out / folder / names[s.label] / f"{stem}.png", "PNG")

    if fmt == "imagenet-s":
        _write_text(
            out / f"ImageNetS_categories_im{num_classes}.txt", "\n".join(wnids) + "\n"
        )
        _write_text(out / f"ImageNetS_im{num_classes}_{folder}.txt", "\n".join(listed) + "\n")
    meta = {
        "format": fmt,
        "split": split,
        "folders": folders,
        "count": count,
        "per_class": dict(zip(names, per_class, strict=True)),
        "classes": list(names),
        "wnids": list(wnids),
        "class_ids": {w: i + 1 for i, w in enumerate(wnids)},
        "mask_fraction_mean": float(np.mean(fractions)),
        "config": config.to_dict(),
    }
    _write_text(out / EXPORT_META, json.dumps(meta, indent=2) + "\n")
    return out
