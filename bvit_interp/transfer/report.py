"""Which (model, method) pairs run, and Table 4's layout of the results: pure functions, no files."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from ..model import BViT
from .methods import METHOD_LABELS, METHODS, check_method

METHOD_ALIASES: dict[str, str] = {
    "lp": "linear_probe",
    "linear": "linear_probe",
    "probe": "linear_probe",
    "ft": "full_finetune",
    "finetune": "full_finetune",
    "fine_tune": "full_finetune",
    "te": "time_embedding_tuning",
    "te_tuning": "time_embedding_tuning",
}


def parse_methods(values: Iterable[str]) -> list[str]:
    """Method keys from names, hyphenated names or short aliases (``lp``, ``ft``, ``te``), comma- or space-separated."""
    out: list[str] = []
    for value in values:
        for item in (t.strip() for t in str(value).split(",")):
            if not item:
                continue
            key = item.lower().replace("-", "_")
            key = METHOD_ALIASES.get(key, key)
            if key not in METHODS:
                raise ValueError(f"--methods {item}: unknown method; choose from {', '.join(METHODS)} "
                                 f"(or {', '.join(METHOD_ALIASES)})")
            if key not in out:
                out.append(key)
    if not out:
        raise ValueError(f"--methods: no method given; choose from {', '.join(METHODS)}")
    return out


def not_applicable(model: BViT, method: str) -> str | None:
    """Why ``method`` does not apply to ``model`` (None when it does): TE tuning needs time embeddings."""
    check_method(method)
    if method == "time_embedding_tuning" and getattr(model, "time_embed", None) is None:
        return "no time embeddings (time-embedding tuning needs a -TE model such as bvit_tiny_te)"
    return None


def plan_pairs(models: Mapping[str, BViT], methods: Sequence[str]) -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """((model, method) pairs that run, skipped pairs with their reason); the pairs keep the given orders."""
    pairs, skipped = [], []
    for label, model in models.items():
        for method in methods:
            reason = not_applicable(model, method)
            if reason is None:
                pairs.append((label, method))
            else:
                skipped.append({"model": label, "method": method, "label": METHOD_LABELS[method], "reason": reason})
    return pairs, pd.DataFrame(skipped, columns=["model", "method", "label", "reason"])


def format_count(n: float) -> str:
    """A parameter count as Table 4 prints it: ``0``, ``25K``, ``7.8M``."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    n = int(n)
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{round(n / 1e3):.0f}K"
    return str(n)


def format_accuracy(mean: float, std: float, seeds: int, percent: bool = True) -> str:
    """``mean ± std`` (std over seeds, none for one seed), in percent like Table 4 by default."""
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    if mean is None or math.isnan(mean):
        return ""
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if seeds > 1 else "")


def table4(summary: pd.DataFrame, percent: bool = True) -> pd.DataFrame:
    """Table 4 layout: one row per (model, method), trainable parameters (no head), one accuracy column per dataset."""
    order = {m: i for i, m in enumerate(METHODS)}
    models = list(dict.fromkeys(summary["model"]))
    datasets = list(dict.fromkeys(summary["dataset"])) if "dataset" in summary else []
    rows = []
    for model in models:
        mine = summary[summary["model"] == model]
        for method in sorted(dict.fromkeys(mine["method"]), key=lambda m: order.get(m, len(order))):
            cells = mine[mine["method"] == method]
            row = {"model": model, "method": METHOD_LABELS.get(method, method),
                   "trainable_params": int(cells["trainable_params"].iloc[0]),
                   "trainable": format_count(cells["trainable_params"].iloc[0])}
            for dataset in datasets:
                hit = cells[cells["dataset"] == dataset]
                row[dataset] = "" if hit.empty else format_accuracy(
                    float(hit["accuracy_mean"].iloc[0]), float(hit["accuracy_std"].iloc[0]), int(hit["seeds"].iloc[0]),
                    percent)
            rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    """A small DataFrame as a GitHub markdown table (no extra dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


__all__ = ["METHOD_ALIASES", "format_accuracy", "format_count", "markdown_table", "not_applicable", "parse_methods",
           "plan_pairs", "table4"]
