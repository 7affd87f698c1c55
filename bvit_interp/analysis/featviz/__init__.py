"""Feature visualization of FFN neurons across recurrent steps (paper Sec. 4.2.1, Fig. 3), organised as lucent.

- ``param``: pixel (Ghiasi et al. 2022) and spectral (Lucid) image parameterizations.
- ``transforms``: jitter, colour shift/scale, annealed noise, ensembles, optional scale/rotate.
- ``objectives``: (neuron, step) targets on ``mlp.post``, the early-stopping batched forward, TV, diversity;
  composable ``Objective`` objects (neuron, channel, head, direction, logit; ``+ - *``, sum).
- ``optimize``: many targets optimised in one batch, independent of batching; ``visualize_objective``
  for any composable objective.
- ``exemplars``: top-k dataset images per (neuron, step) in one pass.
- ``attribution``: captum attributions of a (neuron, step) or (head, step) via the per-step taps
  of ``bvit_interp.model.taps``.
- ``report``: activation reached vs best real image, cross-step activations, spectrum measures,
  per-neuron step dependence of the exemplars (selected vs randomly drawn control neurons).
"""

from ...model.taps import StepTaps
from .attribution import head_attribution, neuron_attribution, step_attribution
from .exemplars import Exemplars, compute_exemplars, load_inputs
from .objectives import (
    Objective,
    Target,
    channel,
    collect_activations,
    direction,
    evaluate,
    head,
    logit,
    neuron,
    neuron_statistic,
    run_layers,
    target_activations,
    total_variation,
)
from .optimize import (
    FeatvizOptions,
    Rendered,
    Visualizations,
    frozen,
    visualize,
    visualize_objective,
)
from .param import PARAMS, make_param
from .report import (
    complexity_trend,
    spectrum_stats,
    step_activations,
    step_complexity,
    step_dependence,
    target_tables,
)
from .transforms import Augment, TransformOptions, denormalize, normalize

__all__ = [
    "Augment",
    "Exemplars",
    "FeatvizOptions",
    "Objective",
    "PARAMS",
    "Rendered",
    "StepTaps",
    "Target",
    "TransformOptions",
    "Visualizations",
    "channel",
    "collect_activations",
    "complexity_trend",
    "compute_exemplars",
    "denormalize",
    "direction",
    "evaluate",
    "frozen",
    "head",
    "head_attribution",
    "load_inputs",
    "logit",
    "make_param",
    "neuron",
    "neuron_attribution",
    "neuron_statistic",
    "normalize",
    "run_layers",
    "spectrum_stats",
    "step_activations",
    "step_attribution",
    "step_complexity",
    "step_dependence",
    "target_activations",
    "target_tables",
    "total_variation",
    "visualize",
    "visualize_objective",
]
