"""ImageNet-S reading (images + semantic masks) and the mask encoding used by exports.

Why: the pointing game scores "argmax of CLS attention lands inside the target-class mask"
on ImageNet-S (paper App. F). Layout::

    ROOT/validation/<wnid>/<name>.JPEG
    ROOT/validation-segmentation/<wnid>/<name>.png      RGB; class id = R + 256 * G
    ROOT/ImageNetS_categories_im<N>.txt                 one wnid per line (optional)
    ROOT/ImageNetS_im<N>_validation.txt                 image list (optional)

Mask ids: 0 = other/background, 1000 = ignore, k >= 1 = the k-th category (1-based).

Category order (class id k = k-th wnid): the official ImageNet-S README says the class id
"is obtained by sorting the imagenet tag id", and its evaluation code names the classes in
sorted-wnid order, while the repository's ``ImageNetS_categories_im919.txt`` is *not*
sorted. So official ``ImageNetS_categories_im*.txt`` files are sorted by default here;
a plain ``categories.txt`` is read in file order (line k -> class id k + 1). Shapes exports
write wnids that are already sorted, so both readings agree for them.

Without a categories file, a folder's sorted position says nothing reliable (one stray
folder, or a subset of the classes, shifts every id), so each wnid folder's class id is
read from its own masks: the id (other than 0 and 1000) that its masks share. Two folders
claiming one id, or a folder whose masks leave several candidates, are errors asking for a
categories file; a folder whose masks give no id at all (none, or unreadable) is not a
category and its images are skipped as ``unknown_wnid``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

OTHER_ID = 0
IGNORE_ID = 1000
MAX_ID = 255 + 256 * 255  # largest id that R + 256 * G can hold
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
CATEGORY_ORDERS = ("sorted", "file")
_DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)

# Reasons a sample cannot be used; callers skip the sample and record the reason.
SAMPLE_ERROR_REASONS = (
    "unknown_wnid",
    "missing_image",
    "missing_mask",
    "corrupt_image",
    "corrupt_mask",
    "size_mismatch",
    "empty_target",
)


class SampleError(Exception):
    """A sample that cannot be scored; ``reason`` is one of ``SAMPLE_ERROR_REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        """Keep a machine-readable reason and a human-readable detail (usually the path)."""
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class ImageNetSSample:
    """One listed image: paths, its folder wnid, mask class id (1-based) and label (0-based).

    ``class_id`` and ``label`` are -1 when the wnid is not among the categories.
    """

    image_path: Path
    mask_path: Path
    wnid: str
    class_id: int
    label: int


def decode_mask(png: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """Class-id map (H, W int32) of an ImageNet-S mask: id = R + 256 * G, computed in int32.

    RGB(A) and palette images use the R + 256 * G rule; single-channel images ("L", "I",
    "I;16") and 2-D arrays are taken as ids directly.
    """
    if isinstance(png, np.ndarray):
        arr = png
    else:
        img = png if isinstance(png, Image.Image) else Image.open(png)
        if img.mode in ("L", "I", "I;16", "I;16L", "I;16B"):
            return np.asarray(img).astype(np.int32)
        arr = np.asarray(img.convert("RGB"))
    if arr.ndim == 2:
        return arr.astype(np.int32)
    if arr.ndim != 3 or arr.shape[2] < 2:
        raise ValueError(f"expected an (H, W) id map or (H, W, 3) RGB mask, got shape {arr.shape}")
    return arr[:, :, 0].astype(np.int32) + 256 * arr[:, :, 1].astype(np.int32)


def encode_mask(ids: np.ndarray) -> np.ndarray:
    """RGB mask (H, W, 3 uint8) for a class-id map: R = id % 256, G = id // 256, B = 0."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"expected an (H, W) id map, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer) and ids.dtype != np.bool_:
        raise ValueError(f"class ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_ID):
        raise ValueError(f"class ids must be in [0, {MAX_ID}], got [{ids.min()}, {ids.max()}]")
    out = np.zeros((*ids.shape, 3), dtype=np.uint8)
    out[:, :, 0] = ids % 256
    out[:, :, 1] = ids // 256
    return out


def target_mask(mask: np.ndarray, class_id: int) -> np.ndarray:
    """Boolean mask of the pixels that belong to ``class_id``."""
    return np.asarray(mask) == class_id


def resize_mask_nearest(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map to ``size`` = (height, width) or square.

    Pure NumPy (no interpolation can ever mix ids), same sampling as PIL's NEAREST:
    output pixel i reads input pixel floor((i + 0.5) * in / out).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    in_h, in_w = mask.shape
    rows = np.minimum(((np.arange(out_h) + 0.5) * (in_h / out_h)).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (in_w / out_w)).astype(np.int64), in_w - 1)
    return mask[rows[:, None], cols[None, :]]


def _read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a text file, first whitespace-separated column only."""
    lines = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            lines.append(parts[0])
    return lines


def _require_root(root: Path, split: str) -> Path:
    """The split's image folder; FileNotFoundError naming the path when it is missing."""
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet-S root not found: {root}")
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet-S {split} folder not found: {folder} "
            f"(expected {root}/{split}/<wnid>/<name>.JPEG)"
        )
    return folder


def categories_file(root: str | os.PathLike) -> Path | None:
    """The root's ``ImageNetS_categories_im*.txt`` or ``categories.txt``, if it has one."""
    root = Path(root)
    official = sorted(root.glob("ImageNetS_categories_im*.txt"))
    if official:
        return official[0]
    plain = root / "categories.txt"
    return plain if plain.is_file() else None


def load_categories(
    root: str | os.PathLike, split: str = "validation", order: str | None = None
) -> list[str]:
    """Wnids in class-id order (index k -> class id k + 1).

    Reads ``ImageNetS_categories_im*.txt`` (sorted by default, the official convention) or
    ``categories.txt`` (file order by default); ``order`` ("sorted" or "file") overrides.
    Without a file, falls back to the sorted wnid folders under ``root/<split>`` (right only
    when the folders are exactly the full category set; ``ImageNetS`` reads ids from the masks instead).
    """
    if order is not None and order not in CATEGORY_ORDERS:
        raise ValueError(f"unknown category order {order!r}; valid: {', '.join(CATEGORY_ORDERS)}")
    root = Path(root)
    found = categories_file(root)
    if found is not None:
        wnids = _read_lines(found)
        default = "sorted" if found.name.startswith("ImageNetS_categories_im") else "file"
        return sorted(wnids) if (order or default) == "sorted" else wnids
    folder = _require_root(root, split)
    return sorted(d.name for d in folder.iterdir() if d.is_dir())


MASKS_READ_PER_FOLDER = 5  # at most this many masks per folder are decoded to find its class id


def _mask_class_ids(path: Path) -> set[int] | None:
    """Class ids (not other / ignore) present in a mask file, or None when it cannot be read."""
    try:
        with Image.open(path) as m:
            ids = decode_mask(m)
    except _DECODE_ERRORS:
        return None
    return set(np.unique(ids).tolist()) - {OTHER_ID, IGNORE_ID}


def class_ids_from_masks(root: str | os.PathLike, split: str, entries: list[str]) -> dict[str, int]:
    """wnid -> class id read from each folder's masks, for a root without a categories file.

    A folder's candidates are the ids all of its first masks share (up to
    ``MASKS_READ_PER_FOLDER``); an id already owned by another folder is then ruled out.
    Folders left without any id are absent from the result (not categories). ValueError
    names the folders when two claim one id or one keeps several candidates.
    """
    root = Path(root)
    mask_root = root / f"{split}-segmentation"
    by_folder: dict[str, list[str]] = {}
    for rel in entries:
        parts = Path(rel).parts
        if len(parts) > 1:
            by_folder.setdefault(parts[0], []).append(rel)
    candidates: dict[str, set[int]] = {}
    for wnid, rels in by_folder.items():
        common: set[int] | None = None
        read = 0
        for rel in rels:
            path = (mask_root / rel).with_suffix(".png")
            ids = _mask_class_ids(path) if path.is_file() else None
            if ids is None:
                continue
            common = ids if common is None else common & ids
            read += 1
            if len(common) <= 1 or read >= MASKS_READ_PER_FOLDER:
                break
        candidates[wnid] = common or set()
    resolved = {w: next(iter(c)) for w, c in candidates.items() if len(c) == 1}
    changed = True
    while changed:  # a mask that also holds another folder's class: rule that class out
        changed = False
        taken = set(resolved.values())
        for wnid, cands in candidates.items():
            left = cands - taken
            if wnid not in resolved and len(cands) > 1 and len(left) == 1:
                resolved[wnid] = left.pop()
                changed = True
    hint = (f"add {root}/categories.txt (one wnid per line; line k is class id k) or the official "
            "ImageNetS_categories_im*.txt")
    owners: dict[int, list[str]] = {}
    for wnid, k in resolved.items():
        owners.setdefault(k, []).append(wnid)
    clashes = sorted((k, sorted(ws)) for k, ws in owners.items() if len(ws) > 1)
    if clashes:
        k, ws = clashes[0]
        raise ValueError(f"{root} has no categories file, so each folder's class id is read from its masks, and "
                         f"the masks of folders {' and '.join(ws)} all carry class id {k}; {hint}")
    unsure = sorted(w for w, c in candidates.items() if w not in resolved and len(c) > 1)
    if unsure:
        w = unsure[0]
        raise ValueError(f"{root} has no categories file, so each folder's class id is read from its masks, and "
                         f"the masks of folder {w} carry several class ids {sorted(candidates[w])}; {hint}")
    return resolved


def _list_entries(root: Path, split: str) -> list[str] | None:
    """Relative image paths (``wnid/name.ext``) from the official list file, if there is one.

    Lines may carry extra columns (the official mapping files read ``SRC DST``): the first
    column that names an existing file under ``root/<split>`` wins, else the last column of
    the form ``wnid/name``.
    """
    candidates = sorted(root.glob(f"ImageNetS_im*_{split}.txt"))
    if not candidates:
        return None
    folder = root / split
    entries = []
    for line in candidates[0].read_text().splitlines():
        cols = line.split()
        if not cols or cols[0].startswith("#"):
            continue
        chosen = next((c for c in cols if (folder / c).is_file()), None)
        if chosen is None:
            shaped = [c for c in cols if len(Path(c).parts) == 2]
            chosen = shaped[-1] if shaped else cols[0]
        entries.append(chosen)
    return entries


class ImageNetS:
    """Index of an ImageNet-S split: image/mask pairs with their target class.

    Images whose mask is missing are still listed; ``load`` raises ``SampleError`` for them
    (and for every other unusable sample) so that callers can skip and record.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "validation",
        categories: list[str] | None = None,
    ) -> None:
        """Scan ``root/<split>`` (or its list file) and pair images with masks."""
        self.root = Path(root)
        self.split = split
        folder = _require_root(self.root, split)
        self.mask_root = self.root / f"{split}-segmentation"
        entries = _list_entries(self.root, split)
        if entries is None:
            entries = [
                f"{d.name}/{f.name}"
                for d in sorted(p for p in folder.iterdir() if p.is_dir())
                for f in sorted(d.iterdir())
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
            ]
        if not entries:
            raise ValueError(f"no images found in {folder} (expected {folder}/<wnid>/<name>.JPEG)")
        # True when class ids were read from the masks (no categories given and no categories file)
        self.ids_from_masks = categories is None and categories_file(self.root) is None
        if categories is not None:
            self.categories: list[str] = list(categories)
        elif self.ids_from_masks:
            ids = class_ids_from_masks(self.root, split, entries)
            self.categories = [""] * max(ids.values(), default=0)
            for wnid, k in ids.items():
                self.categories[k - 1] = wnid
        else:
            self.categories = load_categories(self.root, split)
        index = {w: i for i, w in enumerate(self.categories) if w}
        self.samples: list[ImageNetSSample] = []
        for rel in entries:
            rel_path = Path(rel)
            wnid = rel_path.parts[0] if len(rel_path.parts) > 1 else ""
            label = index.get(wnid, -1)
            self.samples.append(
                ImageNetSSample(
                    image_path=folder / rel_path,
                    mask_path=(self.mask_root / rel_path).with_suffix(".png"),
                    wnid=wnid,
                    class_id=label + 1 if label >= 0 else -1,
                    label=label,
                )
            )

    def __len__(self) -> int:
        """Number of listed images (usable or not)."""
        return len(self.samples)

    @property
    def missing_masks(self) -> list[int]:
        """Indices of samples whose mask file does not exist (checked now)."""
        return [i for i, s in enumerate(self.samples) if not s.mask_path.is_file()]

    def load(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """Image (PIL RGB) and class-id mask (int32) of sample ``i``; SampleError if unusable."""
        s = self.samples[i]
        if s.label < 0:
            why = " (no categories file, and its folder's masks give no class id)" if self.ids_from_masks else ""
            raise SampleError("unknown_wnid", f"{s.wnid!r} of {s.image_path} is not a category{why}")
        if not s.image_path.is_file():
            raise SampleError("missing_image", str(s.image_path))
        if not s.mask_path.is_file():
            raise SampleError("missing_mask", str(s.mask_path))
        try:
            with Image.open(s.image_path) as im:
                image = im.convert("RGB")
        except _DECODE_ERRORS as err:
            raise SampleError("corrupt_image", f"{s.image_path}: {err}") from err
        try:
            with Image.open(s.mask_path) as m:
                mask = decode_mask(m)
        except _DECODE_ERRORS as err:
            raise SampleError("corrupt_mask", f"{s.mask_path}: {err}") from err
        if mask.shape != (image.height, image.width):
            raise SampleError(
                "size_mismatch",
                f"mask {mask.shape[1]}x{mask.shape[0]} vs image {image.width}x{image.height}: "
                f"{s.mask_path}",
            )
        if not (mask == s.class_id).any():
            raise SampleError(
                "empty_target", f"class id {s.class_id} ({s.wnid}) absent from {s.mask_path}"
            )
        return image, mask
