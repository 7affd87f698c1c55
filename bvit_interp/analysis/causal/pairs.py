"""Clean / corrupted input pairs for causal analyses, and the token groups of each pair.

A ``PairBatch`` holds P pairs as model inputs (normalised, the model's eval crop), their two
labels and their object masks in the model's input frame. Three ways to build one:

- ``counterfactual_pairs``: exact shapes counterfactuals (``data.shapes.render_counterfactual``):
  the same scene with another object class ("class") or without the object ("none").
- ``noise_pairs``: any ``PointingSource`` (ImageNet-S, shapes) corrupted by Gaussian noise, on the
  object mask ("object") or the whole image ("image"): Meng et al.'s causal tracing, noise std
  = ``scale`` (3) x the std of that image's model-input values (all channels and pixels),
  seeded per (seed, index), not clipped (as Meng et al. do not clip their noised embeddings).
- ``file_pairs``: a CSV / parquet of clean path, corrupted path, clean label, corrupted label
  (optional mask paths).

``corrupted_label`` is ``NO_CLASS`` (-1) when a pair has no second class ("none"
counterfactuals, noise): the metric then contrasts the clean class with the corrupted run's
highest-scoring other class (``metric.pair_runs``).

Token groups (``token_groups``) partition a model's tokens per pair: CLS, the distillation
token (if any), the registers (if any), the object patches (patches whose area overlaps the
object mask, the union of both objects' masks for a counterfactual, by at least
``min_overlap``, 0.25 by default) and the other patches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from ...data.imagenet_s import SampleError
from ...data.shapes import COUNTERFACTUALS, ShapesConfig, render_counterfactual
from ...data.transforms import CropGeometry
from ...model.config import BViTConfig
from ..sources import PointingSource

NO_CLASS = -1
NOISE_REGIONS = ("object", "image")
GROUPS = ("cls", "dist", "registers", "object", "other")  # a partition of the tokens
ALL = "all"  # every token (no group restriction)
DEFAULT_MIN_OVERLAP = 0.25
PAIR_COLUMNS = ("clean", "corrupted", "clean_label", "corrupted_label")
MASK_COLUMNS = ("clean_mask", "corrupted_mask")


@dataclass
class PairBatch:
    """P clean / corrupted pairs as model inputs with labels and object masks in the input frame."""

    clean: torch.Tensor  # (P, 3, H, W) model inputs
    corrupted: torch.Tensor  # (P, 3, H, W)
    clean_label: torch.Tensor  # (P,) long
    corrupted_label: torch.Tensor  # (P,) long; NO_CLASS: no second class
    clean_mask: torch.Tensor  # (P, H, W) bool: the clean object
    corrupted_mask: torch.Tensor  # (P, H, W) bool: the corrupted object (empty without one)
    region: torch.Tensor  # (P, H, W) bool: where the two inputs may differ
    names: list[str]
    kind: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason) of items left out

    def __post_init__(self) -> None:
        p = len(self.clean)
        if self.clean.shape != self.corrupted.shape or self.clean.dim() != 4:
            raise ValueError(f"clean / corrupted inputs must be (P, 3, H, W) alike, got "
                             f"{tuple(self.clean.shape)} and {tuple(self.corrupted.shape)}")
        spatial = (p, *self.clean.shape[2:])
        for name in ("clean_mask", "corrupted_mask", "region"):
            if tuple(getattr(self, name).shape) != spatial:
                raise ValueError(f"{name} must be {spatial}, got {tuple(getattr(self, name).shape)}")
        if len(self.clean_label) != p or len(self.corrupted_label) != p or len(self.names) != p:
            raise ValueError("labels and names need one entry per pair")

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def object_mask(self) -> torch.Tensor:
        """(P, H, W) union of both objects' masks: what the object token group is built from."""
        return self.clean_mask | self.corrupted_mask

    def to(self, device: torch.device | str) -> PairBatch:
        """The same pairs with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    def select(self, indices: Sequence[int]) -> PairBatch:
        """The pairs at ``indices``, in that order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        picked = {f.name: getattr(self, f.name)[idx.to(getattr(self, f.name).device)] for f in fields(self)
                  if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **picked, names=[self.names[i] for i in idx.tolist()], skipped=list(self.skipped))

    def table(self) -> pd.DataFrame:
        """One row per pair: pair, name, kind, clean_label, corrupted_label, object_fraction."""
        return pd.DataFrame({
            "pair": np.arange(len(self)),
            "name": self.names,
            "kind": self.kind,
            "clean_label": self.clean_label.cpu().numpy(),
            "corrupted_label": self.corrupted_label.cpu().numpy(),
            "object_fraction": self.object_mask.float().mean((1, 2)).cpu().numpy(),
        })


def _prepare(image: Image.Image, masks: Sequence[np.ndarray | None], config: BViTConfig) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Model input of ``image`` (the eval resize + centre crop) and each mask in that crop (False where None)."""
    w, h = image.size
    geometry = CropGeometry(w, h, config.img_size, config.crop_pct)
    x = geometry.apply(image.convert("RGB"), config.mean, config.std)
    out = []
    for mask in masks:
        if mask is None:
            out.append(torch.zeros(config.img_size, config.img_size, dtype=torch.bool))
        else:
            if mask.shape != (h, w):
                raise ValueError(f"mask shape {mask.shape} does not match the image ({h}, {w})")
            out.append(torch.from_numpy(np.ascontiguousarray(geometry.crop_mask(mask.astype(bool)))))
    return x, out


def _stack(rows: list[dict[str, object]], kind: str, skipped: list[tuple[str, str]]) -> PairBatch:
    """A PairBatch from per-pair dicts; ValueError when nothing is left."""
    if not rows:
        reasons = sorted({r for _, r in skipped})
        raise ValueError(f"no usable pairs ({len(skipped)} skipped: {', '.join(reasons) or 'none given'})")

    def stack(key: str) -> torch.Tensor:
        return torch.stack([r[key] for r in rows])  # type: ignore[misc]

    return PairBatch(
        clean=stack("clean"), corrupted=stack("corrupted"),
        clean_label=torch.tensor([int(r["clean_label"]) for r in rows], dtype=torch.long),  # type: ignore[call-overload]
        corrupted_label=torch.tensor([int(r["corrupted_label"]) for r in rows], dtype=torch.long),  # type: ignore[call-overload]
        clean_mask=stack("clean_mask"), corrupted_mask=stack("corrupted_mask"), region=stack("region"),
        names=[str(r["name"]) for r in rows], kind=kind, skipped=skipped,
    )


def counterfactual_pairs(
    config: BViTConfig, indices: Iterable[int], kind: str = "class", shapes: ShapesConfig | None = None,
    split: str = "val",
) -> PairBatch:
    """Shapes counterfactual pairs: sample i and the same scene with another class ("class") or no object ("none").

    Deterministic from (shapes seed, split, index, kind); ``region`` is the footprint of both
    objects (every pixel either covers even partly): the inputs are equal outside it when
    the model's crop keeps the shapes' geometry (img_size equal, crop_pct 1).
    """
    if kind not in COUNTERFACTUALS:
        raise ValueError(f"counterfactual kind must be one of {COUNTERFACTUALS}, got {kind!r}")
    shapes = shapes or ShapesConfig()
    rows: list[dict[str, object]] = []
    for i in indices:
        pair = render_counterfactual(shapes, split, int(i), kind)
        x_clean, (m_clean, region) = _prepare(Image.fromarray(pair.clean.image), [pair.clean.mask, pair.footprint], config)
        x_other, (m_other,) = _prepare(Image.fromarray(pair.counterfactual.image), [pair.counterfactual.mask], config)
        rows.append({
            "clean": x_clean, "corrupted": x_other, "clean_label": pair.clean.label,
            "corrupted_label": pair.counterfactual.label if kind == "class" else NO_CLASS,
            "clean_mask": m_clean, "corrupted_mask": m_other, "region": region,
            "name": f"shape_{int(i):06d}:{kind}",
        })
    return _stack(rows, f"counterfactual_{kind}", [])


def noise_pairs(
    source: PointingSource, indices: Iterable[int], config: BViTConfig, region: str = "object",
    scale: float = 3.0, seed: int = 0,
) -> PairBatch:
    """Causal-tracing pairs: each image and a copy with Gaussian noise on its object mask ("object") or everywhere ("image").

    Noise std = ``scale`` x the std of the image's model-input values; noise ``i`` draws from
    ``np.random.default_rng([seed, i])`` only. Items the source cannot load, without a mask
    (for "object") or whose object lies outside the crop are skipped and listed in ``skipped``.
    """
    if region not in NOISE_REGIONS:
        raise ValueError(f"noise region must be one of {NOISE_REGIONS}, got {region!r}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"noise scale must be a positive number, got {scale}")
    rows: list[dict[str, object]] = []
    skipped: list[tuple[str, str]] = []
    for i in indices:
        i = int(i)
        try:
            item = source.load(i)
        except SampleError as err:
            skipped.append((source.name(i), err.reason))
            continue
        if item.mask is None and region == "object":
            skipped.append((item.name, "no_mask"))
            continue
        target = None if item.mask is None else item.mask == item.class_id
        x, (mask,) = _prepare(item.image, [target], config)
        if region == "object" and not mask.any():
            skipped.append((item.name, "target_outside_view"))
            continue
        where = mask if region == "object" else torch.ones_like(mask)
        std = float(x.std()) * scale
        noise = torch.from_numpy(np.random.default_rng([int(seed), i]).standard_normal(x.shape).astype(np.float32))
        corrupted = x + noise * std * where.to(x.dtype)
        rows.append({
            "clean": x, "corrupted": corrupted, "clean_label": item.label, "corrupted_label": NO_CLASS,
            "clean_mask": mask, "corrupted_mask": mask.clone(), "region": where, "name": item.name,
        })
    return _stack(rows, f"noise_{region}", skipped)


@dataclass
class MaskedImages:
    """Single images with their object masks and labels as model inputs (what the probes read)."""

    images: torch.Tensor  # (N, 3, H, W) model inputs
    masks: torch.Tensor  # (N, H, W) bool: the target object in the input frame
    labels: torch.Tensor  # (N,) long
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason) of items left out

    def __len__(self) -> int:
        return len(self.images)


def masked_inputs(source: PointingSource, indices: Iterable[int], config: BViTConfig,
                  label_map: Sequence[int] | None = None) -> MaskedImages:
    """The source's images ``indices`` with target masks in the model's crop; items without a usable mask are skipped.

    ``label_map`` maps the source's labels to the model's class indices (e.g. ImageNet-S folders to
    ImageNet-1k); ValueError when no item is usable.
    """
    xs, ms, labels, names = [], [], [], []
    skipped: list[tuple[str, str]] = []
    for i in indices:
        try:
            item = source.load(int(i))
        except SampleError as err:
            skipped.append((source.name(int(i)), err.reason))
            continue
        if item.mask is None:
            skipped.append((item.name, "no_mask"))
            continue
        x, (mask,) = _prepare(item.image, [item.mask == item.class_id], config)
        if not mask.any():
            skipped.append((item.name, "target_outside_view"))
            continue
        xs.append(x)
        ms.append(mask)
        labels.append(int(item.label) if label_map is None else int(label_map[item.label]))
        names.append(item.name)
    if not xs:
        reasons = sorted({r for _, r in skipped})
        raise ValueError(f"no usable images with object masks ({len(skipped)} skipped: {', '.join(reasons) or 'none given'})")
    return MaskedImages(torch.stack(xs), torch.stack(ms), torch.tensor(labels, dtype=torch.long), names, skipped)


def relabel(pairs: PairBatch, label_map: Sequence[int]) -> PairBatch:
    """The pairs with their labels mapped to the model's class indices (``NO_CLASS`` kept)."""
    table = torch.as_tensor(list(label_map), dtype=torch.long)

    def mapped(labels: torch.Tensor) -> torch.Tensor:
        known = labels != NO_CLASS
        return torch.where(known, table[labels.clamp(min=0).cpu()].to(labels.device), labels)

    return replace(pairs, clean_label=mapped(pairs.clean_label), corrupted_label=mapped(pairs.corrupted_label))


def _read_table(path: Path) -> pd.DataFrame:
    """A pairs file as a DataFrame (CSV or parquet by suffix)."""
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"pairs file {str(path)!r} cannot be read: {err}") from None
    raise ValueError(f"pairs file {str(path)!r}: use a .csv or .parquet file")


def _label(value: object, column: str, row: int, path: Path, categories: Sequence[str] | None, num_classes: int) -> int:
    """A class index from an int or (with ``categories``) a class name; empty corrupted labels are NO_CLASS."""
    where = f"pairs file {str(path)!r} row {row} column {column!r}"
    if value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value.strip()):
        if column == "corrupted_label":
            return NO_CLASS
        raise ValueError(f"{where}: missing label")
    if isinstance(value, str) and categories is not None and value in categories:
        return list(categories).index(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        known = "" if categories is None else f" (class names: {', '.join(list(categories)[:5])}...)"
        raise ValueError(f"{where}: {value!r} is not a class index or a known class name{known}") from None
    if number != int(number) or not 0 <= int(number) < num_classes:
        raise ValueError(f"{where}: label {value!r} is not a class index in 0..{num_classes - 1}")
    return int(number)


def _open(value: object, column: str, row: int, path: Path, mask: bool = False) -> Image.Image | np.ndarray:
    """Image (RGB) or mask (bool, nonzero = object) named in a pairs file, relative paths from its folder."""
    where = f"pairs file {str(path)!r} row {row} column {column!r}"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: missing path")
    file = Path(value) if Path(value).is_absolute() else path.parent / value
    if not file.is_file():
        raise FileNotFoundError(f"{where}: {str(file)!r} does not exist")
    try:
        with Image.open(file) as im:
            if not mask:
                return im.convert("RGB")
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise ValueError(f"{where}: {str(file)!r} is not a readable image ({err})") from None
    return arr.any(axis=-1) if arr.ndim == 3 else arr != 0


def file_pairs(path: str | Path, config: BViTConfig, categories: Sequence[str] | None = None) -> PairBatch:
    """Pairs listed in a CSV / parquet: columns clean, corrupted, clean_label, corrupted_label [, clean_mask, corrupted_mask].

    Paths are relative to the file's folder unless absolute; labels are class indices or, with
    ``categories``, class names; an empty corrupted label means no second class. A mask
    (nonzero = object) must have its image's size; without masks the object group is empty.
    """
    path = Path(path)
    table = _read_table(path)
    missing = [c for c in PAIR_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"pairs file {str(path)!r} lacks column(s) {missing}; needs {list(PAIR_COLUMNS)} "
                         f"(optional {list(MASK_COLUMNS)})")
    if table.empty:
        raise ValueError(f"pairs file {str(path)!r} lists no pairs")
    rows: list[dict[str, object]] = []
    for r, rec in enumerate(table.to_dict("records")):
        images = [_open(rec[c], c, r, path) for c in ("clean", "corrupted")]
        masks = [_open(rec[c], c, r, path, mask=True) if c in table.columns and isinstance(rec[c], str) and rec[c]
                 else None for c in MASK_COLUMNS]
        prepared = []
        for image, mask, column in zip(images, masks, MASK_COLUMNS, strict=True):
            try:
                prepared.append(_prepare(image, [mask], config))  # type: ignore[arg-type]
            except ValueError as err:
                raise ValueError(f"pairs file {str(path)!r} row {r} column {column!r}: {err}") from None
        (x_clean, (m_clean,)), (x_other, (m_other,)) = prepared
        labels = [_label(rec[c], c, r, path, categories, config.num_classes) for c in ("clean_label", "corrupted_label")]
        rows.append({
            "clean": x_clean, "corrupted": x_other, "clean_label": labels[0], "corrupted_label": labels[1],
            "clean_mask": m_clean, "corrupted_mask": m_other,
            "region": torch.ones_like(m_clean), "name": f"{rec['clean']}|{rec['corrupted']}",
        })
    return _stack(rows, "file", [])


def patch_overlap(config: BViTConfig, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of each patch's pixels inside ``mask`` (P, H, W): (P, num_patches), row-major as timm's tokens."""
    g, ps = config.grid_size, config.patch_size
    if tuple(mask.shape[1:]) != (config.img_size, config.img_size):
        raise ValueError(f"mask must be (P, {config.img_size}, {config.img_size}), got {tuple(mask.shape)}")
    return mask.float().reshape(len(mask), g, ps, g, ps).mean((2, 4)).reshape(len(mask), g * g)


def group_names(config: BViTConfig) -> tuple[str, ...]:
    """The token groups this model has, in token order (no "dist" / "registers" without them)."""
    return tuple(g for g in GROUPS if not (g == "dist" and not config.dist_token)
                 and not (g == "registers" and not config.reg_tokens))


def token_groups(config: BViTConfig, mask: torch.Tensor, min_overlap: float = DEFAULT_MIN_OVERLAP) -> dict[str, torch.Tensor]:
    """Per-pair token groups {name: (P, N) bool}: CLS, dist, registers, object patches, other patches; a partition.

    A patch is an object patch when at least ``min_overlap`` of its area lies in ``mask``
    (use ``PairBatch.object_mask``: both objects of a counterfactual).
    """
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    p, npt = len(mask), config.num_prefix_tokens
    n = npt + config.num_patches
    obj = patch_overlap(config, mask) >= min_overlap
    groups: dict[str, torch.Tensor] = {}
    for name in group_names(config):
        m = torch.zeros(p, n, dtype=torch.bool, device=mask.device)
        if name == "cls":
            m[:, 0] = True
        elif name == "dist":
            m[:, 1] = True
        elif name == "registers":
            m[:, npt - config.reg_tokens : npt] = True
        elif name == "object":
            m[:, npt:] = obj
        else:
            m[:, npt:] = ~obj
        groups[name] = m
    return groups


__all__ = ["ALL", "DEFAULT_MIN_OVERLAP", "GROUPS", "NOISE_REGIONS", "NO_CLASS", "MaskedImages", "PairBatch",
           "counterfactual_pairs", "file_pairs", "group_names", "masked_inputs", "noise_pairs", "patch_overlap", "relabel",
           "token_groups"]
