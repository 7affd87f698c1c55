"""Per-step linear probes with control tasks: what the CLS state and the object tokens make linearly readable.

Representations, after every unrolled layer l (the state layer l+1 receives: ``resid_post`` plus
a step's time embedding, ``analysis.states.cls_states``'s definition): ``cls`` (the CLS token) and
``object`` (the mean over the object patches: patches with at least ``min_overlap`` of their area
in the object mask; an item with none uses its patch of largest overlap).

Tasks: ``class`` (the label), ``quadrant`` (of the mask's centroid in the model's crop: 0 top-left,
1 top-right, 2 bottom-left, 3 bottom-right; a centroid on a midline counts as right / bottom)
and ``colour`` (a coarse hue bin of the object's mean colour, from the denormalised crop over
the mask: ``grey`` when the HSV saturation is below 0.2, else six 60-degree hue bins centred
on red 0, yellow 60, green 120, cyan 180, blue 240, magenta 300).

Probes: scikit-learn ``LogisticRegression`` (lbfgs, L2, C=1) on standardised features, fit on a
seeded train split (``test_size`` 0.25) and scored on the rest.

Control tasks (Hewitt & Liang 2019): each task gets a control task with the same label set
whose label is a fixed random function of the item's *type*, seeded. H&L's type is the word,
a property the representation trivially encodes that recurs between train and test and is not
the linguistic label; a random label per value of the task's own label would be a relabelling
of the task (as learnable as the task, so selectivity would vanish by construction). Here an
item's type for a task is the combination of the *other* two attributes: (quadrant, colour)
for class, (class, colour) for quadrant, (class, quadrant) for colour. A probe scores on the
control only by memorising type -> random label, so selectivity = accuracy - control accuracy
is the part of the accuracy that the probe's memorising capacity does not explain.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from ...model import BViT
from .metric import model_device, model_input
from .pairs import DEFAULT_MIN_OVERLAP, patch_overlap

TASKS = ("class", "quadrant", "colour")
REPRESENTATIONS = ("cls", "object")
COLOUR_BINS = ("red", "yellow", "green", "cyan", "blue", "magenta", "grey")
GREY_SATURATION = 0.2


@dataclass(frozen=True)
class ProbeOptions:
    """Probe fitting: train/test split, regularisation, the object-patch threshold and the seed."""

    tasks: tuple[str, ...] = TASKS
    representations: tuple[str, ...] = REPRESENTATIONS
    test_size: float = 0.25
    C: float = 1.0
    max_iter: int = 1000
    min_overlap: float = DEFAULT_MIN_OVERLAP
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS] + [r for r in self.representations if r not in REPRESENTATIONS]
        if bad:
            raise ValueError(f"unknown probe tasks / representations {bad}: tasks {TASKS}, representations {REPRESENTATIONS}")
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size must be in (0, 1), got {self.test_size}")

    def to_dict(self) -> dict[str, object]:
        """Plain dict of the options (run metadata)."""
        return asdict(self)


def colour_bin(rgb: Sequence[float]) -> int:
    """Index into ``COLOUR_BINS`` of an RGB colour in [0, 1]."""
    h, s, _ = colorsys.rgb_to_hsv(*(float(min(max(c, 0.0), 1.0)) for c in rgb))
    if s < GREY_SATURATION:
        return COLOUR_BINS.index("grey")
    return int(((h * 360.0 + 30.0) % 360.0) // 60.0)


def quadrant(mask: np.ndarray) -> int:
    """Quadrant (0 TL, 1 TR, 2 BL, 3 BR) of a boolean mask's centroid; ValueError for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise ValueError("quadrant of an empty mask")
    h, w = mask.shape
    return int(ys.mean() + 0.5 >= h / 2) * 2 + int(xs.mean() + 0.5 >= w / 2)


def probe_targets(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                  std: Sequence[float]) -> pd.DataFrame:
    """Targets per item: class, quadrant, colour (bin index), from model inputs (N, 3, H, W), masks (N, H, W), labels.

    ``mean`` / ``std`` undo the model's normalisation; items with an empty mask raise ValueError.
    """
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    rows = []
    for i, (x, mask) in enumerate(zip(images.cpu().float(), masks.cpu().bool(), strict=True)):
        if not mask.any():
            raise ValueError(f"item {i} has an empty object mask")
        img = (x * s + m).clamp(0, 1)
        rgb = img[:, mask].mean(1).tolist()
        rows.append({"class": int(labels[i]), "quadrant": quadrant(mask.numpy()), "colour": colour_bin(rgb)})
    return pd.DataFrame(rows)


def control_labels(targets: pd.DataFrame, task: str, seed: int = 0) -> np.ndarray:
    """The control task's labels: a seeded random label of ``task``'s label set per item type (the other tasks' values)."""
    others = [t for t in TASKS if t != task]
    values = np.unique(targets[task].to_numpy())
    types = [tuple(r) for r in targets[others].to_numpy().tolist()]
    rng = np.random.default_rng([int(seed), TASKS.index(task)])
    table = {t: int(values[rng.integers(len(values))]) for t in sorted(set(types))}
    return np.array([table[t] for t in types])


@torch.no_grad()
def probe_features(model: BViT, images: torch.Tensor, masks: torch.Tensor, min_overlap: float = DEFAULT_MIN_OVERLAP,
                   batch_size: int = 256) -> dict[str, np.ndarray]:
    """{"cls": (L, N, D), "object": (L, N, D)} float32 states after every unrolled layer (see the module docstring)."""
    model.eval()
    device = model_device(model)
    overlap = patch_overlap(model.config, masks.bool())
    weights = (overlap >= min_overlap).float()
    none = weights.sum(1) == 0
    weights[none, overlap[none].argmax(1)] = 1.0
    weights = weights / weights.sum(1, keepdim=True)  # (N, patches)
    npt = model.num_prefix_tokens
    cls_out, obj_out = [], []
    for lo in range(0, len(images), batch_size):
        x = model_input(model, images[lo : lo + batch_size])
        w = weights[lo : lo + batch_size].to(device=device, dtype=x.dtype)
        h = model.embed(x)
        cls_l, obj_l = [], []
        for layer in range(model.num_layers()):
            h = model.layer(h, layer)
            cls_l.append(h[:, 0].float().cpu())
            obj_l.append(torch.einsum("bp,bpd->bd", w, h[:, npt:]).float().cpu())
        cls_out.append(torch.stack(cls_l))
        obj_out.append(torch.stack(obj_l))
    return {"cls": torch.cat(cls_out, 1).numpy(), "object": torch.cat(obj_out, 1).numpy()}


def _fit_score(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
               options: ProbeOptions) -> float:
    """Test accuracy of a standardised logistic-regression probe (a constant train label: that label)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        return float(np.mean(y_test == y_train[0]))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=options.C, max_iter=options.max_iter))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


def _majority(y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Test accuracy of always answering the train split's most frequent label."""
    values, counts = np.unique(y[train], return_counts=True)
    return float(np.mean(y[test] == values[counts.argmax()]))


def fit_probes(features: dict[str, np.ndarray], targets: pd.DataFrame, options: ProbeOptions = ProbeOptions()) -> pd.DataFrame:
    """Probe accuracy per (representation, task, step) with its control task.

    Columns: representation, task, step (1-based), accuracy, control_accuracy, selectivity
    (accuracy - control), majority and control_majority (test accuracy of the train split's most
    frequent label: chance for the task and for its control), classes, train, test.
    """
    from sklearn.model_selection import train_test_split

    n = len(targets)
    train, test = train_test_split(np.arange(n), test_size=options.test_size, random_state=options.seed)
    rows = []
    for rep in options.representations:
        feats = features[rep]
        if feats.shape[1] != n:
            raise ValueError(f"{rep} features hold {feats.shape[1]} items, targets {n}")
        for task in options.tasks:
            y = targets[task].to_numpy()
            y_ctrl = control_labels(targets, task, options.seed)
            majority, control_majority = _majority(y, train, test), _majority(y_ctrl, train, test)
            for layer in range(feats.shape[0]):
                x = feats[layer]
                acc = _fit_score(x[train], y[train], x[test], y[test], options)
                ctrl = _fit_score(x[train], y_ctrl[train], x[test], y_ctrl[test], options)
                rows.append({"representation": rep, "task": task, "step": layer + 1, "accuracy": acc,
                             "control_accuracy": ctrl, "selectivity": acc - ctrl, "majority": majority,
                             "control_majority": control_majority,
                             "classes": len(np.unique(y)), "train": len(train), "test": len(test)})
    return pd.DataFrame(rows)


def run_probes(model: BViT, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
               options: ProbeOptions = ProbeOptions()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(probe table, targets) for model inputs with object masks (e.g. a ``PairBatch``'s clean side)."""
    targets = probe_targets(images, masks, labels, model.config.mean, model.config.std)
    features = probe_features(model, images, masks, options.min_overlap)
    return fit_probes(features, targets, options), targets


__all__ = ["COLOUR_BINS", "GREY_SATURATION", "REPRESENTATIONS", "TASKS", "ProbeOptions", "colour_bin",
           "control_labels", "fit_probes", "probe_features", "probe_targets", "quadrant", "run_probes"]
