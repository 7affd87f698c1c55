"""Options and setup shared by the analysis commands: models, data loaders, device, run directory.

Every analysis command adds the same core options with ``add_common_args`` and turns them
into loaded models, validation loaders and a ``Run`` with the helpers below, so that option
names, defaults and error messages stay identical across commands.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..data.loaders import data_loader
from ..data.spec import describe
from ..defaults import DEFAULT_DATA, model_label, resolve_model
from ..distributed import (
    DEVICE_CHOICES,
    resolve_device,  # the one --device resolver; commands import it from here
)
from ..model import BViT, BViTConfig
from ..runs import Run

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

COMMON_OPTIONS: tuple[str, ...] = ("model", "data", "limit", "batch_size", "workers", "device", "seed", "out", "force",
                                    "debug")


def _common_declarations(default_out: str, multi_model: bool, default_models: Sequence[str],
                         default_limit: int | None, default_batch_size: int | None) -> dict[str, tuple[str, dict[str, Any]]]:
    """(flag, add_argument keywords) of every shared option, by destination name."""
    if multi_model:
        model = {"action": "append", "metavar": "NAME|PATH",
                 "help": f"bundled model name or checkpoint path; repeat for several (default: {' '.join(default_models)})"}
    else:
        model = {"default": default_models[0], "metavar": "NAME|PATH", "help": "bundled model name or checkpoint path"}
    return {
        "model": ("--model", model),
        "data": ("--data", {"default": DEFAULT_DATA,
                            "help": "'shapes', 'cifar10:ROOT', 'cifar100:ROOT' or an ImageFolder root with train/ and val/"}),
        "limit": ("--limit", {"type": positive_int, "default": default_limit,
                              "help": "use N validation images (a seeded random subset; default: all)"}),
        "batch_size": ("--batch-size", {"type": positive_int, "default": default_batch_size,
                                        "help": "images per forward pass"}),
        "workers": ("--workers", {"type": nonneg_int, "default": 0, "help": "data-loader worker processes"}),
        "device": ("--device", {"default": "auto", "help": DEVICE_CHOICES}),
        "seed": ("--seed", {"type": int, "default": 0, "help": "random seed (image subset, fits; recorded in the run)"}),
        "out": ("--out", {"default": default_out, "help": "run directory to write (rerun the same command to resume it)"}),
        "force": ("--force", {"action": "store_true",
                              "help": "replace a finished run (or one with other options) in --out; only a bvit-interp "
                                      "run is replaced, and only once the new one completes"}),
        "debug": ("--debug", {"action": "store_true", "help": "show full tracebacks"}),
    }


def add_common_args(
    p: argparse.ArgumentParser,
    default_out: str,
    multi_model: bool = True,
    default_models: Sequence[str] = DEFAULT_MODELS,
    default_limit: int | None = None,
    default_batch_size: int | None = 64,
    only: Sequence[str] = COMMON_OPTIONS,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Add the shared options (--model/--data/--limit/--batch-size/--workers/--device/--seed/--out/--force/--debug).

    ``only`` picks a subset (in that order) for commands where some do not apply; ``overrides`` maps an
    option's name to ``add_argument`` keywords that replace the shared ones (its own help or default).
    """
    declared = _common_declarations(default_out, multi_model, default_models, default_limit, default_batch_size)
    unknown = sorted((set(only) | set(overrides or {})) - set(declared))
    if unknown:
        raise ValueError(f"not shared options: {unknown}; choose from {list(declared)}")
    for name in only:
        flag, kwargs = declared[name]
        p.add_argument(flag, **{**kwargs, **(overrides or {}).get(name, {})})
    if "model" in only:
        p.set_defaults(_default_models=tuple(default_models))


# --------------------------------------------------------------------------- which steps / how many steps


def steps_list(text: str) -> list[int]:
    """'1,4,8' (or one of several space-separated values) as 1-based step numbers (argparse type)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected 1-based step numbers such as 1,4,8, got {text!r}")
    return [positive_int(t) for t in items]


class _StepsAction(argparse.Action):
    """Flattens ``--steps 1 4 8`` and ``--steps 1,4,8`` into one list."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [s for v in values for s in v])


class DeprecatedAlias(argparse.Action):
    """An old option spelling: stores into the new option's destination and warns once on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, use: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.use = use

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_steps_arg(p: argparse.ArgumentParser, help: str = "1-based steps (unrolled layers for a ViT); default all") -> None:
    """``--steps S [S ...]``: *which* steps (1-based, space- or comma-separated), the same in every command."""
    p.add_argument("--steps", type=steps_list, nargs="+", action=_StepsAction, metavar="S", help=help)


def add_max_steps_arg(p: argparse.ArgumentParser, help: str, old_steps: bool = False) -> None:
    """``--max-steps N``: *how many* recurrent steps to run; ``old_steps`` keeps ``--steps N`` as a deprecated alias."""
    p.add_argument("--max-steps", type=positive_int, help=help)
    if old_steps:
        p.add_argument("--steps", dest="max_steps", type=positive_int, action=DeprecatedAlias, help=argparse.SUPPRESS,
                       use="use --max-steps N for how many steps to run (--steps selects which steps)")


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
    meta = {"analysis": analysis, "models": [m.meta() for m in models], "data": describe(args.data), "options": opts,
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
