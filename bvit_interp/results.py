"""Run directories: ``meta.json`` + parquet tables + npz arrays + PNG figures, written atomically.

A run is complete once ``meta.json`` says ``"status": "complete"``. An existing run is never
overwritten without ``force``; an incomplete one can be resumed from what it holds.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_write

RESULTS_FORMAT = 1


class RunExistsError(FileExistsError):
    """The output directory already holds a finished run (use --force)."""


class Run:
    """One analysis run directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # ----------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: dict[str, Any], force: bool = False) -> Run:
        """Open ``path`` for writing: new, resumed (same analysis, unfinished) or replaced with ``force``."""
        run = cls(path)
        if run.path.exists() and any(run.path.iterdir()):
            old = run.meta if run.meta_path.exists() else None
            if force:
                shutil.rmtree(run.path)
            elif old is None:
                raise RunExistsError(f"{run.path} exists and is not a bvit-interp run; choose another --out or pass --force")
            elif old.get("status") == "complete":
                raise RunExistsError(f"{run.path} already holds a finished run; pass --force to overwrite it")
            elif old.get("analysis") != meta.get("analysis") or old.get("options") != meta.get("options"):
                raise RunExistsError(
                    f"{run.path} holds an unfinished run with other options; pass --force to start over"
                )
            else:
                run.update_meta(resumed_at=_now())
                return run
        run.path.mkdir(parents=True, exist_ok=True)
        full = {
            "format": RESULTS_FORMAT,
            "status": "running",
            "created_at": _now(),
            "package_version": _version(),
            "host": platform.node(),
            **meta,
        }
        run.write_json("meta.json", full)
        return run

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_text())

    @property
    def is_complete(self) -> bool:
        return self.meta_path.exists() and self.meta.get("status") == "complete"

    def update_meta(self, **fields: Any) -> None:
        meta = self.meta
        meta.update(fields)
        self.write_json("meta.json", meta)

    def complete(self, **fields: Any) -> None:
        self.update_meta(status="complete", finished_at=_now(), **fields)

    # ----------------------------------------------------------- writers
    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.file(name)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=_json_default) + "\n"))
        return path

    def write_table(self, name: str, df: pd.DataFrame, csv: bool = False) -> Path:
        path = self.file(f"{name}.parquet")
        atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
        if csv:
            atomic_write(self.file(f"{name}.csv"), lambda tmp: df.to_csv(tmp, index=False))
        return path

    def write_arrays(self, name: str, **arrays: np.ndarray) -> Path:
        path = self.file(f"{name}.npz")

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        atomic_write(path, write)
        return path

    def write_figure(self, name: str, fig: Any, dpi: int = 120) -> Path:
        import matplotlib.pyplot as plt

        path = self.file(f"{name}.png")
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
        plt.close(fig)
        return path

    # ----------------------------------------------------------- readers
    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def read_table(self, name: str) -> pd.DataFrame:
        path = self.file(f"{name}.parquet")
        if not path.exists():
            raise FileNotFoundError(f"{path} not found in run {self.path}")
        return pd.read_parquet(path)

    def read_arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.file(f"{name}.npz")) as data:
            return {k: data[k] for k in data.files}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _version() -> str:
    from . import __version__

    return __version__


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (Path, tuple)):
        return str(obj) if isinstance(obj, Path) else list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
