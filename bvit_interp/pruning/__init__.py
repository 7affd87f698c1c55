"""Step-masked pruning of the shared block: masks as plain data, masked layers, strategy, RTL procedure.

``masks`` (``StepMasks``), ``masked`` (``StepMaskedLinear``, ``attach_masks``, ``step_masked``,
grafts) and ``strategy`` (magnitude selection) are light; the training procedure lives in
``bvit_interp.pruning.rtl`` and the metrics in ``bvit_interp.analysis.pruning``.
"""

from .masked import (
    StepMaskedLinear,
    attach_masks,
    attached_masks,
    detach_masks,
    grafted,
    make_graft,
    masked_layers,
    set_masks,
    step_masked,
    zero_unused_weights,
)
from .masks import LAYER_TYPES, StepMasks, layer_type, maskable_layers
from .strategy import prune_step_masks

__all__ = [
    "LAYER_TYPES",
    "StepMaskedLinear",
    "StepMasks",
    "attach_masks",
    "attached_masks",
    "detach_masks",
    "grafted",
    "layer_type",
    "make_graft",
    "maskable_layers",
    "masked_layers",
    "prune_step_masks",
    "set_masks",
    "step_masked",
    "zero_unused_weights",
]
