"""Feature visualization of FFN neurons across recurrent steps (paper Sec. 4.2.1, Fig. 3), organised as lucent.

- ``param``: pixel (Ghiasi et al. 2022) and spectral (Lucid) image parameterizations.
- ``transforms``: jitter, colour shift/scale, annealed noise, ensembles, optional scale/rotate.
- ``objectives``: (neuron, step) targets on ``mlp.post``, the early-stopping batched forward, TV, diversity.
- ``optimize``: many targets optimised in one batch, independent of batching.
- ``exemplars``: top-k dataset images per (neuron, step) in one pass.
- ``attribution``: captum attributions of a (neuron, step) or (head, step) via per-step taps.
- ``report``: activation reached vs best real image, cross-step activations, spectrum measures,
  per-neuron step dependence of the exemplars (selected vs randomly drawn control neurons).
"""

from .attribution import StepTaps, head_attribution, neuron_attribution, step_attribution
from .exemplars import Exemplars, compute_exemplars, load_inputs
from .objectives import Target, neuron_statistic, run_layers, target_activations, total_variation
from .optimize import FeatvizOptions, Visualizations, frozen, visualize
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
    "PARAMS",
    "Augment",
    "Exemplars",
    "FeatvizOptions",
    "StepTaps",
    "Target",
    "TransformOptions",
    "Visualizations",
    "complexity_trend",
    "compute_exemplars",
    "denormalize",
    "frozen",
    "head_attribution",
    "load_inputs",
    "make_param",
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
]
