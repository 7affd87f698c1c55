"""Run discovery, validation and on-demand attention for the Streamlit results browser (``app/``).

Nothing here imports Streamlit, so the logic is testable on its own. The browser reads only
inside its allowed roots (the runs root, the models directory and any data roots it was
given); ``is_within`` is the one check every file access goes through.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .results import RESULTS_FORMAT

# --------------------------------------------------------------------------- analyses


@dataclass(frozen=True)
class AnalysisSpec:
    """One page of the browser: which ``meta["analysis"]`` values it shows and how to make a run."""

    key: str
    title: str
    names: tuple[str, ...]
    command: str
    about: str
    icon: str = ":material/analytics:"


ANALYSES: tuple[AnalysisSpec, ...] = (
    AnalysisSpec("pointing", "Pointing game", ("pointing",),
                 "bvit-interp pointing-game --out runs/pointing",
                 "Does each head's CLS attention point at the object, at every step? (Sec. 4.2.2)",
                 ":material/my_location:"),
    AnalysisSpec("featviz", "Feature visualization", ("featviz",),
                 "bvit-interp featviz --out runs/featviz",
                 "Optimised images and dataset exemplars of FFN neurons at each step (Sec. 4.2.1)",
                 ":material/palette:"),
    AnalysisSpec("rank", "Rank (SVD)", ("svd", "rank"),
                 "bvit-interp svd --out runs/svd",
                 "Energy ranks of the weights and of the CLS state per step; truncated-SVD sweeps (App. A.2)",
                 ":material/stacked_line_chart:"),
    AnalysisSpec("prune", "Pruning", ("prune", "pruning"),
                 "bvit-interp prune --preset quick --out runs/prune",
                 "Step-masked pruning of the shared block: which weights each step uses (Sec. 4.2.3)",
                 ":material/content_cut:"),
    AnalysisSpec("trajectories", "Trajectories", ("trajectories",),
                 "bvit-interp trajectories --out runs/trajectories",
                 "Joint PaCMAP embedding of the CLS state of every image at every step (App. E.2)",
                 ":material/timeline:"),
    AnalysisSpec("lens", "Readout (lens)", ("lens",),
                 "bvit-interp lens --out runs/lens",
                 "Accuracy of the final readout applied after every step, also beyond the horizon (App. B)",
                 ":material/visibility:"),
    AnalysisSpec("early_exit", "Early exit", ("early_exit", "early-exit"),
                 "bvit-interp early-exit --out runs/early_exit",
                 "Exit heads on chosen steps: accuracy against compute over confidence thresholds (App. B)",
                 ":material/exit_to_app:"),
    AnalysisSpec("ablate", "Ablation", ("ablate", "ablation"),
                 "bvit-interp ablate --out runs/ablate",
                 "Accuracy drop when one head is removed at one step, and when a whole step is skipped",
                 ":material/grid_off:"),
)
ANALYSIS_BY_KEY = {a.key: a for a in ANALYSES}


def spec_for(analysis: str | None) -> AnalysisSpec | None:
    """The page spec whose ``names`` hold ``analysis`` (a meta.json value), or None."""
    for spec in ANALYSES:
        if analysis in spec.names:
            return spec
    return None


# --------------------------------------------------------------------------- paths


def is_within(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside one of ``roots``."""
    try:
        p = Path(path).resolve()
    except (OSError, RuntimeError):
        return False
    for root in roots:
        try:
            p.relative_to(Path(root).resolve())
            return True
        except (ValueError, OSError, RuntimeError):
            continue
    return False


def file_key(path: str | os.PathLike[str]) -> tuple[str, float]:
    """(path, mtime): the cache key of a file's content."""
    p = Path(path)
    return str(p), p.stat().st_mtime


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Problem:
    """Something to tell the user about a run: ``level`` is 'info', 'warning' or 'error'."""

    level: str
    message: str


@dataclass
class RunInfo:
    """A run directory as the browser sees it."""

    path: Path
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    @property
    def analysis(self) -> str | None:
        value = self.meta.get("analysis")
        return value if isinstance(value, str) else None

    @property
    def spec(self) -> AnalysisSpec | None:
        return spec_for(self.analysis)

    @property
    def status(self) -> str:
        if not self.meta:
            return "unreadable"
        return str(self.meta.get("status", "unknown"))

    @property
    def readable(self) -> bool:
        """meta.json parsed and the results format is one this version reads."""
        return bool(self.meta) and not any(p.level == "error" for p in self.problems)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def models(self) -> list[dict[str, Any]]:
        models = self.meta.get("models")
        if not isinstance(models, list):
            return []
        return [m if isinstance(m, dict) else {"name": str(m)} for m in models]

    @property
    def model_names(self) -> list[str]:
        return [str(m.get("name", f"model {i}")) for i, m in enumerate(self.models)]

    def file(self, name: str) -> Path:
        return self.path / name


def read_meta(path: Path) -> tuple[dict[str, Any], str | None]:
    """(meta, None) or ({}, why it could not be read)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        return {}, f"cannot read {path.name}: {err}"
    except json.JSONDecodeError as err:
        return {}, f"{path.name} is not valid JSON ({err.msg}, line {err.lineno}); it may be half-written"
    if not isinstance(meta, dict):
        return {}, f"{path.name} does not hold a JSON object"
    return meta, None


def check_meta(meta: dict[str, Any], command: str | None = None) -> list[Problem]:
    """Problems of a parsed meta.json: results format, status, analysis name."""
    problems: list[Problem] = []
    redo = f" Rerun `{command} --force` to rewrite it." if command else " Rerun its command with --force."
    fmt = meta.get("format")
    if fmt is None:
        problems.append(Problem("error", "This run was written by an older version of bvit-interp "
                                         f"(meta.json has no results format; this browser reads format {RESULTS_FORMAT})." + redo))
    elif not isinstance(fmt, int) or fmt < RESULTS_FORMAT:
        problems.append(Problem("error", f"This run was written by an older version of bvit-interp (results format "
                                         f"{fmt!r}; this browser reads format {RESULTS_FORMAT})." + redo))
    elif fmt > RESULTS_FORMAT:
        problems.append(Problem("error", f"This run was written by a newer version of bvit-interp (results format "
                                         f"{fmt}; this browser reads format {RESULTS_FORMAT}). Upgrade bvit-interp to view it."))
    status = meta.get("status")
    if status != "complete":
        problems.append(Problem("warning", f"This run is not finished (status {status!r}): it is still being written or "
                                           "was interrupted. What it holds so far is shown; rerun the same command to "
                                           "resume it."))
    if not isinstance(meta.get("analysis"), str):
        problems.append(Problem("error", "meta.json names no analysis; this is not a bvit-interp analysis run."))
    elif spec_for(meta["analysis"]) is None:
        problems.append(Problem("info", f"Analysis {meta['analysis']!r} has no page in this browser yet; "
                                        "its figures and tables are listed on the overview."))
    return problems


def load_run(path: Path, root: Path) -> RunInfo:
    """A RunInfo for the run directory ``path`` under ``root`` (never raises for bad content)."""
    name = path.relative_to(root).as_posix() if path != root else "."
    info = RunInfo(path=path, name=name)
    meta, error = read_meta(path / "meta.json")
    if error:
        info.problems.append(Problem("error", error))
        return info
    info.meta = meta
    spec = spec_for(meta.get("analysis"))
    info.problems.extend(check_meta(meta, spec.command if spec else None))
    try:
        entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as err:
        info.problems.append(Problem("error", f"cannot list {path}: {err}"))
        return info
    info.tables = [p.stem for p in entries if p.suffix == ".parquet"]
    info.figures = [p.stem for p in entries if p.suffix == ".png"]
    return info


def find_runs(root: str | os.PathLike[str], max_depth: int = 4) -> list[RunInfo]:
    """Every directory under ``root`` holding a meta.json (not looking inside runs), sorted by name."""
    base = Path(root)
    if not base.is_dir():
        return []
    base = base.resolve()
    runs: list[RunInfo] = []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        depth = len(here.relative_to(base).parts)
        if "meta.json" in filenames and is_within(here / "meta.json", [base]):
            runs.append(load_run(here, base))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and depth < max_depth)
    return sorted(runs, key=lambda r: r.name)


def runs_for(runs: Sequence[RunInfo], spec: AnalysisSpec) -> list[RunInfo]:
    """The runs a page shows."""
    return [r for r in runs if r.analysis in spec.names]


# --------------------------------------------------------------------------- tables


class UnreadableTableError(ValueError):
    """A run's parquet table that cannot be read (truncated, half-written or not parquet)."""


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A parquet table (the caller caches by file key); ``UnreadableTableError`` naming the file when it is broken."""
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as err:
        p = Path(path)
        raise UnreadableTableError(
            f"table {p.name} in {p.parent} cannot be read ({type(err).__name__}: {err}); it is truncated, "
            "half-written or not a parquet file: rerun the run's command (with --force if it finished)"
        ) from err


def figures_for(figures: Sequence[str], models: Sequence[str], model: str | None) -> list[str]:
    """Figures of a run without those named for another model (``heatmap_<other>``; longest name wins)."""
    if not model:
        return list(figures)

    def owner(figure: str) -> str | None:
        names = [m for m in models if figure.endswith(f"_{m}")]
        return max(names, key=len) if names else None

    return [f for f in figures if owner(f) in (None, model)]


def for_model(df: pd.DataFrame, model: str | None) -> pd.DataFrame:
    """Rows of one model when the table has a ``model`` column holding it."""
    if model is None or "model" not in df.columns or model not in set(df["model"].astype(str)):
        return df
    return df[df["model"].astype(str) == model]


def step_head_filter(df: pd.DataFrame, step: int | None, head: int | None) -> pd.DataFrame:
    """Rows at ``step`` and ``head`` where the table has those columns (head <NA> rows are kept)."""
    out = df
    if step is not None and "step" in out.columns:
        out = out[out["step"] == step]
    if head is not None and "head" in out.columns:
        out = out[(out["head"] == head) | out["head"].isna()]
    return out


def int_values(df: pd.DataFrame, column: str) -> list[int]:
    """Sorted distinct integer values of a column (empty when it is missing or not numeric)."""
    if column not in df.columns:
        return []
    values = pd.to_numeric(df[column], errors="coerce").dropna()
    return sorted({int(v) for v in values})


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    """CSV of a table for a download button."""
    return df.to_csv(index=False).encode()


# --------------------------------------------------------------------------- models


def model_card(models_dir: str | os.PathLike[str]) -> tuple[str | None, pd.DataFrame]:
    """(MODEL_CARD.md text or None, one row per checkpoint JSON in the models directory)."""
    base = Path(models_dir)
    card = base / "MODEL_CARD.md"
    text = card.read_text() if card.is_file() else None
    rows = []
    for path in sorted(base.glob("*.json")) if base.is_dir() else []:
        meta, error = read_meta(path)
        if error or "config" not in meta:
            continue
        cfg = meta["config"]
        row: dict[str, Any] = {
            "model": path.stem,
            "blocks x steps": f"{cfg.get('blocks')} x {cfg.get('steps')}",
            "width": cfg.get("embed_dim"),
            "heads": cfg.get("num_heads"),
            "image / patch": f"{cfg.get('img_size')} / {cfg.get('patch_size')}",
            "registers": cfg.get("reg_tokens", 0),
            "time embed": bool(cfg.get("time_embed", False)),
            "classes": cfg.get("num_classes"),
            "parameters": meta.get("num_params"),
        }
        extra = meta.get("metadata") if isinstance(meta.get("metadata"), dict) else {}
        for key, value in _flatten(extra).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "acc" in key.rsplit(".", 1)[-1]:
                row[key] = value
        row["weights present"] = (base / f"{path.stem}.safetensors").is_file()
        rows.append(row)
    return text, pd.DataFrame(rows)


def _flatten(d: dict[str, Any], prefix: str = "", depth: int = 3) -> dict[str, Any]:
    """Nested dicts as {"a.b": value} (``depth`` levels)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth > 1:
            out.update(_flatten(value, name + ".", depth - 1))
        else:
            out[name] = value
    return out


_MD_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)")


def markdown_parts(text: str, base: Path, roots: Sequence[Path]) -> list[tuple[str, str, str]]:
    """Markdown split into ("md", text, "") and ("image", path, alt text) parts; images resolved against ``base``.

    Images outside ``roots``, missing or remote stay as their alt text (the browser reads nothing else).
    """
    parts: list[tuple[str, str, str]] = []
    pos = 0
    for match in _MD_IMAGE.finditer(text):
        parts.append(("md", text[pos:match.start()], ""))
        src = match["src"]
        path = base / src
        if "://" not in src and path.is_file() and is_within(path, roots):
            parts.append(("image", str(path), match["alt"]))
        else:
            parts.append(("md", f"*[{match['alt'] or src}]*", ""))
        pos = match.end()
    parts.append(("md", text[pos:], ""))
    return [p for p in parts if p[0] == "image" or p[1].strip()]


def find_checkpoint(entry: dict[str, Any], roots: Sequence[Path], models_dir: Path) -> tuple[Path | None, str]:
    """Checkpoint stem of a run's model entry inside the allowed roots: (stem or None, message).

    Tries the recorded ``path`` (when inside ``roots``), then ``models_dir/<name>``.
    """
    from .model.io import checkpoint_paths

    tried = []
    recorded = entry.get("path")
    candidates = []
    if isinstance(recorded, str) and recorded:
        candidates.append(Path(recorded))
    for name in (entry.get("name"), (entry.get("config") or {}).get("name")):
        if isinstance(name, str) and name:
            candidates.append(models_dir / name)
    for stem in candidates:
        weights, config = checkpoint_paths(stem)
        if not weights.is_file() or not config.is_file():
            tried.append(f"{stem} (not found)")
            continue
        if not (is_within(weights, roots) and is_within(config, roots)):
            tried.append(f"{stem} (outside the runs root and models directory)")
            continue
        stem = weights.with_suffix("")
        expected = entry.get("sha256")
        meta, _ = read_meta(config)
        if expected and meta.get("weights_sha256") and meta["weights_sha256"] != expected:
            tried.append(f"{stem} (other weights than the run used: sha256 differs)")
            continue
        return stem, f"model loaded from {stem}"
    return None, "no checkpoint of this model is readable: " + "; ".join(tried or ["the run records no path"])


# --------------------------------------------------------------------------- data sources

_SHAPES_DESC = re.compile(r"^shapes:(?P<split>\w+) \(img_size=(?P<size>\d+), seed=(?P<seed>\d+)\)$")
_IMAGENET_S_DESC = re.compile(r"^imagenet-s:(?P<root>.+) \((?P<split>[^()]+)\)$")


def open_data(description: str, roots: Sequence[Path]):
    """The pointing source a run's ``meta["data"]`` describes (ValueError when not readable here)."""
    from .analysis.sources import ImageNetSSource, ShapesSource, open_source
    from .data.shapes import ShapesConfig

    desc = str(description).strip()
    match = _SHAPES_DESC.match(desc)
    if match:
        cfg = ShapesConfig(img_size=int(match["size"]), seed=int(match["seed"]))
        return ShapesSource(cfg, split=match["split"])
    if desc == "shapes" or re.fullmatch(r"shapes:\d+", desc):
        return open_source(desc)
    if desc.startswith("shapes"):
        return open_source("shapes")
    match = _IMAGENET_S_DESC.match(desc)
    root, split = (match["root"], match["split"]) if match else (desc, "validation")
    if not is_within(root, roots):
        raise ValueError(f"the run's images are in {root}, outside the directories this browser may read; "
                         f"start it with `-- --data {root}` to allow it")
    return ImageNetSSource(root, split)


def class_names(source: Any) -> dict[str, str]:
    """wnid -> readable class name of a pointing source (the shapes' names; ImageNet-S keeps its wnids)."""
    from .analysis.sources import ShapesSource
    from .data.shapes import SHAPE_CLASSES, SHAPE_WNIDS

    if isinstance(source, ShapesSource):
        return dict(zip(SHAPE_WNIDS, SHAPE_CLASSES, strict=True))
    return {c: c for c in getattr(source, "categories", [])}


# --------------------------------------------------------------------------- attention on demand


@dataclass
class AttentionMaps:
    """CLS attention of a model on a few images, in the model's crop frame."""

    indices: list[int]
    names: list[str]
    labels: list[int]
    images: np.ndarray  # (N, S, S, 3) in [0, 1]
    masks: np.ndarray  # (N, S, S) bool: target-class pixels
    maps: np.ndarray  # (N, L, H, g, g) attention over patch tokens
    points: np.ndarray  # (N, L, H, 2) argmax point (x, y) in crop pixels
    hits: np.ndarray  # (N, L, H) bool
    preds: list[int]
    confidence: list[float]
    skipped: dict[int, str]
    excluded: np.ndarray | None = None  # (N, L, H) bool: point on an ignore pixel under ignore="exclude"


def attention_maps(model: Any, source: Any, indices: Sequence[int], tolerance: float = 0.0,
                   point: str = "center", steps: int | None = None, ignore: str = "miss") -> AttentionMaps:
    """Run ``model`` on ``source`` images and collect the CLS attention of every step and head.

    Hits follow the scorer's rule (``analysis.pointing.within_tolerance``, TorchRay's strict
    ``distance < tolerance``; tolerance 0 = inside the mask) in the model's crop frame.
    """
    import torch

    from .analysis.pointing import (
        PointingOptions,
        attention_points,
        prepare_image,
        within_tolerance,
    )
    from .data.imagenet_s import SampleError

    cfg = model.config
    opts = PointingOptions(tolerance=tolerance, point=point, frame="crop", steps=steps, ignore=ignore)
    preps, skipped = [], {}
    for i in indices:
        try:
            preps.append(prepare_image(int(i), source, cfg, opts))
        except SampleError as err:
            skipped[int(i)] = f"{err.reason}: {err.detail}"
    g, ps, npt = cfg.grid_size, cfg.patch_size, cfg.num_prefix_tokens
    if not preps:
        empty = np.zeros((0,))
        return AttentionMaps([], [], [], empty, empty, empty, empty, empty, [], [], skipped)
    x = torch.stack([p.tensor for p in preps])
    with torch.no_grad(), model.capture("attn.cls_pattern", dtype=torch.float32) as cache:
        feats = model.forward_features(x, steps=steps)
        logits = model.forward_head(feats)
    rows = torch.stack([cache["attn.cls_pattern", layer] for layer in cache.layers("attn.cls_pattern")], 1)
    patch = rows[..., npt:]  # (N, L, H, P)
    xs, ys, _ = attention_points(patch, g, ps, point)
    pts = torch.stack([xs, ys], -1).numpy()
    dist = np.stack([p.distance for p in preps])  # (N, S, S) crop frame
    px = np.clip(np.floor(pts[..., 0]).astype(int), 0, cfg.img_size - 1)
    py = np.clip(np.floor(pts[..., 1]).astype(int), 0, cfg.img_size - 1)
    n_idx = np.arange(len(preps))[:, None, None]
    hits = within_tolerance(dist[n_idx, py, px], tolerance)
    excluded = np.zeros_like(hits)
    if ignore == "exclude":
        excluded = np.stack([p.ignored for p in preps])[n_idx, py, px]
        hits &= ~excluded
    mean, std = np.array(cfg.mean)[:, None, None], np.array(cfg.std)[:, None, None]
    images = np.stack([np.clip((p.tensor.numpy() * std + mean).transpose(1, 2, 0), 0, 1) for p in preps])
    probs = torch.softmax(logits.float(), -1)
    conf, pred = probs.max(-1)
    return AttentionMaps(
        indices=[p.index for p in preps], names=[p.name for p in preps], labels=[p.label for p in preps],
        images=images.astype(np.float32), masks=dist == 0,
        maps=patch.reshape(*patch.shape[:3], g, g).numpy(), points=pts, hits=hits,
        preds=pred.tolist(), confidence=conf.tolist(), skipped=skipped, excluded=excluded,
    )


__all__ = [
    "ANALYSES", "ANALYSIS_BY_KEY", "AnalysisSpec", "AttentionMaps", "Problem", "RunInfo", "attention_maps",
    "check_meta", "class_names", "file_key", "find_checkpoint", "figures_for", "find_runs", "for_model", "int_values", "is_within",
    "load_run", "markdown_parts", "model_card", "open_data", "read_meta", "read_table", "runs_for", "spec_for",
    "step_head_filter", "to_csv_bytes", "UnreadableTableError",
]
