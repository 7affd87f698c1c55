"""Pointing sources now live in the data layer (``bvit_interp.data.sources``); re-exported for existing imports."""

from ..data.sources import (
    ImageNetSSource,
    PointingItem,
    PointingSource,
    SampleError,
    ShapesSource,
    class_names,
    open_source,
)

__all__ = ["ImageNetSSource", "PointingItem", "PointingSource", "SampleError", "ShapesSource", "class_names",
           "open_source"]
