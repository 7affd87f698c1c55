"""Pointing game over several models into a run directory, in resumable chunks (one parquet part per chunk)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..distributed import DistInfo
from ..model import BViT
from ..results import Run
from . import pointing_plots
from .pointing import (
    PointingOptions,
    baseline_table,
    hit_rate_table,
    per_class_table,
    prepare_image,
    score_model,
    step_summary,
    within_tolerance,
)
from .sources import PointingSource

PART_KINDS = ("points", "images", "skipped")


@dataclass
class PointingTables:
    points: pd.DataFrame
    images: pd.DataFrame
    skipped: pd.DataFrame
    hit_rates: pd.DataFrame
    per_class: pd.DataFrame
    baselines: pd.DataFrame
    summary: pd.DataFrame
    average: str = "micro"


def _gather(frames: tuple[pd.DataFrame, ...], info: DistInfo) -> tuple[pd.DataFrame, ...]:
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

    Raises ``ValueError`` when a model has no usable image at all (the skipped table is written first).

    ``seed`` seeds the bootstrap over classes of the macro rates' intervals.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    info = dist_info or DistInfo()
    chosen = list(range(len(source))) if indices is None else list(indices)
    n = len(chosen)
    collected: dict[str, list[pd.DataFrame]] = {k: [] for k in PART_KINDS}
    for name, model in models.items():
        for start in range(0, n, chunk_size):
            part = f"parts/{name}/{start:08d}"
            if all(run.has(f"{part}_{k}.parquet") for k in PART_KINDS):
                frames = tuple(run.read_table(f"{part}_{k}") for k in PART_KINDS)
            else:
                frames = score_model(
                    model, source, options, chosen[start : start + chunk_size], batch_size, workers,
                    device, amp, strict, progress, info,
                )
                frames = _gather(frames, info)
                if info.is_main:
                    for kind, frame in zip(PART_KINDS, frames, strict=True):
                        run.write_table(f"{part}_{kind}", frame)
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
            f"no usable images in {source.description} for model {unscored[0]}: all {n} were skipped "
            f"({reasons or 'none listed'}); see the skipped table {run.file('skipped.parquet')}"
        )
    points["hit"] = points["hit"].astype(bool)
    points["excluded"] = points["excluded"].eq(True) if "excluded" in points else False  # parts without it: False
    images["centre_hit"] = images["centre_hit"].astype(bool)
    if "centre_excluded" in images:
        images["centre_excluded"] = images["centre_excluded"].eq(True)
    hit_rates = hit_rate_table(points, images, seed=seed)
    baselines = baseline_table(images)
    long = points.merge(images[["model", "image_index", "name", "wnid", "label", "mask_fraction"]], on=["model", "image_index"])
    return PointingTables(
        points=long,
        images=images,
        skipped=skipped,
        hit_rates=hit_rates,
        per_class=per_class_table(points, images),
        baselines=baselines,
        summary=step_summary(hit_rates, baselines, options.average),
        average=options.average,
    )


def write_tables(run: Run, tables: PointingTables, csv: bool = False) -> None:
    """Final tables and figures of a pointing run."""
    for name in ("points", "images", "skipped", "hit_rates", "per_class", "baselines", "summary"):
        run.write_table(name, getattr(tables, name), csv=csv)
    run.write_figure("curves", pointing_plots.curves_figure(tables.summary, tables.average))
    for model in tables.hit_rates["model"].unique():
        run.write_figure(f"heatmap_{model}", pointing_plots.heatmap_figure(tables.hit_rates, model))


@torch.no_grad()
def overlay_for_best_head(
    model: BViT,
    source: PointingSource,
    options: PointingOptions,
    summary: pd.DataFrame,
    images: pd.DataFrame,
    n_images: int = 4,
    n_steps: int = 6,
    device: str | torch.device = "cpu",
):
    """Fig. 13: attention of the overall best head over steps on a few images (model-crop frame)."""
    best = summary.loc[summary["best_rate"].idxmax()]
    head = int(best["best_head"])
    cfg = model.config
    crop_opts = PointingOptions(tolerance=options.tolerance, point=options.point, frame="crop", steps=options.steps,
                                ignore=options.ignore)
    preps = [prepare_image(int(i), source, cfg, crop_opts) for i in images["image_index"].head(n_images)]
    x = torch.stack([p.tensor for p in preps]).to(device)
    with model.capture("attn.cls_pattern", dtype=torch.float32) as cache:
        model.forward_features(x, steps=options.steps)
    layers = cache.layers("attn.cls_pattern")
    chosen = sorted({int(round(v)) for v in np.linspace(0, len(layers) - 1, min(n_steps, len(layers)))})
    g, npt = cfg.grid_size, cfg.num_prefix_tokens
    maps = torch.stack([cache["attn.cls_pattern", layers[s]][:, head, npt:] for s in chosen], 1)  # (B, S, P)
    up = F.interpolate(maps.reshape(-1, 1, g, g), size=(cfg.img_size, cfg.img_size), mode="nearest")
    up = up.reshape(len(preps), len(chosen), cfg.img_size, cfg.img_size).cpu().numpy()
    idx = maps.argmax(-1).cpu().numpy()
    pts = np.stack([(idx % g + 0.5) * cfg.patch_size, (idx // g + 0.5) * cfg.patch_size], -1) - 0.5
    mean, std = np.array(cfg.mean)[:, None, None], np.array(cfg.std)[:, None, None]
    shown = [np.clip((p.tensor.numpy() * std + mean).transpose(1, 2, 0), 0, 1) for p in preps]
    masks = [(p.distance == 0).astype(float) for p in preps]
    def scored_hit(p, pt: np.ndarray) -> bool:
        y, x = int(pt[1] + 0.5), int(pt[0] + 0.5)
        return bool(within_tolerance(p.distance[y, x], options.tolerance)) and not (p.ignored is not None and p.ignored[y, x])

    hits = np.array([[scored_hit(p, pt) for pt in row] for p, row in zip(preps, pts, strict=True)])
    title = f"{cfg.name}: head {head} (best at step {int(best['step'])}, hit rate {best['best_rate']:.2f})"
    return pointing_plots.overlay_figure(shown, masks, up, pts, hits, [layers[s] + 1 for s in chosen], title)
