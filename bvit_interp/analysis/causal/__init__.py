"""Causal analysis across steps (issue 19): pairs, activation patching, DLA, attribution patching, probes.

- ``pairs``: clean / corrupted pairs (shapes counterfactuals, Gaussian-noise causal tracing, pairs
  files) and their per-pair token groups (CLS / dist / registers / object / other patches).
- ``metric``: the normalised logit difference (1 clean, 0 corrupted) and bootstrap summaries.
- ``activation``: activation patching over (direction, site, step, head, token group), resumed
  from the patched layer; ``patching_cost`` against the naive loop.
- ``dla``: direct logit attribution with the final norm's scale frozen, and path patching of each
  head to the readout only (direct vs total effect).
- ``attribution``: attribution patching (gradient x activation difference) in one forward-backward,
  its Spearman agreement with exact patching, and captum's layer methods through the step taps.
- ``probes``: per-step logistic-regression probes on CLS and object tokens with control tasks.

Figures live in ``bvit_interp.analysis.causal_plots``; definitions and decisions in docs/causal.md.
"""

from .activation import (
    ALL_HEADS,
    DEFAULT_SITES,
    DIRECTIONS,
    KEYS,
    GroupPatch,
    PatchingOptions,
    activation_patching,
    patching_cost,
    step_head_matrix,
)
from .attribution import (
    CAPTUM_METHODS,
    AttributionOptions,
    attribution_cost,
    attribution_patching,
    captum_attribution,
    rank_correlation,
)
from .dla import decompose, direct_effects, direct_logit_attribution, dla_by_step, frozen_scale
from .metric import PairRuns, logit_difference, normalise, pair_runs, summarise
from .pairs import (
    ALL,
    GROUPS,
    NO_CLASS,
    PairBatch,
    counterfactual_pairs,
    file_pairs,
    group_names,
    noise_pairs,
    token_groups,
)
from .probes import (
    COLOUR_BINS,
    TASKS,
    ProbeOptions,
    fit_probes,
    probe_features,
    probe_targets,
    run_probes,
)

__all__ = [
    "ALL",
    "ALL_HEADS",
    "CAPTUM_METHODS",
    "COLOUR_BINS",
    "DEFAULT_SITES",
    "DIRECTIONS",
    "GROUPS",
    "KEYS",
    "NO_CLASS",
    "TASKS",
    "AttributionOptions",
    "GroupPatch",
    "PairBatch",
    "PairRuns",
    "PatchingOptions",
    "ProbeOptions",
    "activation_patching",
    "attribution_cost",
    "attribution_patching",
    "captum_attribution",
    "counterfactual_pairs",
    "decompose",
    "direct_effects",
    "direct_logit_attribution",
    "dla_by_step",
    "file_pairs",
    "fit_probes",
    "frozen_scale",
    "group_names",
    "logit_difference",
    "noise_pairs",
    "normalise",
    "pair_runs",
    "patching_cost",
    "probe_features",
    "probe_targets",
    "rank_correlation",
    "run_probes",
    "step_head_matrix",
    "summarise",
    "token_groups",
]
