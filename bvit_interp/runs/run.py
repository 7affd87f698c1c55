"""Run directories: ``meta.json`` + parquet tables + npz arrays + PNG figures, written atomically.

A run is complete once ``meta.json`` says ``"status": "complete"``. ``Run.create`` gives these guarantees:

- the meta (analysis, models, data, options, seed) is checked *before* anything is created: a value that
  cannot be recorded creates nothing;
- an unfinished run resumes only with the same analysis, models, data, seed and options; otherwise the
  error names each differing option (a run that holds nothing but its meta.json is simply restarted);
- a finished run is never overwritten without ``force``, and ``force`` only replaces a directory that is
  recognisably a run of this toolkit (a meta.json with our format marker);
- with ``force`` the new run is written into a sibling staging directory ``.<name>.new`` and renamed
  over the old one by ``complete()``: a failed or interrupted rerun leaves the old run as it was;
- one writer per run directory: an exclusive lock (``runs/lock.py``) held until ``complete()`` or
  ``close()``; a second writer's error names the holder (pid, host, command, start time).
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

from ..atomic import atomic_write
from .lock import LOCK_NAME, RunLock

RESULTS_FORMAT = 1
PRODUCER = "bvit-interp"  # meta["producer"]: the marker that tells our runs from any other folder
STAGING, RETIRED = ".new", ".old"  # suffixes of the sibling directories of a --force rerun
# Meta fields whose change makes a resumed run's results differ (``options`` is compared key by key).
RESULT_FIELDS = ("analysis", "data", "seed")


class RunExistsError(FileExistsError):
    """The output directory already holds a finished run, another run, or something that is not a run."""


def is_run(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a run of this toolkit (a meta.json with our format marker)."""
    return _read_meta(Path(path)) is not None


def is_complete_run(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a finished run of this toolkit."""
    meta = _read_meta(Path(path))
    return meta is not None and meta.get("status") == "complete"


def _read_meta(path: Path) -> dict[str, Any] | None:
    """The directory's meta.json when it is one of ours, else None."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    if meta.get("producer") == PRODUCER:
        return meta
    # runs written before the marker existed: our format number, status and package version
    legacy = isinstance(meta.get("format"), int) and "status" in meta and "package_version" in meta
    return meta if legacy else None


def _entries(path: Path) -> list[str]:
    """What a directory holds apart from its lock file and atomic-write leftovers (none if it does not exist)."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME and not p.name.endswith(".tmp"))


def _recordable(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` through JSON and back (tuples -> lists), so a resumed run compares equal to its meta.json."""
    try:
        return json.loads(json.dumps(meta, default=_json_default))
    except (TypeError, ValueError) as err:
        raise ValueError(f"run meta cannot be recorded in meta.json: {err}") from err


def _flat(options: Any, prefix: str = "") -> dict[str, Any]:
    """Nested option dicts as {'featviz.lr': 0.1, ...}."""
    if not isinstance(options, dict):
        return {prefix: options} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(_flat(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def _model_ids(meta: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(name, sha256) of each model; a missing sha256 matches any (a run may add provenance later)."""
    return [(m.get("name"), m.get("sha256")) for m in meta.get("models") or [] if isinstance(m, dict)]


def _leaf_differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every leaf that differs between two nested values."""
    a = _flat(old, prefix) if isinstance(old, dict) else {prefix: old}
    b = _flat(new, prefix) if isinstance(new, dict) else {prefix: new}
    unset = "<unset>"
    return [(k, a.get(k, unset), b.get(k, unset)) for k in sorted(set(a) | set(b)) if a.get(k, unset) != b.get(k, unset)]


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between a run's meta and a new command's meta, in the fields that change results."""
    found = []
    for key in RESULT_FIELDS:
        if key in new:
            found += [f"{k} ({x!r} in the run, {y!r} now)" for k, x, y in _leaf_differences(old.get(key), new[key], key)]
    a, b = _model_ids(old), _model_ids(new)
    if b and (len(a) != len(b) or any(x[0] != y[0] or (x[1] and y[1] and x[1] != y[1]) for x, y in zip(a, b, strict=False))):
        found.append(f"models ({[x[0] for x in a]} in the run, {[y[0] for y in b]} now, or other weights)")
    for key, x, y in _leaf_differences(old.get("options") or {}, new.get("options") or {}):
        flag = f" (--{key.replace('_', '-')})" if "." not in key else ""
        found.append(f"option {key}{flag}: {x!r} in the run, {y!r} now")
    return found


class Run:
    """One analysis run directory; ``Run(path)`` reads one, ``Run.create`` opens one for writing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)  # where files are written now (the staging directory of a --force rerun)
        self.target = self.path  # where the run lives once complete
        self._locks: list[RunLock] = []

    # ----------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: dict[str, Any], force: bool = False) -> Run:
        """Open ``path`` for writing: new, resumed (same results-relevant meta, unfinished) or replaced with ``force``."""
        target = Path(path)
        meta = _recordable(meta)
        if target.exists() and not target.is_dir():
            raise RunExistsError(f"--out {target} is a file, not a run directory; choose another --out")
        if _entries(target) and _read_meta(target) is None:
            what = "--force only replaces a run of this toolkit, and" if force else ""
            raise RunExistsError(
                f"--out {target} exists and is not a bvit-interp run (no meta.json of ours); {what} nothing in it was "
                "touched; choose another --out (or move its contents away)"
            )
        target.mkdir(parents=True, exist_ok=True)
        run = cls(target)
        run._locks.append(RunLock.acquire(target))
        try:
            run._open(meta, force)
        except BaseException:
            run.close()
            raise
        return run

    def _open(self, meta: dict[str, Any], force: bool) -> None:
        """Decide, under the lock, whether to start, resume, restart a stub or stage a replacement."""
        target = self.target
        old = _read_meta(target)
        if old is None:  # empty (or only our lock file)
            self._start(target, meta)
        elif force:
            # No other --force rerun can be using the staging directory: it would hold the target's lock.
            staging = self._sibling(STAGING)
            staged = _read_meta(staging)
            resume = staged is not None and staged.get("status") != "complete" and not differences(staged, meta)
            if not resume:
                _clear(staging)
            self._locks.append(RunLock.acquire(_mkdir(staging)))
            if resume:  # an interrupted --force rerun with the same settings resumes where it stopped
                self.path = staging
                self.update_meta(resumed_at=_now())
            else:
                self._start(staging, meta)
        elif old.get("status") == "complete":
            raise RunExistsError(f"{target} already holds a finished run; pass --force to replace it "
                                 "(the old run stays until the new one completes)")
        elif differs := differences(old, meta):
            if _entries(target) != ["meta.json"]:
                raise RunExistsError(
                    f"{target} holds an unfinished run with other settings: {'; '.join(differs)}. Rerun with the "
                    "run's settings to resume it, or pass --force to start over"
                )
            self._start(target, meta)  # a stub that holds no results yet: nothing is lost by restarting it
        else:
            self.update_meta(resumed_at=_now())

    def _start(self, where: Path, meta: dict[str, Any]) -> None:
        self.path = where
        full = {"format": RESULTS_FORMAT, "producer": PRODUCER, "status": "running", "created_at": _now(),
                "package_version": _version(), "host": platform.node(), **meta}
        self.write_json("meta.json", full)

    def _sibling(self, suffix: str) -> Path:
        """``.<name><suffix>`` beside the run directory (staging / retired directory of a --force rerun)."""
        full = self.target.resolve()
        return full.parent / f".{full.name}{suffix}"

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_text())

    @property
    def status(self) -> str:
        """'running', 'complete', or 'missing' when the directory holds no meta.json."""
        return str(self.meta.get("status", "unknown")) if self.meta_path.exists() else "missing"

    @property
    def is_complete(self) -> bool:
        return self.status == "complete"

    @property
    def is_open(self) -> bool:
        """Whether this object holds the run's lock (a writer)."""
        return any(lock.held for lock in self._locks)

    def update_meta(self, **fields: Any) -> None:
        meta = self.meta
        meta.update(fields)
        self.write_json("meta.json", meta)

    def complete(self, **fields: Any) -> None:
        """Mark the run complete, swap a --force rerun in over the old run, and release the lock."""
        self.update_meta(status="complete", finished_at=_now(), **fields)
        if self.path != self.target:  # a --force rerun: swap it in over the old run now that it succeeded
            retired = self._sibling(RETIRED)
            if self.target.exists():
                _clear(retired)
                os.rename(self.target, retired)
            os.rename(self.path, self.target)
            self.path = self.target
            shutil.rmtree(retired, ignore_errors=True)
        self.close()

    def close(self) -> None:
        """Release the lock without completing (an unfinished run stays resumable); idempotent."""
        for lock in self._locks:
            lock.release()
        self._locks = []

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def write_image(self, name: str, image: np.ndarray) -> Path:
        """An 8-bit PNG of a (3, H, W) image in [0, 1]."""
        from PIL import Image

        pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
        path = self.file(f"{name}.png")
        atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
        return path

    def write_model(self, name: str, model: Any, metadata: dict[str, Any] | None = None) -> Path:
        """A checkpoint ``<name>.safetensors`` + ``<name>.json`` (``save_model``, atomic)."""
        from ..model import save_model

        return save_model(model, self.file(name), metadata=metadata)

    # ----------------------------------------------------------- readers
    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    def read_table(self, name: str) -> pd.DataFrame:
        path = self.file(f"{name}.parquet")
        if not path.exists():
            raise FileNotFoundError(f"{path} not found in run {self.path}")
        return pd.read_parquet(path)

    def read_arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.file(f"{name}.npz")) as data:
            return {k: data[k] for k in data.files}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _clear(path: Path) -> None:
    """Remove a staging or retired sibling directory, but only one that is ours (a run, or empty)."""
    if not path.exists():
        return
    if _entries(path) and _read_meta(path) is None:
        raise RunExistsError(f"{path} is in the way of the --force rerun and is not a bvit-interp run; move it away")
    shutil.rmtree(path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _version() -> str:
    from .. import __version__

    return __version__


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (Path, tuple)):
        return str(obj) if isinstance(obj, Path) else list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
