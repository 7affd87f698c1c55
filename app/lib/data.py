"""Cached reads: tables and arrays by (path, mtime), runs by root, models and data sources as resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from bvit_interp.analysis.pointing import AttentionMaps, PointingOptions, attention_maps

from .config import AppConfig
from .runs import (
    RunInfo,
    file_key,
    find_checkpoint,
    find_runs,
    for_model,
    is_within,
    open_data,
    read_table,
)


class OutsideRootError(PermissionError):
    """A file outside the directories the browser may read."""


def _checked(path: Path, cfg: AppConfig) -> Path:
    if not is_within(path, cfg.roots):
        raise OutsideRootError(f"{path} is outside the runs root and the models directory")
    return path


@st.cache_data(ttl=3, show_spinner=False)
def list_runs(root: str) -> list[RunInfo]:
    """Runs under ``root`` (re-scanned every few seconds so new and finished runs appear)."""
    return find_runs(root)


@st.cache_data(max_entries=64, show_spinner=False)
def _table(path: str, mtime: float, model: str | None) -> pd.DataFrame:
    return for_model(read_table(path), model).reset_index(drop=True)


def table(run: RunInfo, name: str, cfg: AppConfig, model: str | None = None) -> pd.DataFrame:
    """Table ``name`` of a run, restricted to ``model`` when it has a model column."""
    path = _checked(run.file(f"{name}.parquet"), cfg)
    return _table(*file_key(path), model)


@st.cache_data(max_entries=16, show_spinner=False)
def _arrays(path: str, mtime: float) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def arrays(run: RunInfo, name: str, cfg: AppConfig) -> dict[str, np.ndarray]:
    """Arrays of ``name.npz`` in a run."""
    return _arrays(*file_key(_checked(run.file(f"{name}.npz"), cfg)))


@st.cache_data(max_entries=128, show_spinner=False)
def _file_bytes(path: str, mtime: float) -> bytes:
    return Path(path).read_bytes()


def file_bytes(path: Path, cfg: AppConfig) -> bytes:
    """Raw bytes of a file inside the allowed roots (figures, parquet downloads)."""
    return _file_bytes(*file_key(_checked(path, cfg)))


@st.cache_resource(max_entries=4, show_spinner="Loading the model ...")
def _model(stem: str, mtime: float) -> Any:
    from bvit_interp.model import load_model

    return load_model(stem, map_location="cpu").eval()


def model_for(run: RunInfo, name: str | None, cfg: AppConfig) -> tuple[Any | None, tuple[str, float], str]:
    """(model or None, cache key, message) for a run's model, loaded only from inside the allowed roots."""
    entries = run.models
    entry = next((m for m in entries if m.get("name") == name), entries[0] if entries else None)
    if entry is None:
        return None, ("", 0.0), "the run records no model"
    stem, message = find_checkpoint(entry, cfg.roots, cfg.models)
    if stem is None:
        return None, ("", 0.0), message
    key = (str(stem), stem.with_suffix(".safetensors").stat().st_mtime)
    return _model(*key), key, message


def data_key(run: RunInfo) -> str:
    """The run's ``meta["data"]`` as a string (the cache key of its images)."""
    return json.dumps(run.meta.get("data"), sort_keys=True)


@st.cache_resource(max_entries=4, show_spinner=False)
def source_for(data: str, roots: tuple[Path, ...]) -> Any:
    """The images of a run (``data_key``) reopened through the data layer (ValueError when not readable here)."""
    return open_data(json.loads(data), roots)


@st.cache_data(max_entries=64, show_spinner="Running the model ...")
def attention(stem_key: tuple[str, float], data: str, roots: tuple[Path, ...], indices: tuple[int, ...],
              tolerance: float, point: str, steps: int | None, _model: Any, ignore: str = "miss") -> AttentionMaps:
    """CLS attention of the model (identified by ``stem_key``) on a run's images, cached per image set."""
    options = PointingOptions(tolerance=tolerance, point=point, steps=steps, ignore=ignore)
    return attention_maps(_model, source_for(data, roots), list(indices), options)
