"""Run discovery, validation, tables, the model card and data for the results browser (no Streamlit here).

The browser reads only inside its allowed roots (the runs root, the models directory and any
data roots it was given); ``is_within`` is the one check every file access goes through. The
analyses, their pages and their old names come from ``bvit_interp.registry``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bvit_interp.data.sources import reopen
from bvit_interp.data.spec import as_spec
from bvit_interp.registry import AnalysisSpec, find_analysis
from bvit_interp.runs import RESULTS_FORMAT

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
        """The registered analysis of the run (old names such as ``svd`` map to their key)."""
        return find_analysis(self.analysis)

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
    elif find_analysis(meta["analysis"]) is None:
        problems.append(Problem("info", f"Analysis {meta['analysis']!r} is not registered in this version of "
                                        "bvit-interp, so it has no page; its figures and tables are listed on the overview."))
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
    spec = find_analysis(meta.get("analysis"))
    info.problems.extend(check_meta(meta, f"bvit-interp {spec.command}" if spec else None))
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
    """The runs a page shows: those whose ``meta["analysis"]`` is the spec's key or one of its old names."""
    return [r for r in runs if r.spec is not None and r.spec.key == spec.key]


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
    from bvit_interp.model.io import checkpoint_paths

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


# --------------------------------------------------------------------------- data


def data_label(data: Any) -> str:
    """One line for a run's ``meta["data"]`` (a dict's ``display``, an old run's string as it is)."""
    if isinstance(data, Mapping):
        return str(data.get("display") or data.get("kind") or "")
    return "" if data is None else str(data)


def open_data(data: Mapping[str, Any] | str | None, roots: Sequence[Path]) -> Any:
    """The images a run's ``meta["data"]`` describes (``data.sources.reopen``), read only inside ``roots``.

    ValueError when they are not readable here (no data recorded, a root outside the allowed directories).
    """
    spec = as_spec(data)
    root = spec.get("root")
    if root is not None and not is_within(root, roots):
        raise ValueError(f"the run's images are in {root}, outside the directories this browser may read; "
                         f"start it with `-- --data {root}` to allow it")
    return reopen(spec)
