"""``bvit-interp rank`` (old name ``svd``): weight and CLS-state ranks, truncated-SVD accuracy sweeps, several models in one run.

Writes ``weight_ranks``, ``cls_ranks`` and ``sweep`` tables (a ``model`` column each),
``fig6_rank.png`` and ``fig7_truncation.png`` (one line per model), and ``meta.json``.
"""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

from ..analysis.rank import (
    ENERGY_THRESHOLD,
    SWEEP_MATRICES,
    WEIGHT_MATRICES,
    cls_ranks,
    truncation_sweep,
    weight_ranks,
)
from ..analysis.rank_plots import rank_figure, truncation_figure
from ..data.loaders import materialize
from ..registry import analysis_key
from .common import (
    add_common_args,
    create_run,
    finite_float,
    load_models,
    parse_list,
    print_summary,
    resolve_device,
    val_loader,
    with_model,
    write_tables,
)


def _ranks(text: str) -> list[int]:
    """Parse '64,128,256' into positive ints (argparse type)."""
    values = list(parse_list(text, int))
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"ranks must be positive integers, got {text!r}")
    return values


def _matrices(text: str) -> list[str]:
    """Parse 'fc1,fc2' into matrix names, checked against WEIGHT_MATRICES (argparse type)."""
    names = list(parse_list(text, str))
    bad = [n for n in names if n not in WEIGHT_MATRICES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {','.join(WEIGHT_MATRICES)}")
    return names


def _energy(text: str) -> float:
    """An energy fraction in (0, 1] (argparse type)."""
    value = finite_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def add_parser(p: argparse.ArgumentParser) -> None:
    add_common_args(p, "runs/rank", default_batch_size=256)
    p.add_argument("--ranks", type=_ranks,
                   help="truncation ranks, e.g. 16,32,64 (default: the paper's 64..768 scaled to each model's width)")
    p.add_argument("--matrices", type=_matrices, default=",".join(SWEEP_MATRICES),
                   help=f"matrices truncated in the sweep, in all blocks ({','.join(WEIGHT_MATRICES)})")
    p.add_argument("--threshold", type=_energy, default=ENERGY_THRESHOLD, help="energy fraction of the energy rank")
    p.add_argument("--amp", action="store_true", help="mixed precision for the sweep's evaluations on CUDA")


def summary(weights: pd.DataFrame, cls: pd.DataFrame, sweep: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers of one model: FFN energy ranks, centred CLS rank first/last step, accuracy by rank."""
    whole = weights[weights["head"].isna()]
    out: dict[str, Any] = {"width": int(whole["full_rank"].min())}
    for m in ("fc1", "fc2"):
        ranks = whole.loc[whole["matrix"] == m, "energy_rank"]
        out[f"{m}_rank"] = f"{ranks.min()}-{ranks.max()}" if ranks.nunique() > 1 else int(ranks.iloc[0])
    c = cls[cls["centred"]].sort_values("step")
    out["cls_rank_first_last"] = f"{c['energy_rank'].iloc[0]}->{c['energy_rank'].iloc[-1]}"
    out["acc_full"] = float(sweep["baseline_accuracy"].iloc[0])
    for _, row in sweep.sort_values("rank").iterrows():
        out[f"acc_r{row['rank']}"] = float(row["accuracy"])
    return out


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    models = load_models(args, device)
    loaders = [val_loader(args, m.model.config)[0] for m in models]  # data checked before the run exists
    out = create_run(args, analysis_key(__name__), models, ranks=args.ranks, matrices=args.matrices, threshold=args.threshold,
                     batch_size=args.batch_size, amp=args.amp)
    tables: dict[str, list[pd.DataFrame]] = {"weight_ranks": [], "cls_ranks": [], "sweep": []}
    summaries = {}
    for m, plain in zip(models, loaders, strict=True):
        model = m.model.to(device)
        loader = materialize(plain)
        parts = {
            "weight_ranks": weight_ranks(model, args.threshold),
            "cls_ranks": cls_ranks(model, loader, args.threshold, device=device),
            "sweep": truncation_sweep(model, loader, args.ranks, args.matrices, device=device, amp=args.amp),
        }
        for name, df in parts.items():
            tables[name].append(with_model(df, m.label))
        summaries[m.label] = summary(*parts.values())
    write_tables(out, tables)
    out.write_figure("fig6_rank", rank_figure(out.read_table("weight_ranks"), out.read_table("cls_ranks")))
    out.write_figure("fig7_truncation", truncation_figure(out.read_table("sweep")))
    out.complete(summary=summaries, device=str(device))
    print_summary(analysis_key(__name__), out, summaries)
    return 0
