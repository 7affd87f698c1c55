"""Pointing game per head and per step (paper Sec. 4.2.2, App. F).

For every image, step and head: the argmax of the CLS query's attention over the patch
tokens (CLS, distillation-token and register columns excluded; their attention mass is
recorded: ``prefix_mass`` over all of them, ``dist_mass`` on a -dist model's distillation
token alone, NaN for models without one), placed at the
patch centre (or at the argmax of the bilinearly upsampled map), mapped back through the
preprocessing (resize + centre crop) and scored with TorchRay's rule (``within_tolerance``):
a hit when its pixel is strictly closer than ``tolerance`` pixels to a target-class pixel,
or, with tolerance 0 (the paper), when its pixel is a target pixel. Chance (a uniform random
point in the model's view) and a centre-point baseline are scored with the same rule.

ImageNet-S ignore pixels (id 1000): by default (``ignore="miss"``) a point on one is scored
like any other pixel, so it is a miss unless it lies within the tolerance of the target, and
chance counts them as view pixels. ``ignore="exclude"`` drops points on ignore pixels from
the denominator of their (image, step, head) and computes chance over the non-ignore pixels
of the view (the centre baseline likewise skips images whose centre is an ignore pixel).

Macro rates (mean of per-class rates) get a percentile bootstrap interval over classes
(``macro_ci_low`` / ``macro_ci_high``, seeded); micro rates a Wilson interval.

Tables use 1-based ``step`` = position in the unrolled network (the recurrent step of a
bViT, the block of a ViT); hook names are 0-based (``steps.{step-1}``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.imagenet_s import IGNORE_ID, SampleError
from ..data.sources import PointingSource
from ..data.transforms import CropGeometry, denormalize
from ..distributed import DistInfo
from ..model import BViT, BViTConfig

TIE_RULES = ("first", "any")
POINT_RULES = ("center", "upsample")
FRAMES = ("original", "crop")
AVERAGES = ("micro", "macro")
IGNORE_RULES = ("miss", "exclude")
BOOTSTRAP_SAMPLES = 2000  # resamples of the classes for the macro rate's interval


@dataclass(frozen=True)
class PointingOptions:
    """Scoring rules; the defaults are the paper's (patch centre, exact mask, original image)."""

    tolerance: float = 0.0  # pixels; hit if distance < tolerance (TorchRay, default 15); 0: inside the mask
    tie: str = "first"  # first: first maximal patch; any: hit if any maximal patch hits
    point: str = "center"  # center: patch centre; upsample: argmax of the bilinear upsampled map
    frame: str = "original"  # original image or the model's crop
    average: str = "micro"  # headline averaging: over images (micro) or over classes (macro)
    steps: int | None = None  # recurrent steps to run (default: the trained horizon)
    ignore: str = "miss"  # points on ignore pixels (id 1000): a miss, or excluded from the denominator

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("tie", self.tie, TIE_RULES),
            ("point", self.point, POINT_RULES),
            ("frame", self.frame, FRAMES),
            ("average", self.average, AVERAGES),
            ("ignore", self.ignore, IGNORE_RULES),
        ):
            if value not in allowed:
                raise ValueError(f"pointing option {name}={value!r}: choose one of {allowed}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"tolerance must be a finite number >= 0 pixels, got {self.tolerance}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# ----------------------------------------------------------------------------- geometry
@dataclass
class PreparedImage:
    """A model input plus everything needed to score points on it, computed in loader workers."""

    index: int
    name: str
    wnid: str
    label: int
    tensor: torch.Tensor
    geometry: CropGeometry
    distance: np.ndarray  # frame pixels: distance to the nearest target pixel (0 on target)
    mask_fraction: float  # target area / frame area (in the model's view)
    chance: float  # fraction of (scored) view pixels that hit
    centre_hit: bool
    width: int
    height: int
    ignored: np.ndarray | None = None  # frame pixels excluded from scoring (ignore="exclude"), else None
    centre_excluded: bool = False


@dataclass
class Skipped:
    index: int
    name: str
    reason: str
    detail: str


def distance_to_target(target: np.ndarray, tolerance: float) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest target pixel (a 0/1 map when tolerance is 0)."""
    if not target.any():
        return np.full(target.shape, np.inf, dtype=np.float32)
    if tolerance == 0:
        return (~target).astype(np.float32)
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~target).astype(np.float32)


def within_tolerance(distance: np.ndarray | float, tolerance: float) -> np.ndarray:
    """TorchRay's hit test on distances to the nearest target pixel: ``distance < tolerance``, or ``== 0``.

    TorchRay 1.0.0.2 (``torchray/benchmark/pointing_game.py``, ``PointingGame.evaluate``) builds around
    the predicted integer pixel (u, v) the acceptance region
    ``accept = (arange(H) - v)**2 [:, None] + (arange(W) - u)**2 [None, :] < tolerance**2``
    (strictly less) and counts a hit when ``(mask & accept).any()``: the point hits iff the
    Euclidean distance from its pixel to the nearest mask pixel is strictly below the
    tolerance (default 15). With tolerance 0 TorchRay's region is empty and nothing hits; here
    tolerance 0 keeps the paper's meaning, the point's pixel lies in the mask (distance 0).
    For 0 < tolerance <= 1 both read the same (pixel distances are 0 or >= 1).
    """
    d = np.asarray(distance)
    return (d == 0) | (d < tolerance)


def view_region(geometry: CropGeometry, frame: str, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Pixels of the frame that the model sees (the whole frame for 'crop')."""
    if frame == "crop":
        return slice(None), slice(None)
    x0, y0, x1, y1 = geometry.visible_box()
    h, w = shape
    return slice(max(0, math.floor(y0)), min(h, math.ceil(y1))), slice(max(0, math.floor(x0)), min(w, math.ceil(x1)))


def crop_points_to_pixels(
    xs: np.ndarray, ys: np.ndarray, geometry: CropGeometry, frame: str, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Crop-frame points -> (x, y) in the scoring frame and the integer pixel they fall in."""
    if frame == "original":
        xs, ys = geometry.to_original(xs, ys)
    h, w = shape
    px = np.clip(np.floor(xs).astype(np.int64), 0, w - 1)
    py = np.clip(np.floor(ys).astype(np.int64), 0, h - 1)
    return xs, ys, px, py


def prepare_image(item_index: int, source: PointingSource, config: BViTConfig, options: PointingOptions) -> PreparedImage:
    """Load one sample, build the model input and the scoring maps (raises SampleError)."""
    item = source.load(item_index)
    w, h = item.image.size
    geometry = CropGeometry(w, h, config.img_size, config.crop_pct)
    tensor = geometry.apply(item.image, config.mean, config.std)
    mask = item.mask if options.frame == "original" else geometry.crop_mask(item.mask)
    target = mask == item.class_id
    distance = distance_to_target(target, options.tolerance)
    ignored = mask == IGNORE_ID if options.ignore == "exclude" else None
    rows, cols = view_region(geometry, options.frame, mask.shape)
    view_target, view_dist = target[rows, cols], distance[rows, cols]
    if not view_target.any():
        raise SampleError("target_outside_view", f"{item.name}: no target pixel inside the model's crop")
    view_hits = within_tolerance(view_dist, options.tolerance)
    if ignored is not None:
        view_hits = view_hits[~ignored[rows, cols]]  # never empty: target pixels are not ignore pixels
    c = config.img_size / 2.0
    _, _, cx, cy = crop_points_to_pixels(np.array([c]), np.array([c]), geometry, options.frame, mask.shape)
    centre_excluded = bool(ignored[cy[0], cx[0]]) if ignored is not None else False
    return PreparedImage(
        index=item_index,
        name=item.name,
        wnid=item.wnid,
        label=item.label,
        tensor=tensor,
        geometry=geometry,
        distance=distance,
        mask_fraction=float(view_target.mean()),
        chance=float(view_hits.mean()),
        centre_hit=bool(within_tolerance(distance[cy[0], cx[0]], options.tolerance)) and not centre_excluded,
        width=w,
        height=h,
        ignored=ignored,
        centre_excluded=centre_excluded,
    )


class _PreparedDataset(Dataset):
    def __init__(self, source: PointingSource, indices: Sequence[int], config: BViTConfig, options: PointingOptions, strict: bool):
        self.source, self.indices, self.config, self.options, self.strict = source, list(indices), config, options, strict

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> PreparedImage | Skipped:
        index = self.indices[i]
        try:
            return prepare_image(index, self.source, self.config, self.options)
        except SampleError as err:
            if self.strict:
                raise
            return Skipped(index, self.source.name(index), err.reason, err.detail)


def _collate(batch: list[PreparedImage | Skipped]) -> list[PreparedImage | Skipped]:
    return batch


# ----------------------------------------------------------------------------- points
def attention_points(
    patch_attn: torch.Tensor, grid: int, patch_size: int, point: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points of maximal attention in crop pixels: (x, y, is_tied) for attention (..., grid*grid).

    ``center`` puts the point at the centre of the argmax patch (first maximum); ``upsample``
    at the centre of the argmax pixel of the bilinearly upsampled map. ``is_tied`` marks
    maps with more than one maximal patch.
    """
    peak = patch_attn.amax(dim=-1, keepdim=True)
    tied = (patch_attn == peak).sum(dim=-1) > 1
    if point == "center":
        idx = patch_attn.argmax(dim=-1)
        row, col = idx // grid, idx % grid
        return (col.double() + 0.5) * patch_size, (row.double() + 0.5) * patch_size, tied
    size = grid * patch_size
    lead = patch_attn.shape[:-1]
    maps = patch_attn.reshape(-1, 1, grid, grid).float()
    up = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False).reshape(-1, size * size)
    idx = up.argmax(dim=-1).reshape(lead)
    return (idx % size).double() + 0.5, (idx // size).double() + 0.5, tied


@torch.no_grad()
def cls_attention(model: BViT, x: torch.Tensor, steps: int | None = None,
                  amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS attention rows (B, L, H, N) of every unrolled layer in fp32, logits (B, C)) for model inputs ``x``.

    The one "images -> CLS attention" step of the pointing game, its overlays and the app.
    """
    with model.capture("attn.cls_pattern", dtype=torch.float32) as cache:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model.forward_head(model.forward_features(x, steps=steps))
    rows = torch.stack([cache["attn.cls_pattern", layer] for layer in cache.layers("attn.cls_pattern")], 1)
    return rows, logits


@dataclass
class AttentionMaps:
    """CLS attention of a model on a few images, in the model's crop frame, scored like the game."""

    indices: list[int]
    names: list[str]
    labels: list[int]
    images: np.ndarray  # (N, S, S, 3) in [0, 1]: the model's input, de-normalised
    masks: np.ndarray  # (N, S, S) bool: target-class pixels
    maps: np.ndarray  # (N, L, H, g, g) attention over patch tokens
    points: np.ndarray  # (N, L, H, 2) argmax point (x, y) in crop pixels
    hits: np.ndarray  # (N, L, H) bool
    preds: list[int]
    confidence: list[float]
    skipped: dict[int, str]
    excluded: np.ndarray | None = None  # (N, L, H) bool: point on an ignore pixel under ignore="exclude"


@torch.no_grad()
def attention_maps(model: BViT, source: PointingSource, indices: Sequence[int],
                   options: PointingOptions = PointingOptions(), device: torch.device | str = "cpu") -> AttentionMaps:
    """Images -> CLS attention -> points -> hits of every step and head, for a few ``source`` images.

    Scored as ``score_model`` scores (``within_tolerance``, TorchRay's strict ``distance < tolerance``;
    tolerance 0 = inside the mask; the first maximal patch), in the model's crop frame whatever
    ``options.frame`` says; unusable samples are listed in ``skipped``.
    """
    cfg = model.config
    opts = replace(options, frame="crop")
    preps, skipped = [], {}
    for i in indices:
        try:
            preps.append(prepare_image(int(i), source, cfg, opts))
        except SampleError as err:
            skipped[int(i)] = f"{err.reason}: {err.detail}"
    if not preps:
        empty = np.zeros((0,))
        return AttentionMaps([], [], [], empty, empty, empty, empty, empty, [], [], skipped)
    g, npt = cfg.grid_size, cfg.num_prefix_tokens
    x = torch.stack([p.tensor for p in preps]).to(device)
    rows, logits = cls_attention(model, x, opts.steps)
    patch = rows[..., npt:].cpu()  # (N, L, H, P)
    xs, ys, _ = attention_points(patch, g, cfg.patch_size, opts.point)
    xs, ys = xs.numpy(), ys.numpy()
    hits = np.zeros(xs.shape, dtype=bool)
    excluded = np.zeros(xs.shape, dtype=bool)
    for n, p in enumerate(preps):
        _, _, px, py = crop_points_to_pixels(xs[n], ys[n], p.geometry, "crop", p.distance.shape)
        hits[n] = within_tolerance(p.distance[py, px], opts.tolerance)
        if p.ignored is not None:
            excluded[n] = p.ignored[py, px]
    hits &= ~excluded
    images = np.stack([denormalize(p.tensor.numpy(), cfg).transpose(1, 2, 0) for p in preps])
    conf, pred = torch.softmax(logits.float(), -1).max(-1)
    return AttentionMaps(
        indices=[p.index for p in preps], names=[p.name for p in preps], labels=[p.label for p in preps],
        images=images.astype(np.float32), masks=np.stack([p.distance == 0 for p in preps]),
        maps=patch.reshape(*patch.shape[:3], g, g).numpy(), points=np.stack([xs, ys], -1), hits=hits,
        preds=pred.tolist(), confidence=conf.tolist(), skipped=skipped, excluded=excluded,
    )


def _any_tie_hits(
    attn: np.ndarray, grid: int, patch_size: int, prep: PreparedImage, frame: str, tol: float
) -> tuple[bool, bool]:
    """(hit, excluded) under the 'any' tie rule: some maximal patch's centre hits (TorchRay's test).

    With ignore pixels excluded, candidates on them are dropped; the map is excluded when none is left.
    """
    cand = np.flatnonzero(attn == attn.max())
    xs, ys = (cand % grid + 0.5) * patch_size, (cand // grid + 0.5) * patch_size
    _, _, px, py = crop_points_to_pixels(xs, ys, prep.geometry, frame, prep.distance.shape)
    hits = within_tolerance(prep.distance[py, px], tol)
    if prep.ignored is not None:
        keep = ~prep.ignored[py, px]
        if not keep.any():
            return False, True
        hits = hits[keep]
    return bool(hits.any()), False


@torch.no_grad()
def score_model(
    model: BViT,
    source: PointingSource,
    options: PointingOptions = PointingOptions(),
    indices: Sequence[int] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = False,
    strict: bool = False,
    progress: bool = True,
    dist_info: DistInfo | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Score ``model`` on ``source``: (points, images, skipped) tables for this process's share.

    points: image_index, step, head, x, y (scoring frame), hit, excluded, prefix_mass, dist_mass.
    images: image_index, name, wnid, label, width, height, mask_fraction, chance, centre_hit, centre_excluded.
    ``excluded`` marks points on ignore pixels under ``ignore="exclude"`` (their ``hit`` is False).
    """
    info = dist_info or DistInfo()
    cfg = model.config
    all_indices = list(range(len(source))) if indices is None else list(indices)
    mine = all_indices[info.rank :: info.world_size]
    loader = DataLoader(
        _PreparedDataset(source, mine, cfg, options, strict),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    grid, ps, npt = cfg.grid_size, cfg.patch_size, cfg.num_prefix_tokens  # [cls, dist?, reg..., patches]
    dist = cfg.dist_token_index
    device = torch.device(device)
    model.eval().to(device)
    points, images, skipped = [], [], []
    bar = tqdm(total=len(mine), desc=f"pointing {cfg.name}", unit="img", disable=not (progress and info.is_main))
    for batch in loader:
        prepared = [b for b in batch if isinstance(b, PreparedImage)]
        skipped.extend(asdict(b) for b in batch if isinstance(b, Skipped))
        bar.update(len(batch))
        if not prepared:
            continue
        x = torch.stack([p.tensor for p in prepared]).to(device)
        rows = cls_attention(model, x, options.steps, amp)[0].transpose(0, 1)  # (L, B, H, N)
        prefix_mass = rows[..., :npt].sum(-1)  # (L, B, H): CLS, distillation token and registers
        dist_mass = rows[..., dist] if dist is not None else torch.full_like(prefix_mass, float("nan"))
        patch_attn = rows[..., npt:]  # the argmax never lands on a prefix token
        xs, ys, tied = attention_points(patch_attn, grid, ps, options.point)
        xs, ys, tied = xs.cpu().numpy(), ys.cpu().numpy(), tied.cpu().numpy()
        mass, dmass = prefix_mass.cpu().numpy(), dist_mass.cpu().numpy()
        n_layers, _, n_heads = xs.shape
        step_idx, head_idx = np.meshgrid(np.arange(1, n_layers + 1), np.arange(n_heads), indexing="ij")
        for b, prep in enumerate(prepared):
            fx, fy, px, py = crop_points_to_pixels(xs[:, b], ys[:, b], prep.geometry, options.frame, prep.distance.shape)
            hit = within_tolerance(prep.distance[py, px], options.tolerance)
            excluded = prep.ignored[py, px] if prep.ignored is not None else np.zeros_like(hit)
            if options.tie == "any" and options.point == "center" and tied[:, b].any():
                attn_np = patch_attn[:, b].cpu().numpy()
                for s, h in zip(*np.nonzero(tied[:, b]), strict=True):
                    hit[s, h], excluded[s, h] = _any_tie_hits(attn_np[s, h], grid, ps, prep, options.frame,
                                                              options.tolerance)
            hit &= ~excluded
            # plain arrays per image, one DataFrame at the end (a frame per image costs as much as its scoring)
            points.append((np.full(step_idx.size, prep.index), step_idx.ravel(), head_idx.ravel(),
                           fx.ravel(), fy.ravel(), hit.ravel(), excluded.ravel(), mass[:, b].ravel(),
                           dmass[:, b].ravel()))
            images.append({
                "image_index": prep.index, "name": prep.name, "wnid": prep.wnid, "label": prep.label,
                "width": prep.width, "height": prep.height, "mask_fraction": prep.mask_fraction,
                "chance": prep.chance, "centre_hit": prep.centre_hit, "centre_excluded": prep.centre_excluded,
            })
    bar.close()
    point_cols = ["image_index", "step", "head", "x", "y", "hit", "excluded", "prefix_mass", "dist_mass"]
    image_cols = ["image_index", "name", "wnid", "label", "width", "height", "mask_fraction", "chance", "centre_hit",
                  "centre_excluded"]
    columns = [np.concatenate(parts) for parts in zip(*points, strict=True)] if points else None
    return (
        pd.DataFrame(dict(zip(point_cols, columns, strict=True))) if columns else pd.DataFrame(columns=point_cols),
        pd.DataFrame(images, columns=image_cols),
        pd.DataFrame(skipped, columns=["index", "name", "reason", "detail"]),
    )


# ----------------------------------------------------------------------------- summaries
def wilson_interval(hits: np.ndarray | int, n: np.ndarray | int, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (vectorised)."""
    hits, n = np.asarray(hits, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = hits / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def _scored(points: pd.DataFrame) -> pd.DataFrame:
    """Points that count: those on ignore pixels under ``ignore="exclude"`` are dropped."""
    return points[~points["excluded"].astype(bool)] if "excluded" in points.columns else points


def _with_class(points: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Scored points joined to their image's class; per model when the tables hold several models."""
    keys = ["model", "image_index"] if "model" in points.columns and "model" in images.columns else ["image_index"]
    return _scored(points).merge(images[[*keys, "wnid"]], on=keys, validate="many_to_one")


def macro_bootstrap(
    class_rates: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over classes of the macro rate, per row of (groups, classes) rates.

    Each resample draws the classes with replacement (``rng.integers(0, C, (samples, C))`` from
    ``np.random.default_rng(seed)``, the same draws for every row) and averages the drawn
    classes' rates; NaN rates (a class with no scored point in that row) are left out of the
    mean. Rows with fewer than two classes get NaN.
    """
    rates = np.atleast_2d(np.asarray(class_rates, dtype=float))
    n_groups, n_classes = rates.shape
    lo, hi = np.full(n_groups, np.nan), np.full(n_groups, np.nan)
    if n_classes == 0:
        return lo, hi
    draws = np.random.default_rng(seed).integers(0, n_classes, size=(samples, n_classes))
    counts = np.zeros((samples, n_classes))
    np.add.at(counts, (np.arange(samples)[:, None], draws), 1.0)
    valid = ~np.isnan(rates)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (np.where(valid, rates, 0.0) @ counts.T) / (valid.astype(float) @ counts.T)  # (groups, samples)
    alpha = (1 - level) / 2
    ok = valid.sum(1) >= 2
    if ok.any():
        lo[ok], hi[ok] = np.nanquantile(boot[ok], [alpha, 1 - alpha], axis=1)
    return lo, hi


def hit_rate_table(
    points: pd.DataFrame, images: pd.DataFrame, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> pd.DataFrame:
    """Step x head hit rates: micro (over images, Wilson 95% interval) and macro (mean of class rates,
    95% percentile bootstrap interval over classes, ``samples`` resamples drawn from ``seed``)."""
    df = _with_class(points, images)
    keys = [k for k in ("model",) if k in df.columns] + ["step", "head"]
    micro = df.groupby(keys)["hit"].agg(n="size", hits="sum").reset_index()
    micro["rate"] = micro["hits"] / micro["n"]
    micro["ci_low"], micro["ci_high"] = wilson_interval(micro["hits"].to_numpy(), micro["n"].to_numpy())
    per_class = df.groupby([*keys, "wnid"])["hit"].mean()
    macro = per_class.groupby(level=list(range(len(keys)))).mean().rename("macro_rate").reset_index()
    # one bootstrap per model, over that model's classes (a (step, head) x class matrix)
    parts = per_class.groupby(level="model", sort=False) if "model" in keys else [(None, per_class)]
    intervals = []
    for _, part in parts:
        wide = part.unstack("wnid")
        lo, hi = macro_bootstrap(wide.to_numpy(), samples, seed)
        intervals.append(pd.DataFrame({"macro_ci_low": lo, "macro_ci_high": hi}, index=wide.index))
    macro = macro.merge(pd.concat(intervals).reset_index(), on=keys)
    return micro.merge(macro, on=keys)


def per_class_table(points: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Hit rate per class, step and head."""
    df = _with_class(points, images)
    keys = [k for k in ("model",) if k in df.columns] + ["wnid", "step", "head"]
    out = df.groupby(keys)["hit"].agg(n="size", hits="sum").reset_index()
    out["rate"] = out["hits"] / out["n"]
    return out


def baseline_table(images: pd.DataFrame) -> pd.DataFrame:
    """Chance (share of view pixels that hit) and centre-point baselines, micro and macro.

    Images whose centre is an excluded ignore pixel (``centre_excluded``) do not count for the centre baseline.
    """
    keys = [k for k in ("model",) if k in images.columns]
    centre = images["centre_hit"].astype(float)
    if "centre_excluded" in images.columns:
        centre = centre.mask(images["centre_excluded"].astype(bool))
    images = images.assign(centre_hit=centre)
    groups = images.groupby(keys) if keys else [((), images)]
    rows = []
    for key, g in groups:
        per_class = g.groupby("wnid")[["chance", "centre_hit", "mask_fraction"]].mean()
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row.update({
            "n": len(g),
            "chance_micro": g["chance"].mean(),
            "chance_macro": per_class["chance"].mean(),
            "centre_micro": g["centre_hit"].mean(),
            "centre_macro": per_class["centre_hit"].mean(),
            "mask_fraction": g["mask_fraction"].mean(),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def step_summary(hit_rates: pd.DataFrame, baselines: pd.DataFrame, average: str = "micro") -> pd.DataFrame:
    """Per step: best head and its rate, mean over heads, chance and centre baselines (Fig. 4a/4b).

    The best head's interval is the Wilson interval of the micro rate, or with ``average="macro"``
    the bootstrap interval over classes of the macro rate (NaN when the table lacks it).
    """
    col = "rate" if average == "micro" else "macro_rate"
    lo_col, hi_col = ("ci_low", "ci_high") if average == "micro" else ("macro_ci_low", "macro_ci_high")
    keys = [k for k in ("model",) if k in hit_rates.columns]
    rows = []
    for key, g in hit_rates.groupby([*keys, "step"]):
        key = key if isinstance(key, tuple) else (key,)
        best = g.loc[g[col].idxmax()]
        row = dict(zip([*keys, "step"], key, strict=True))
        row.update({"best_head": int(best["head"]), "best_rate": float(best[col]),
                    "best_ci_low": float(best.get(lo_col, np.nan)), "best_ci_high": float(best.get(hi_col, np.nan)),
                    "mean_over_heads": float(g[col].mean())})
        rows.append(row)
    out = pd.DataFrame(rows)
    base = baselines.rename(columns={f"chance_{average}": "chance", f"centre_{average}": "centre"})
    cols = [*keys, "chance", "centre"]
    return out.merge(base[cols], on=keys) if keys else out.assign(chance=base["chance"].iloc[0], centre=base["centre"].iloc[0])


@dataclass
class PointingTables:
    """Every table of a pointing game over one or more models (a ``model`` column each)."""

    points: pd.DataFrame
    images: pd.DataFrame
    skipped: pd.DataFrame
    hit_rates: pd.DataFrame
    per_class: pd.DataFrame
    baselines: pd.DataFrame
    summary: pd.DataFrame
    average: str = "micro"


def pointing_tables(
    points: pd.DataFrame, images: pd.DataFrame, skipped: pd.DataFrame, options: PointingOptions, seed: int = 0
) -> PointingTables:
    """The tables of scored points/images (with a ``model`` column): rates, baselines, per-step summary.

    ``seed`` seeds the bootstrap over classes of the macro rates' intervals.
    """
    points = points.copy()
    images = images.copy()
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
