"""Image + segmentation sources for localisation analyses: ImageNet-S folders or the procedural shapes set.

Both give ``PointingItem``s with the image, an int32 class-id mask in ImageNet-S convention
(0 = other, 1000 = ignore, target id = label + 1) and the target class, or raise
``SampleError`` for an unusable sample so that callers skip and record it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from ..data.imagenet_s import ImageNetS, SampleError
from ..data.shapes import SHAPE_WNIDS, ShapesConfig, render_sample, sample_label, split_length


@dataclass
class PointingItem:
    image: Image.Image
    mask: np.ndarray  # (H, W) int32 class ids
    class_id: int  # id of the target class inside ``mask``
    label: int  # 0-based class index (the model's output index)
    wnid: str
    name: str


class PointingSource(Protocol):
    categories: list[str]
    description: str

    def __len__(self) -> int: ...

    def name(self, index: int) -> str: ...

    def wnids(self) -> list[str]: ...

    def load(self, index: int) -> PointingItem: ...


class ShapesSource:
    """The shapes validation split rendered in memory (lossless; same ids as its ImageNet-S export)."""

    def __init__(self, config: ShapesConfig | None = None, split: str = "val") -> None:
        self.config = config or ShapesConfig()
        self.split = split
        self.categories = list(SHAPE_WNIDS)
        self.description = f"shapes:{split} (img_size={self.config.img_size}, seed={self.config.seed})"

    def __len__(self) -> int:
        return split_length(self.config, self.split)

    def name(self, index: int) -> str:
        return f"shape_{index:06d}"

    def wnids(self) -> list[str]:
        """Class (wnid) of every image in index order, without rendering any."""
        return [SHAPE_WNIDS[sample_label(self.config, self.split, i)] for i in range(len(self))]

    def load(self, index: int) -> PointingItem:
        s = render_sample(self.config, self.split, index)
        mask = np.where(s.mask, s.label + 1, 0).astype(np.int32)
        return PointingItem(Image.fromarray(s.image), mask, s.label + 1, s.label, SHAPE_WNIDS[s.label], self.name(index))


class ImageNetSSource:
    """An ImageNet-S root (``validation/`` + ``validation-segmentation/``)."""

    def __init__(self, root: str, split: str = "validation") -> None:
        self.dataset = ImageNetS(root, split)
        self.categories = self.dataset.categories
        self.description = f"imagenet-s:{root} ({split})"

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, index: int) -> str:
        s = self.dataset.samples[index]
        return f"{s.wnid}/{s.image_path.name}"

    def wnids(self) -> list[str]:
        """Class folder (wnid) of every listed image in index order, without loading any."""
        return [s.wnid for s in self.dataset.samples]

    def load(self, index: int) -> PointingItem:
        s = self.dataset.samples[index]
        image, mask = self.dataset.load(index)
        return PointingItem(image, mask, s.class_id, s.label, s.wnid, self.name(index))


def open_source(spec: str) -> PointingSource:
    """``shapes`` (optionally ``shapes:IMG_SIZE``) or an ImageNet-S root directory."""
    if spec == "shapes" or spec.startswith("shapes:"):
        size = int(spec.split(":", 1)[1]) if ":" in spec else 32
        return ShapesSource(ShapesConfig(img_size=size))
    return ImageNetSSource(spec)


__all__ = ["ImageNetSSource", "PointingItem", "PointingSource", "SampleError", "ShapesSource", "open_source"]
