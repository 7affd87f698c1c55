"""Options and setup shared by the analysis commands: models, data loaders, device, run directory.

Every analysis command adds the same core options with ``add_common_args`` and turns them
into loaded models, validation loaders and a ``Run`` with the helpers below, so that option
names, defaults and error messages stay identical across commands.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from ..data.datasets import ImageNetLabels, build_datasets
from ..data.transforms import eval_transform
from ..defaults import DEFAULT_DATA, model_label, resolve_model
from ..distributed import resolve_device  # the one --device resolver; commands import it from here
from ..model import BViT, BViTConfig
from ..results import Run

DEFAULT_MODELS: tuple[str, ...] = ("bvit_tiny", "vit_tiny")

# --------------------------------------------------------------------------- argparse value types


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    return _int_at_least(text, 1)


def nonneg_int(text: str) -> int:
    """An integer >= 0 (argparse type)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from err
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def finite_float(text: str) -> float:
    """A finite float: 'nan' and 'inf' are refused (argparse type)."""
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    """A finite float >= 0 (argparse type)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0 (argparse type)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A finite float in [0, 1] (argparse type)."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def float_pair(text: str) -> tuple[float, float]:
    """'lo,hi' as two finite floats with lo <= hi (argparse type)."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected 'low,high', got {text!r}")
    lo, hi = (finite_float(p) for p in parts)
    if lo > hi:
        raise argparse.ArgumentTypeError(f"low must be <= high, got {text!r}")
    return lo, hi


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` only where the help text does not already say its default and X is set."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)

def add_common_args(
    p: argparse.ArgumentParser,
    default_out: str,
    multi_model: bool = True,
    default_models: Sequence[str] = DEFAULT_MODELS,
    default_limit: int | None = None,
    default_batch_size: int = 64,
) -> None:
    """Add --model/--data/--limit/--batch-size/--workers/--device/--seed/--out/--force/--debug."""
    if multi_model:
        p.add_argument("--model", action="append", metavar="NAME|PATH",
                       help=f"bundled model name or checkpoint path; repeat for several (default: {' '.join(default_models)})")
    else:
        p.add_argument("--model", default=default_models[0], metavar="NAME|PATH",
                       help="bundled model name or checkpoint path")
    p.set_defaults(_default_models=tuple(default_models))
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="'shapes', 'cifar10:ROOT', 'cifar100:ROOT' or an ImageFolder root with train/ and val/")
    p.add_argument("--limit", type=positive_int, default=default_limit,
                   help="use N validation images (a seeded random subset; default: all)")
    p.add_argument("--batch-size", type=positive_int, default=default_batch_size, help="images per forward pass")
    p.add_argument("--workers", type=nonneg_int, default=0, help="data-loader worker processes")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    p.add_argument("--seed", type=int, default=0, help="random seed (image subset, fits; recorded in the run)")
    p.add_argument("--out", default=default_out, help="run directory to write")
    p.add_argument("--force", action="store_true", help="overwrite a finished run in --out")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


@dataclass
class LoadedModel:
    """A model loaded for an analysis with the name tables and plots use for it."""

    label: str
    spec: str
    model: BViT

    def meta(self) -> dict[str, Any]:
        """Provenance recorded in a run's meta.json (name, path, sha256, config)."""
        return {
            "name": self.label,
            "spec": self.spec,
            "path": self.model.checkpoint_path,
            "sha256": self.model.checkpoint_sha256,
            "config": self.model.config.to_dict(),
        }


def model_specs(args: argparse.Namespace) -> list[str]:
    """The --model values (one or repeated), or the command's default models."""
    value = getattr(args, "model", None)
    if value is None:
        return list(args._default_models)
    return [value] if isinstance(value, str) else list(value)


def load_models(args: argparse.Namespace, device: torch.device | None = None) -> list[LoadedModel]:
    """Load every --model on the device, in eval mode; labels must be distinct."""
    device = device or resolve_device(args.device)
    loaded = [LoadedModel(model_label(s), s, resolve_model(s, device=str(device)).eval()) for s in model_specs(args)]
    labels = [m.label for m in loaded]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--model: two models share a name ({labels}); rename one checkpoint")
    return loaded


def subset_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """All of range(n), or a sorted seeded random subset of ``limit`` indices (class-sorted folders stay mixed)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if limit is None or limit >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:limit].tolist())


def stratified_indices(labels: Sequence[Hashable], limit: int | None, seed: int) -> list[int]:
    """All indices, or a sorted seeded random subset of ``limit`` with each class in proportion to its size.

    Each class gets floor(limit * size / n) images and the remaining ones go to the largest
    remainders (ties broken at random), so a subset smaller than the number of classes still
    spreads over as many classes as it can; the images of a class are a random draw.
    """
    n = len(labels)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if limit is None or limit >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    groups: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    members = list(groups.values())
    quota = np.array([len(m) for m in members], dtype=np.float64) * limit / n
    counts = np.floor(quota).astype(np.int64)
    left = limit - int(counts.sum())
    if left:
        order = np.lexsort((rng.random(len(members)), -(quota - counts)))  # largest remainder, random ties
        counts[order[:left]] += 1
    chosen = [i for m, k in zip(members, counts, strict=True) if k for i in rng.choice(m, size=int(k), replace=False)]
    return sorted(int(i) for i in chosen)


def data_loader(
    data: str,
    config: BViTConfig,
    split: str = "val",
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 0,
) -> tuple[DataLoader, list[str]]:
    """(loader of (image, label) batches, class names) for a split with the model's eval transform, in order.

    A 1000-class model on wnid-named class folders that are not the full ImageNet-1k set (an
    ImageNet-S subset) gets ImageNet-1k label indices, not the folders' sorted positions.
    """
    tf = eval_transform(config)
    bundle = build_datasets(data, tf, tf, require_train=split == "train")
    if len(bundle.classes) > config.num_classes:
        raise ValueError(
            f"--data {data} has {len(bundle.classes)} classes but model {config.name!r} predicts {config.num_classes}"
        )
    dataset = bundle.train if split == "train" else bundle.val
    if config.num_classes == 1000 and hasattr(dataset, "target_transform") and ImageNetLabels.applies(bundle.classes):
        dataset.target_transform = ImageNetLabels(bundle.classes)
    subset = Subset(dataset, subset_indices(len(dataset), limit, seed))  # type: ignore[arg-type]
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers)
    return loader, bundle.classes


def val_loader(args: argparse.Namespace, config: BViTConfig) -> tuple[DataLoader, list[str]]:
    """The validation loader the common options describe (--data, --limit, --seed, --batch-size, --workers)."""
    return data_loader(args.data, config, "val", args.limit, args.seed, args.batch_size, args.workers)


def common_options(args: argparse.Namespace) -> dict[str, Any]:
    """The common options that change results, for meta.json and resume checks."""
    return {"models": model_specs(args), "data": args.data, "limit": args.limit, "seed": args.seed}


def create_run(args: argparse.Namespace, analysis: str, models: Sequence[LoadedModel], **options: Any) -> Run:
    """Open --out as a run of ``analysis`` recording the models, data, options and seed."""
    # Through JSON and back, so a resumed run compares equal to what meta.json holds (tuples -> lists).
    opts = json.loads(json.dumps({**common_options(args), **options}, default=str))
    meta = {"analysis": analysis, "models": [m.meta() for m in models], "data": args.data, "options": opts,
            "seed": args.seed}
    return Run.create(args.out, meta, force=args.force)


def parse_list(text: str, kind: type = int) -> tuple[Any, ...]:
    """'1,2,5' -> (1, 2, 5) for comma-separated option values (ValueError names the bad item)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(kind(t) for t in items)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from err


def with_model(df: pd.DataFrame, label: str) -> pd.DataFrame:
    """The table with a leading ``model`` column (tables of several models are concatenated)."""
    out = df.copy()
    out.insert(0, "model", label)
    return out


def write_tables(run: Run, tables: dict[str, list[pd.DataFrame]]) -> None:
    """Concatenate each table's per-model parts and write it as parquet."""
    for name, parts in tables.items():
        if parts:
            run.write_table(name, pd.concat(parts, ignore_index=True))


def print_summary(analysis: str, run: Run, summaries: dict[str, dict[str, Any]]) -> None:
    """A few lines on stdout: the run directory, then per model its headline numbers."""
    print(f"{analysis}: wrote {run.path}")
    for label, summary in summaries.items():
        parts = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()]
        print(f"  {label}: " + ", ".join(parts))
