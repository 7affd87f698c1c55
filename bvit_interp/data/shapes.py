"""Procedural "shapes" classification dataset with exact object masks (the embedded default).

Why: tiny bViTs must train on a 2-core CPU without downloads, and the pointing game needs
ground-truth object masks. Every image holds one target object (one of ten shape classes
that stay distinct at 32 px) on a cluttered, textured background with distractors that are
not targets (thin line segments and small irregular blobs with object-like contrast).

Rendering: a ``supersample``-times larger canvas is drawn with PIL ImageDraw and
box-downsampled (antialiasing). The object is drawn last through its own coverage canvas,
so the mask is exactly the object's region: supersampled coverage, box-downsampled,
thresholded at 0.5.

Determinism: sample ``i`` of split ``s`` draws only from
``np.random.default_rng([seed, split_id, i])``, so any sample can be generated alone, in any
order, by any worker.

Speed (one core, 32 px, supersample 4, measured on the 2-core build machine while another
process was training on both cores): 1.2-1.6 ms per sample for ``render_sample`` (mean over
2,000 val samples; the spread is the contention), about 1.5 ms per ``ShapesDataset`` item
including the tensor conversion. 64 px: about 2.3 ms; 224 px: about 16 ms (supersample 4).

Val statistics (default config, 2,000 samples): mean mask area fraction 0.092, i.e. the
pointing game's chance level (per class from 0.06 for ell to 0.17 for disk).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

SHAPE_CLASSES: tuple[str, ...] = (
    "disk",
    "ring",
    "square",
    "frame",
    "triangle",
    "plus",
    "cross",
    "half_disk",
    "ell",
    "star",
)
SHAPE_WNIDS: tuple[str, ...] = tuple(f"n99{i:06d}" for i in range(len(SHAPE_CLASSES)))
# Task "b" (the transfer target of issue 18): six other shapes the bundled models never saw,
# drawn by the same generator (same scenes, clutter and masks), distinct at v2's sizes.
SHAPE_CLASSES_B: tuple[str, ...] = ("hexagon", "diamond", "arrow", "crescent", "tee", "bowtie")
SHAPE_WNIDS_B: tuple[str, ...] = tuple(f"n98{i:06d}" for i in range(len(SHAPE_CLASSES_B)))
CLASS_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "a": (SHAPE_CLASSES, SHAPE_WNIDS),
    "b": (SHAPE_CLASSES_B, SHAPE_WNIDS_B),
}
SPLITS: dict[str, int] = {"train": 0, "val": 1}

# Every shape fits in a circle of EXTENT * radius around its centre (see _object_polygons).
_EXTENT = 1.08
_BLOB_TRIES = 8
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# The version of data described without one: metadata and checkpoints written before versions
# were recorded are version 1, whatever DEFAULT_SHAPES_VERSION says later.
UNRECORDED_SHAPES_VERSION = 1


@dataclass(frozen=True)
class ShapesConfig:
    """Everything that determines the shapes dataset; sizes are fractions of ``img_size``."""

    version: int = UNRECORDED_SHAPES_VERSION  # 1: the original 32 px set; 2: small objects anywhere (see SHAPES_VERSIONS)
    classes: str = "a"  # class set: "a" the ten bundled-model classes, "b" six others (transfer target)
    img_size: int = 32
    num_train: int = 50_000  # length of one training "epoch"
    num_val: int = 2_000
    seed: int = 0
    supersample: int = 4
    radius_range: tuple[float, float] = (0.17, 0.28)  # object radius / img_size
    stroke: float = 0.07  # outline width of ring and frame / img_size
    bar_width: float = 0.09  # bar thickness of plus, cross and ell / img_size
    max_rotation: float = 20.0  # degrees; plus and cross use half of it to stay distinct
    min_contrast: float = 0.3  # luminance distance of object / blob colour to local background
    num_lines: tuple[int, int] = (2, 4)  # inclusive range of distractor line segments
    line_width_range: tuple[float, float] = (0.02, 0.045)
    line_length_range: tuple[float, float] = (0.3, 0.8)
    num_blobs: tuple[int, int] = (1, 3)  # inclusive range of distractor blobs
    blob_radius_range: tuple[float, float] = (0.08, 0.13)
    texture_prob: float = 0.3  # probability that the object is striped or noise-modulated
    background_amplitude: tuple[float, float] = (0.15, 0.35)  # low-frequency colour noise
    fine_noise_range: tuple[float, float] = (0.02, 0.06)  # per-pixel noise std
    position_spread: float = 1.0  # 1: object centres uniform over the image; 0: at the centre (curricula)

    def __post_init__(self) -> None:
        """Validate ranges early so that a bad config fails before any rendering."""
        if self.version not in SHAPES_VERSIONS:
            raise ValueError(f"unknown shapes version {self.version}; known: {sorted(SHAPES_VERSIONS)}")
        if self.classes not in CLASS_SETS:
            raise ValueError(f"unknown shapes class set {self.classes!r}; known: {sorted(CLASS_SETS)}")
        if self.img_size < 8:
            raise ValueError(f"img_size must be >= 8, got {self.img_size}")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")
        if self.num_train < 0 or self.num_val < 0:
            raise ValueError("num_train and num_val must be >= 0")
        for name in (
            "radius_range",
            "num_lines",
            "line_width_range",
            "line_length_range",
            "num_blobs",
            "blob_radius_range",
            "background_amplitude",
            "fine_noise_range",
        ):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high")
        if self.radius_range[1] * _EXTENT >= 0.5:
            raise ValueError("radius_range too large: objects must fit inside the image")
        if not 0.0 <= self.texture_prob <= 1.0:
            raise ValueError("texture_prob must be in [0, 1]")
        if not 0.0 <= self.position_spread <= 1.0:
            raise ValueError("position_spread must be in [0, 1]")
        if not 0.0 <= self.min_contrast <= 0.5:
            raise ValueError("min_contrast must be in [0, 0.5]")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists), for run metadata and exports."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def preset(cls, version: int = 0, **overrides: Any) -> ShapesConfig:
        """The config of dataset ``version`` (0: ``DEFAULT_SHAPES_VERSION``) with ``overrides``."""
        version = version or DEFAULT_SHAPES_VERSION
        if version not in SHAPES_VERSIONS:
            raise ValueError(f"unknown shapes version {version}; known: {sorted(SHAPES_VERSIONS)}")
        return cls(**{**SHAPES_VERSIONS[version], **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapesConfig:
        """Inverse of ``to_dict`` (metadata without ``version`` is v1); unknown keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown ShapesConfig fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# Each version's values that differ from the dataclass defaults (= version 1). Version 2
# (issue 14): at 48 px, objects of radius 13-21% of the image (6.2-10 px, about v1's pixel
# size) may sit anywhere, so the image centre is a weak pointing baseline (v1's objects, radius
# 17-28% kept fully inside, always covered the centre): on 600 val images the centre point
# hits 0.133 and chance (mask fraction) is 0.050 (v1: 0.451 and 0.092). Strokes, bars, lines
# and blobs keep v1's sizes in pixels, and the clutter counts grow with the area (2.25x). A
# first try with radius 11-18% (centre 0.092, chance 0.039) left every bViT recipe at chance
# after 32k samples (models/training/levers_v2a.md). A v2 model uses patch
# 6 (an 8 x 8 grid: 64 patch tokens, the same compute as v1's 32 px / patch 4).
SHAPES_VERSIONS: dict[int, dict[str, Any]] = {
    1: {"version": 1},
    2: {
        "version": 2,
        "img_size": 48,
        "radius_range": (0.13, 0.21),
        "stroke": 0.047,
        "bar_width": 0.06,
        "num_lines": (3, 6),
        "line_width_range": (0.013, 0.03),
        "line_length_range": (0.2, 0.55),
        "num_blobs": (2, 5),
        "blob_radius_range": (0.055, 0.09),
    },
}
DEFAULT_SHAPES_VERSION = 1  # what `shapes` means: the version the bundled models were trained on


@dataclass
class ShapeSample:
    """One rendered sample: image (H,W,3 uint8), object mask (H,W bool), label, bbox.

    ``bbox`` is ``(x0, y0, x1, y1)`` in output pixels with exclusive ``x1``/``y1``, the box of
    the mask.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    bbox: tuple[int, int, int, int]
    coverage: np.ndarray | None = None  # (H, W) uint8: the object's antialiased coverage, 0..255


def shapes_for_model(model_config: Any, classes: str | None = None, **overrides: Any) -> ShapesConfig:
    """The shapes data a model was trained on, at its input size.

    Training on shapes records ``{"version", "classes"}`` in the model config's ``extra["shapes"]``;
    a model without that record was trained before versions existed, on version 1 (so changing
    ``DEFAULT_SHAPES_VERSION`` never changes the data an old checkpoint is evaluated on).
    ``classes`` picks another class set of the same data (``"b"``: the transfer target).
    """
    record = dict(getattr(model_config, "extra", {}) or {}).get("shapes") or {}
    version = int(record.get("version", UNRECORDED_SHAPES_VERSION))
    chosen = classes or record.get("classes", "a")
    return ShapesConfig.preset(version, img_size=int(model_config.img_size), classes=chosen, **overrides)


def class_names(config: ShapesConfig) -> tuple[str, ...]:
    """The class names of the config's class set (label i is ``class_names(config)[i]``)."""
    return CLASS_SETS[config.classes][0]


def class_wnids(config: ShapesConfig) -> tuple[str, ...]:
    """The ImageNet-S-style folder names of the config's classes."""
    return CLASS_SETS[config.classes][1]


def split_length(config: ShapesConfig, split: str) -> int:
    """Number of samples of a split (train: one epoch)."""
    _split_id(split)
    return config.num_train if split == "train" else config.num_val


def _split_id(split: str) -> int:
    """Map a split name to the id that seeds its samples; unknown names raise ValueError."""
    try:
        return SPLITS[split]
    except KeyError:
        raise ValueError(
            f"unknown shapes split {split!r}; valid splits: {', '.join(SPLITS)}"
        ) from None


def sample_rng(config: ShapesConfig, split: str, index: int) -> np.random.Generator:
    """The one random generator that sample ``index`` of ``split`` may draw from."""
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return np.random.default_rng([config.seed, _split_id(split), int(index)])


def sample_label(config: ShapesConfig, split: str, index: int) -> int:
    """Label of a sample without rendering it (train: first rng draw; val: balanced)."""
    rng = sample_rng(config, split, index)
    n_cls = len(class_names(config))
    if split == "train":
        return int(rng.integers(n_cls))
    return int(index % n_cls)


def _contrast_colour(rng: np.random.Generator, bg_luma: float, min_contrast: float) -> np.ndarray:
    """Random RGB colour in [0,1] whose luminance is >= min_contrast away from ``bg_luma``."""
    lo, hi = bg_luma - min_contrast, bg_luma + min_contrast
    below = max(lo, 0.0)
    above = max(1.0 - hi, 0.0)
    u = float(rng.random()) * (below + above)
    target = u if u < below else hi + (u - below)
    r, g, b = rng.random(3).tolist()
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    if target > luma:  # mix towards white: luminance is linear in the mix
        t = (target - luma) / max(1.0 - luma, 1e-6)
        rgb = (r + t * (1.0 - r), g + t * (1.0 - g), b + t * (1.0 - b))
    else:  # scale towards black
        f = target / max(luma, 1e-6)
        rgb = (r * f, g * f, b * f)
    return np.array([min(max(v, 0.0), 1.0) for v in rgb], dtype=np.float32)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    """Float RGB in [0,1] -> PIL ink tuple."""
    r, g, b = (min(max(int(v * 255.0 + 0.5), 0), 255) for v in colour.tolist())
    return r, g, b


def _rotate(points: np.ndarray, theta: float, cx: float, cy: float) -> list[tuple[float, float]]:
    """Rotate local (x, y) points by ``theta`` radians and move them to (cx, cy)."""
    c, s = math.cos(theta), math.sin(theta)
    x = points[:, 0] * c - points[:, 1] * s + cx
    y = points[:, 0] * s + points[:, 1] * c + cy
    return list(zip(x.tolist(), y.tolist(), strict=True))


def _draw_object(
    draw: ImageDraw.ImageDraw,
    name: str,
    cx: float,
    cy: float,
    r: float,
    theta: float,
    stroke: float,
    bar: float,
) -> None:
    """Draw the coverage (255 inside, 0 for holes) of shape ``name`` on an "L" canvas.

    All shapes fit within a circle of ``_EXTENT * r`` around (cx, cy).
    """
    if name in ("disk", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if name == "ring":
            ri = r - stroke
            draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    elif name in ("square", "frame"):
        a = 0.76 * r
        sq = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64)
        draw.polygon(_rotate(sq * a, theta, cx, cy), fill=255)
        if name == "frame":
            draw.polygon(_rotate(sq * (a - stroke), theta, cx, cy), fill=0)
    elif name == "triangle":
        ang = np.deg2rad([-90.0, 30.0, 150.0])
        # Shift down by r/4 so that the triangle's box is centred on (cx, cy).
        pts = np.stack([np.cos(ang) * r, np.sin(ang) * r + 0.25 * r], axis=1)
        draw.polygon(_rotate(pts, theta, cx, cy), fill=255)
    elif name in ("plus", "cross"):
        t = bar / 2.0
        if name == "cross":
            theta += math.pi / 4.0
        for arm in ((r, t), (t, r)):
            rect = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64) * arm
            draw.polygon(_rotate(rect, theta, cx, cy), fill=255)
    elif name == "half_disk":
        # Flat side down; the circle centre sits 0.4 r below (cx, cy) so the dome is centred.
        ox, oy = -0.4 * r * math.sin(theta), 0.4 * r * math.cos(theta)
        deg = math.degrees(theta)
        px, py = cx + ox, cy + oy
        draw.pieslice((px - r, py - r, px + r, py + r), 180.0 + deg, 360.0 + deg, fill=255)
    elif name == "ell":
        a = 0.74 * r
        pts = np.array(
            [(-a, -a), (-a + bar, -a), (-a + bar, a - bar), (a, a - bar), (a, a), (-a, a)],
            dtype=np.float64,
        )
        draw.polygon(_rotate(pts, theta, cx, cy), fill=255)
    elif name == "star":
        ang = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], axis=1)
        draw.polygon(_rotate(pts, theta, cx, cy), fill=255)
    elif name == "hexagon":
        ang = np.deg2rad(60.0 * np.arange(6))
        pts = np.stack([np.cos(ang) * r, np.sin(ang) * r], axis=1)
        draw.polygon(_rotate(pts, theta, cx, cy), fill=255)
    elif name == "diamond":  # a rhombus, taller than wide
        pts = np.array([(0.0, -r), (0.6 * r, 0.0), (0.0, r), (-0.6 * r, 0.0)])
        draw.polygon(_rotate(pts, theta, cx, cy), fill=255)
    elif name == "arrow":  # pointing right: shaft + head
        t = bar / 2.0
        pts = np.array([(-r, -t), (0.1 * r, -t), (0.1 * r, -0.7 * r), (r, 0.0), (0.1 * r, 0.7 * r),
                        (0.1 * r, t), (-r, t)])
        draw.polygon(_rotate(pts, theta, cx, cy), fill=255)
    elif name == "crescent":  # a disk minus a shifted disk
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ox, oy = 0.45 * r * math.cos(theta), 0.45 * r * math.sin(theta)
        ri = 0.85 * r
        draw.ellipse((cx + ox - ri, cy + oy - ri, cx + ox + ri, cy + oy + ri), fill=0)
    elif name == "tee":
        t = bar / 2.0
        a = 0.8 * r
        for rect in (((-a, -a), (a, -a + 2 * t)), ((-t, -a), (t, a))):
            (x0, y0), (x1, y1) = rect
            pts = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
            draw.polygon(_rotate(pts, theta, cx, cy), fill=255)
    elif name == "bowtie":  # two triangles meeting at the centre
        a = 0.85 * r
        for sign in (-1.0, 1.0):
            pts = np.array([(0.0, 0.0), (sign * a, -a), (sign * a, a)])
            draw.polygon(_rotate(pts, theta, cx, cy), fill=255)
    else:  # pragma: no cover - CLASS_SETS and this function are edited together
        raise AssertionError(name)


def _background(rng: np.random.Generator, config: ShapesConfig) -> np.ndarray:
    """Cluttered background (n x n x 3 float32 in [0,1]): smooth colour noise + finer texture.

    It is built at output resolution: box-downsampling would average away finer detail anyway.
    """
    n = config.img_size
    base = rng.random(3).astype(np.float32) * 0.6 + 0.2
    amp = rng.uniform(*config.background_amplitude)
    k = int(rng.integers(3, 6))
    low = np.clip(base + amp * 2.0 * (rng.random((k, k, 3), dtype=np.float32) - 0.5), 0, 1)
    m = max(4, n // 4)
    mid = rng.random((m, m, 3), dtype=np.float32)
    sigma = rng.uniform(*config.fine_noise_range)
    fine = rng.standard_normal((n, n, 3), dtype=np.float32) * np.float32(sigma)
    low_up = Image.fromarray((low * 255.0 + 0.5).astype(np.uint8)).resize((n, n), Image.BICUBIC)
    mid_up = Image.fromarray((mid * 255.0 + 0.5).astype(np.uint8)).resize((n, n), Image.BILINEAR)
    bg = np.asarray(low_up, dtype=np.float32) * np.float32(1.0 / 255.0)
    bg += (np.asarray(mid_up, dtype=np.float32) * np.float32(1.0 / 255.0) - 0.5) * np.float32(0.16)
    bg += fine
    return np.clip(bg, 0.0, 1.0, out=bg)


def _local_luma(bg: np.ndarray, cx: float, cy: float, half: float, ss: int) -> float:
    """Mean background luminance in the square of half-size ``half`` around (cx, cy).

    Coordinates are supersampled pixels; ``bg`` is at output resolution.
    """
    n = bg.shape[0]
    x0, x1 = max(int((cx - half) / ss), 0), min(int((cx + half) / ss) + 1, n)
    y0, y1 = max(int((cy - half) / ss), 0), min(int((cy + half) / ss) + 1, n)
    region = bg[y0:y1, x0:x1]
    return float(region.reshape(-1, 3).mean(axis=0) @ _LUMA)


def render_sample(
    config: ShapesConfig, split: str, index: int, *, draw_object: bool = True, label: int | None = None
) -> ShapeSample:
    """Render sample ``index`` of ``split`` ("train" or "val") deterministically.

    ``draw_object=False`` renders the identical scene without the object (same random draws);
    the mask is returned anyway. ``label`` renders the identical scene (background, clutter,
    position, size, rotation, colour, texture) with another object class: every random draw
    is the same, only the drawn shape changes. Both give exact counterfactuals.
    """
    rng = sample_rng(config, split, index)
    names = class_names(config)
    n_cls = len(names)
    drawn = int(rng.integers(n_cls)) if split == "train" else int(index % n_cls)
    if label is None:
        label = drawn
    elif not 0 <= label < n_cls:
        raise ValueError(f"label must be in [0, {n_cls}), got {label}")
    n, ss = config.img_size, config.supersample
    big = n * ss
    scale = float(big)  # fractions of img_size -> supersampled pixels

    bg = _background(rng, config)

    # Object geometry first, so that blobs can keep clear of the object.
    r = rng.uniform(*config.radius_range) * scale
    name = names[label]
    max_rot = config.max_rotation * (0.5 if name in ("plus", "cross") else 1.0)
    theta = math.radians(rng.uniform(-max_rot, max_rot))
    margin = _EXTENT * r + ss
    cx, cy = rng.uniform(margin, scale - margin, size=2)
    if config.position_spread < 1.0:  # same draw, pulled towards the centre
        cx, cy = (scale / 2 + config.position_spread * (v - scale / 2) for v in (cx, cy))

    # Distractors (not targets): thin lines, then small blobs with object-like contrast.
    lines = []
    for _ in range(int(rng.integers(config.num_lines[0], config.num_lines[1] + 1))):
        x0, y0 = rng.random(2) * scale
        length = rng.uniform(*config.line_length_range) * scale
        ang = rng.uniform(0.0, 2.0 * math.pi)
        width = max(1, round(rng.uniform(*config.line_width_range) * scale))
        colour = rng.random(3)
        end = (x0 + length * math.cos(ang), y0 + length * math.sin(ang))
        lines.append(([(x0, y0), end], _rgb(colour), width))
    blobs = []
    for _ in range(int(rng.integers(config.num_blobs[0], config.num_blobs[1] + 1))):
        br = rng.uniform(*config.blob_radius_range) * scale
        # A few tries to place the blob clear of the object (it stays where the last try put it).
        for _try in range(_BLOB_TRIES):
            bx, by = rng.uniform(br, scale - br, size=2)
            if math.hypot(bx - cx, by - cy) > _EXTENT * r + br + ss:
                break
        nv = int(rng.integers(5, 9))
        if rng.random() < 0.5:  # irregular polygon: jittered angles and radii
            ang = np.sort(rng.uniform(0.0, 2.0 * math.pi, nv))
            rad = br * rng.uniform(0.55, 1.0, nv)
        else:  # rotated ellipse
            ang = np.linspace(0.0, 2.0 * math.pi, 16, endpoint=False)
            ax = br * rng.uniform(0.5, 1.0)
            rad = br * ax / np.sqrt((ax * np.cos(ang)) ** 2 + (br * np.sin(ang)) ** 2)
            ang = ang + rng.uniform(0.0, math.pi)
        pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], axis=1)
        colour = _contrast_colour(rng, _local_luma(bg, bx, by, br, ss), config.min_contrast)
        blobs.append((_rotate(pts, 0.0, bx, by), _rgb(colour)))

    # Object appearance.
    bg_luma = _local_luma(bg, cx, cy, r, ss)
    colour = _contrast_colour(rng, bg_luma, config.min_contrast)
    texture = None
    if rng.random() < config.texture_prob:
        amp = rng.uniform(0.12, 0.25) * (1.0 if float(colour @ _LUMA) >= bg_luma else -1.0)
        if rng.random() < 0.5:
            period = rng.uniform(0.12, 0.25) * n * ss
            phi = rng.uniform(0.0, math.pi)
            texture = ("stripes", amp, period, phi)
        else:
            texture = ("noise", amp, rng.random((n, n), dtype=np.float32))

    canvas = Image.fromarray((bg * 255.0 + 0.5).astype(np.uint8))
    if ss > 1:
        canvas = canvas.resize((big, big), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for xy, ink, width in lines:
        draw.line(xy, fill=ink, width=width)
    for xy, ink in blobs:
        draw.polygon(xy, fill=ink)

    cover = Image.new("L", (big, big), 0)
    _draw_object(
        ImageDraw.Draw(cover),
        name,
        cx,
        cy,
        r,
        theta,
        max(1.0, round(config.stroke * scale)),
        max(1.0, round(config.bar_width * scale)),
    )
    if draw_object:
        if texture is None:
            canvas.paste(_rgb(colour), None, cover)
        else:
            x0, y0 = max(int(cx - margin), 0), max(int(cy - margin), 0)
            x1, y1 = min(int(cx + margin) + 2, big), min(int(cy + margin) + 2, big)
            if texture[0] == "stripes":
                _, amp, period, phi = texture
                yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
                phase = (xx * math.cos(phi) + yy * math.sin(phi)) * (2.0 * math.pi / period)
                pattern = (np.sin(phase) > 0).astype(np.float32)
            else:
                _, amp, noise = texture
                if ss > 1:
                    noise = np.repeat(np.repeat(noise, ss, axis=0), ss, axis=1)
                pattern = noise[y0:y1, x0:x1]
            fill = np.clip(colour[None, None, :] + np.float32(amp) * pattern[..., None], 0, 1)
            patch = Image.fromarray((fill * 255.0 + 0.5).astype(np.uint8))
            canvas.paste(patch, (x0, y0), cover.crop((x0, y0, x1, y1)))

    if ss > 1:
        canvas = canvas.resize((n, n), Image.BOX)
        cover = cover.resize((n, n), Image.BOX)
    image = np.asarray(canvas, dtype=np.uint8).copy()
    mask = np.asarray(cover) >= 128
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:
        bbox = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    else:  # cannot happen with the default radii; fall back to the geometric box
        bbox = (
            int((cx - r) / ss),
            int((cy - r) / ss),
            int(math.ceil((cx + r) / ss)),
            int(math.ceil((cy + r) / ss)),
        )
    return ShapeSample(image=image, mask=mask, label=label, bbox=bbox, coverage=np.asarray(cover, dtype=np.uint8).copy())


COUNTERFACTUALS = ("class", "none")


@dataclass
class CounterfactualPair:
    """A clean sample and the same scene with the target object changed (``kind`` "class" or "none").

    ``footprint`` marks every pixel that either object covers even partly (antialiased edges
    included): the two images are identical outside it.
    """

    clean: ShapeSample
    counterfactual: ShapeSample
    kind: str
    footprint: np.ndarray


def counterfactual_label(config: ShapesConfig, split: str, index: int) -> int:
    """The other class of sample ``index``'s "class" counterfactual: uniform over the other nine, seeded."""
    clean = sample_label(config, split, index)
    n_cls = len(class_names(config))
    rng = np.random.default_rng([config.seed, _split_id(split), int(index), 1])
    return int((clean + 1 + rng.integers(n_cls - 1)) % n_cls)


def render_counterfactual(config: ShapesConfig, split: str, index: int, kind: str = "class") -> CounterfactualPair:
    """Sample ``index`` and its exact counterfactual: another object class ("class") or no object ("none").

    Deterministic from (seed, split, index, kind). The counterfactual's ``mask`` is its own
    object's (all False for "none"), its ``label`` the other class (the clean label for "none").
    """
    if kind not in COUNTERFACTUALS:
        raise ValueError(f"counterfactual kind must be one of {COUNTERFACTUALS}, got {kind!r}")
    clean = render_sample(config, split, index)
    if kind == "class":
        other = render_sample(config, split, index, label=counterfactual_label(config, split, index))
    else:
        other = render_sample(config, split, index, draw_object=False)
        other = ShapeSample(other.image, np.zeros_like(other.mask), clean.label, other.bbox,
                            np.zeros_like(other.coverage))
    footprint = (clean.coverage > 0) | (other.coverage > 0)
    return CounterfactualPair(clean, other, kind, footprint)


class ShapesDataset(Dataset):
    """Torch dataset over one split of the shapes data; items render on the fly.

    Items are ``(image, label)`` or, with ``return_mask``, ``(image, label, mask)``. The image is
    a PIL RGB image passed through ``transform`` if given, else a float CHW tensor in [0, 1].
    The mask (torch.bool, H x W) belongs to the untransformed image: use ``return_mask`` only
    with transforms that keep the geometry (e.g. normalisation).
    """

    def __init__(
        self,
        split: str = "train",
        config: ShapesConfig | None = None,
        transform: Any = None,
        return_mask: bool = False,
    ) -> None:
        """Store the split and config; nothing is rendered until an item is requested."""
        _split_id(split)
        self.split = split
        self.config = config if config is not None else ShapesConfig()
        self.transform = transform
        self.return_mask = return_mask
        self.classes: list[str] = list(class_names(self.config))
        self.wnids: list[str] = list(class_wnids(self.config))
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self._targets: list[int] | None = None

    def __len__(self) -> int:
        """Number of samples in the split (train: one epoch)."""
        return split_length(self.config, self.split)

    def _check_index(self, index: int) -> int:
        """Normalise a (possibly negative) index and raise IndexError when out of range."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for shapes {self.split} (len {n})")
        return index

    def sample(self, index: int) -> ShapeSample:
        """The raw rendered sample (numpy image and mask, label, bbox)."""
        return render_sample(self.config, self.split, self._check_index(index))

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        """Render one item: (image, label) or (image, label, mask)."""
        s = self.sample(index)
        img = Image.fromarray(s.image)
        if self.transform is not None:
            x = self.transform(img)
        else:
            x = torch.from_numpy(s.image).permute(2, 0, 1).float().div_(255.0)
        if self.return_mask:
            return x, s.label, torch.from_numpy(s.mask)
        return x, s.label

    @property
    def targets(self) -> list[int]:
        """Labels of all samples, computed once without rendering (cheap for both splits)."""
        if self._targets is None:
            self._targets = [sample_label(self.config, self.split, i) for i in range(len(self))]
        return self._targets


def chance_level(
    config: ShapesConfig | None = None, split: str = "val", n: int | None = None
) -> float:
    """Mean object-mask area fraction over the first ``n`` samples (default: whole split).

    This is the pointing-game hit rate of a uniformly random point.
    """
    config = config if config is not None else ShapesConfig()
    total = split_length(config, split) if n is None else n
    if total <= 0:
        raise ValueError("chance_level needs at least one sample")
    fractions = [float(render_sample(config, split, i).mask.mean()) for i in range(total)]
    return float(np.mean(fractions))
