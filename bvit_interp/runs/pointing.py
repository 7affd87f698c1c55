"""Pointing game over several models into a run directory, in resumable chunks (one parquet part per chunk)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from ..analysis import pointing_plots
from ..analysis.pointing import PointingOptions, PointingTables, pointing_tables, score_model
from ..data.sources import PointingSource
from ..distributed import DistInfo
from ..model import BViT
from .chunks import ChunkedTables
from .run import Run

PART_KINDS = ("points", "images", "skipped")


def _gather(frames: tuple[pd.DataFrame, ...], info: DistInfo) -> tuple[pd.DataFrame, ...]:
    """Each process's share of a chunk's tables, concatenated on every process."""
    if not info.enabled:
        return frames
    import torch.distributed as dist

    gathered: list[tuple[pd.DataFrame, ...] | None] = [None] * info.world_size
    dist.all_gather_object(gathered, frames)
    return tuple(pd.concat([g[i] for g in gathered if g is not None], ignore_index=True) for i in range(len(frames)))


def pointing_game(
    models: Mapping[str, BViT],
    source: PointingSource,
    options: PointingOptions,
    run: Run,
    indices: Sequence[int] | None = None,
    chunk_size: int = 512,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
    strict: bool = False,
    progress: bool = True,
    dist_info: DistInfo | None = None,
    seed: int = 0,
) -> PointingTables:
    """Score every model on the source's images ``indices`` (default: all); chunks already in ``run`` are reused.

    The chunking is checked against the parts the run holds (``ChunkedTables``): another ``chunk_size``
    raises ``ValueError``. Raises ``ValueError`` when a model has no usable image at all (the skipped
    table is written first). ``seed`` seeds the bootstrap over classes of the macro rates' intervals.
    """
    info = dist_info or DistInfo()
    chosen = list(range(len(source))) if indices is None else list(indices)
    collected: dict[str, list[pd.DataFrame]] = {k: [] for k in PART_KINDS}
    for name, model in models.items():
        chunks = ChunkedTables(run, f"parts/{name}", chosen, chunk_size, PART_KINDS, writer=info.is_main)

        def score(items: list[int], model: BViT = model) -> tuple[pd.DataFrame, ...]:
            frames = score_model(model, source, options, items, batch_size, workers, device, amp, strict, progress, info)
            return _gather(frames, info)

        for chunk in chunks:
            frames = chunks.get(chunk, score)
            for kind, frame in zip(PART_KINDS, frames, strict=True):
                collected[kind].append(frame.assign(model=name))
    points, images, skipped = (pd.concat(collected[k], ignore_index=True) for k in PART_KINDS)
    unscored = [name for name in models if not (images["model"] == name).any()]
    if unscored:
        if info.is_main:
            run.write_table("skipped", skipped)
        mine = skipped[skipped["model"] == unscored[0]]
        reasons = ", ".join(f"{count} {reason}" for reason, count in mine["reason"].value_counts().items())
        raise ValueError(
            f"no usable images in {source.description} for model {unscored[0]}: all {len(chosen)} were skipped "
            f"({reasons or 'none listed'}); see the skipped table {run.file('skipped.parquet')}"
        )
    return pointing_tables(points, images, skipped, options, seed)


def write_tables(run: Run, tables: PointingTables, csv: bool = False) -> None:
    """Final tables and figures of a pointing run."""
    for name in ("points", "images", "skipped", "hit_rates", "per_class", "baselines", "summary"):
        run.write_table(name, getattr(tables, name), csv=csv)
    run.write_figure("curves", pointing_plots.curves_figure(tables.summary, tables.average))
    for model in tables.hit_rates["model"].unique():
        run.write_figure(f"heatmap_{model}", pointing_plots.heatmap_figure(tables.hit_rates, model))
