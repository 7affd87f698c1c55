"""The bundled models load and reach the accuracy their checkpoint records (recomputed on a validation subset)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from bvit_interp.data.shapes import ShapesDataset, shapes_for_model
from bvit_interp.data.transforms import eval_transform
from bvit_interp.defaults import BUNDLED, MODELS_DIR, resolve_model
from bvit_interp.evaluation import evaluate_accuracy

SUBSET = 500
PRESENT = [name for name in BUNDLED if (MODELS_DIR / f"{name}.safetensors").exists()]


def test_core_pair_is_bundled() -> None:
    assert {"bvit_tiny", "vit_tiny"} <= set(PRESENT), f"bundled models missing from {MODELS_DIR}"


@pytest.mark.parametrize("name", PRESENT)
def test_bundled_accuracy_matches_record(name: str) -> None:
    torch.set_num_threads(2)
    model = resolve_model(name)
    recorded = json.loads((MODELS_DIR / f"{name}.json").read_text())["metadata"]["bundled_accuracy"]
    ds = Subset(ShapesDataset("val", shapes_for_model(model.config), transform=eval_transform(model.config)),
                range(SUBSET))
    acc, n = evaluate_accuracy(model, DataLoader(ds, batch_size=250))
    assert n == SUBSET
    # identical maths on another CPU may flip an image on a decision boundary: allow one
    assert acc == pytest.approx(recorded[f"val_first_{SUBSET}"], abs=1.0 / SUBSET + 1e-9)
    assert recorded["val_full"] > 0.2  # far above the 10-class chance level of 0.1
    # the subset agrees with the model card's full-validation figure within its binomial spread
    # (3.3 standard errors: a 99.9% two-sided interval)
    p = recorded["val_full"]
    assert abs(acc - p) <= 3.3 * (p * (1 - p) / SUBSET) ** 0.5 + 1e-9, (acc, p)
