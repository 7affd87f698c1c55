"""The registry of analyses (in the spirit of timm's ``@register_model``): one ``AnalysisSpec`` per analysis.

An analysis has one key, used everywhere: the module ``bvit_interp/analysis/<key>.py`` (or package)
with its plots in ``<key>_plots.py``, the command ``bvit-interp <key with _ -> ->`` (module
``bvit_interp/commands/<key>.py``), the run's ``meta["analysis"]``, the demo's run directory
``<root>/<key>`` and the app page ``app/views/<key>.py`` (or the generic page). ``cli``, ``demo`` and
the app read this registry; nothing else lists analyses. ``register_analysis`` adds one at runtime
(a test or a plugin); old names (``aliases``) keep working as deprecated command names and as
``meta["analysis"]`` values of old runs.

Importing this module imports no command: a spec names its command module as a dotted path.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# demo arguments after the command name (``--out`` is added by the demo): fixed, or made from
# (demo root, available bundled models, first one the default)
DemoArgs = Sequence[str] | Callable[[Path, Sequence[str]], Sequence[str]]

_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis: its key, what it is, where its command lives, how the demo runs it."""

    key: str  # the one name: analysis module, command (``_`` -> ``-``), meta value, demo run, app page
    title: str  # page and demo title
    paper: str  # where in the paper (e.g. "Sec. 4.2.2"), "" when none
    description: str  # one line: the command's help, the page's caption
    module: str  # dotted path of the command module (``add_parser(p)``, ``run(args)``), imported lazily
    quick: DemoArgs = ()  # demo --quick arguments
    full: DemoArgs = ()  # full demo arguments
    cost: float = 0.0  # estimated cost rank: the demo, --help and the app list the cheapest first
    aliases: tuple[str, ...] = ()  # old command names / meta values: deprecated, still accepted
    icon: str = ":material/analytics:"  # app page icon (Material Symbols)
    example: tuple[str, ...] = ()  # arguments shown with the command where the app says how to make a run

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise ValueError(f"analysis key {self.key!r}: use lower-case letters, digits and '_' (a module name)")

    @property
    def command(self) -> str:
        """The subcommand: the key with ``_`` -> ``-``."""
        return self.key.replace("_", "-")

    @property
    def names(self) -> tuple[str, ...]:
        """Every name that means this analysis: key, command, aliases."""
        return tuple(dict.fromkeys((self.key, self.command, *self.aliases)))

    @property
    def help(self) -> str:
        """The command's one-line help: description and paper reference."""
        return f"{self.description} ({self.paper})" if self.paper else self.description

    def load(self) -> ModuleType:
        """The command module (imported now)."""
        return importlib.import_module(self.module)

    def demo_args(self, root: Path, models: Sequence[str], quick: bool) -> list[str]:
        """Demo argv of this analysis: command, its arguments, ``--out <root>/<key>``."""
        args = self.quick if quick else self.full
        made = args(root, models) if callable(args) else args
        return [self.command, *made, "--out", str(Path(root) / self.key)]


_REGISTRY: dict[str, AnalysisSpec] = {}


def register_analysis(spec: AnalysisSpec, replace: bool = False) -> AnalysisSpec:
    """Add ``spec`` (a name clash with another analysis raises ValueError unless ``replace``)."""
    for other in _REGISTRY.values():
        if other.key == spec.key and replace:
            continue
        clash = set(other.names) & set(spec.names)
        if clash:
            raise ValueError(f"analysis {spec.key!r}: name(s) {sorted(clash)} already belong to {other.key!r}")
    _REGISTRY[spec.key] = spec
    return spec


def unregister_analysis(key: str) -> AnalysisSpec | None:
    """Remove an analysis (tests that registered one clean up with this); the removed spec or None."""
    return _REGISTRY.pop(key, None)


def analyses() -> list[AnalysisSpec]:
    """Every registered analysis, cheapest first (registration order among equal costs)."""
    return sorted(_REGISTRY.values(), key=lambda s: s.cost)


def find_analysis(name: object) -> AnalysisSpec | None:
    """The analysis a key, command name or old name (e.g. a run's ``meta["analysis"]``) means, or None."""
    if not isinstance(name, str):
        return None
    if name in _REGISTRY:
        return _REGISTRY[name]
    return next((s for s in _REGISTRY.values() if name in s.names), None)


def get_analysis(name: str) -> AnalysisSpec:
    """Like ``find_analysis``; KeyError naming the known keys when nothing matches."""
    spec = find_analysis(name)
    if spec is None:
        raise KeyError(f"unknown analysis {name!r}; known: {', '.join(s.key for s in analyses())}")
    return spec


def analysis_key(module: str) -> str:
    """The key of the analysis whose command module is ``module`` (a command passes its ``__name__``)."""
    for spec in _REGISTRY.values():
        if spec.module == module:
            return spec.key
    raise KeyError(f"no registered analysis has command module {module!r}")


# --------------------------------------------------------------------------- the toolkit's analyses
# cost: the order of the live demo. The pointing game comes first (the headline page); the rest
# follow their measured laptop-profile times (bench: benchmarks/demo_latency.py; on 2 shared
# cores with other jobs: lens 46 s, pointing 107 s at 500 images, rank 197 s at 300 images, ablation > 800 s at
# 300 images, before the laptop sizes were cut to those below).


def _flags(flag: str, values: Sequence[str]) -> list[str]:
    """``--flag v`` for every value."""
    return [a for v in values for a in (flag, v)]


def _pair(models: Sequence[str]) -> list[str]:
    """``--model`` for the bViT / ViT pair of the bundled models (those present)."""
    return _flags("--model", [m for m in models if m in ("bvit_tiny", "vit_tiny")])


def _demo(*extra: str, limit: str | None = None) -> Callable[[Path, Sequence[str]], list[str]]:
    """Demo arguments: the bViT / ViT pair, ``--limit`` when given, then ``extra``."""
    return lambda root, models: [*_pair(models), *(["--limit", limit] if limit else []), *extra]


def _featviz(quick: bool) -> Callable[[Path, Sequence[str]], list[str]]:
    def args(root: Path, models: Sequence[str]) -> list[str]:
        return ["--model", models[0], "--top", "2" if quick else "3", "--control-random", "2" if quick else "3",
                "--steps", "1", "4", "8", "12", "--iterations", "40" if quick else "200",
                "--copies", "2" if quick else "4", "--exemplars-limit", "300" if quick else "2000"]
    return args


def _pruning(quick: bool) -> Callable[[Path, Sequence[str]], list[str]]:
    # rewinding to the trained bundled weights: from a fresh init the quick preset's CPU
    # budget leaves the model at chance, and masks of an untrained block mean nothing
    return lambda root, models: ["--preset", "quick", "--init-from", models[0], *(["--rounds", "1"] if quick else [])]


def _transfer(quick: bool) -> Callable[[Path, Sequence[str]], list[str]]:
    # quick: the bViT / ViT pair, the four methods that apply, one seed, a few minutes on 2 CPU cores;
    # full: bvit_tiny_te too (time-embedding tuning), three seeds: the README's run (~75 min on 2 CPU cores)
    def args(root: Path, models: Sequence[str]) -> list[str]:
        te = [] if quick else _flags("--model", [m for m in models if m == "bvit_tiny_te"])
        budget = (["--train-limit", "512", "--val-limit", "256", "--epochs", "2", "--seeds", "1"] if quick else
                  ["--train-limit", "1000", "--val-limit", "500", "--epochs", "5", "--seeds", "3"])
        return [*_pair(models), *te, "--data", "shapes-b", *budget]
    return args


for _spec in (
    AnalysisSpec(
        "rank", "Rank (SVD)", "App. A.2",
        "energy ranks of the weights and of the CLS state per step; truncated-SVD accuracy sweeps",
        "bvit_interp.commands.rank", quick=_demo(limit="150"), full=_demo(limit="1000"), cost=3,
        aliases=("svd",), icon=":material/stacked_line_chart:"),
    AnalysisSpec(
        "lens", "Readout (lens)", "App. B, Fig. 8",
        "accuracy of the final readout applied after every step, also beyond the trained horizon",
        "bvit_interp.commands.lens", quick=_demo(limit="300"), full=_demo(limit="1000"), cost=2,
        icon=":material/visibility:"),
    AnalysisSpec(
        "pointing", "Pointing game", "Sec. 4.2.2",
        "does each head's CLS attention point at the object, at every step? (ImageNet-S-style masks)",
        "bvit_interp.commands.pointing", quick=lambda root, models: [*_flags("--model", models), "--limit", "300"],
        full=lambda root, models: _flags("--model", models), cost=1, aliases=("pointing-game",),
        icon=":material/my_location:"),
    AnalysisSpec(
        "ablation", "Ablation", "",
        "accuracy drop when one head is removed at one step (zero / mean), and when a whole step is skipped",
        "bvit_interp.commands.ablation", quick=_demo(limit="100"), full=_demo(limit="1000"), cost=4,
        aliases=("ablate",), icon=":material/grid_off:"),
    AnalysisSpec(
        "trajectories", "Trajectories", "App. E.2",
        "joint PaCMAP embedding of the CLS state of every image at every step",
        "bvit_interp.commands.trajectories", quick=_demo(limit="200"), full=_demo(limit="500"), cost=5,
        icon=":material/timeline:"),
    AnalysisSpec(
        "early_exit", "Early exit", "App. B",
        "exit classifiers on chosen steps: accuracy against compute over confidence thresholds",
        "bvit_interp.commands.early_exit", quick=_demo("--train-limit", "1000", "--epochs", "3", limit="300"),
        full=_demo("--train-limit", "5000", "--epochs", "30", limit="1000"), cost=6, icon=":material/exit_to_app:"),
    AnalysisSpec(
        "featviz", "Feature visualization", "Sec. 4.2.1",
        "optimised images and dataset exemplars of FFN neurons at each step",
        "bvit_interp.commands.featviz", quick=_featviz(True), full=_featviz(False), cost=7,
        icon=":material/palette:"),
    AnalysisSpec(
        "pruning", "Pruning", "Sec. 4.2.3, App. G",
        "step-masked RTL pruning of the shared block: which weights each step uses",
        # the module keeps its old file name until the run-layer work on it is merged
        "bvit_interp.commands.pruning", quick=_pruning(True), full=_pruning(False), cost=8,
        aliases=("prune",), icon=":material/content_cut:", example=("--preset", "quick")),
    AnalysisSpec(
        "causal", "Causal (patching, DLA, probes)", "",
        "activation patching on counterfactual pairs, direct logit attribution, attribution patching and probes "
        "per step and head",
        "bvit_interp.commands.causal", quick=_demo("--probe-limit", "300", limit="8"),
        full=_demo("--probe-limit", "1000", "--ig-steps", "8", limit="64"), cost=9,
        icon=":material/science:", example=("--limit", "8")),
    AnalysisSpec(
        "transfer", "Transfer", "Sec. 4.3, Table 4, App. H",
        "transfer to new targets: linear probe, fine-tuning, LoRA QV / FFN and time-embedding tuning",
        "bvit_interp.commands.transfer", quick=_transfer(True), full=_transfer(False), cost=10,
        icon=":material/swap_horiz:",
        example=("--train-limit", "512", "--val-limit", "256", "--epochs", "2", "--seeds", "1")),
):
    register_analysis(_spec)
del _spec

__all__ = ["AnalysisSpec", "DemoArgs", "analyses", "analysis_key", "find_analysis", "get_analysis",
           "register_analysis", "unregister_analysis"]
