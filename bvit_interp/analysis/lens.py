"""Per-step readout: the final norm + head applied to the CLS state after every step (paper App. B, Fig. 8).

One forward pass of ``max_steps`` recurrent steps records the CLS state after every
unrolled layer (``states.cls_states``); the readout of layer l is exactly the logits
``model(x, steps=l)`` would give (for a bViT, steps beyond the trained horizon T included: Fig. 8 runs 1..2T). For a
ViT the layers are its blocks. Answer flips count how often the argmax changes between
consecutive layers, a measure of how settled the prediction is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..model import BViT
from ..model.hooks import layer_position
from .states import batches, cls_states, readout


@dataclass(frozen=True)
class LensOptions:
    """How far to run: ``max_steps`` recurrent steps (default 2T for a recurrent model, T otherwise)."""

    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def default_max_steps(model: BViT) -> int:
    """2T for a recurrent model (Fig. 8), the trained horizon for a one-step ViT."""
    return 2 * model.config.steps if model.config.is_recurrent else model.config.steps


@torch.no_grad()
def lens_logits(model: BViT, x: torch.Tensor, max_steps: int | None = None) -> torch.Tensor:
    """Readout logits after every unrolled layer of a ``max_steps`` run: (layers, B, C)."""
    return readout(model, cls_states(model, x, default_max_steps(model) if max_steps is None else max_steps))


@torch.no_grad()
def lens_predictions(
    model: BViT,
    loader: DataLoader,
    options: LensOptions = LensOptions(),
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Long table per (image, step): label, pred, correct, confidence (max softmax), p_label."""
    model.eval().to(device)
    max_steps = default_max_steps(model) if options.max_steps is None else options.max_steps
    frames, offset = [], 0
    for x, y in batches(loader, device, desc=f"readout {model.config.name}"):
        probs = lens_logits(model, x, max_steps).float().softmax(-1)
        conf, pred = probs.max(-1)
        layers, n = pred.shape
        frames.append(pd.DataFrame({
            "image": np.tile(np.arange(offset, offset + n), layers),
            "step": np.repeat(np.arange(1, layers + 1), n),
            "label": np.tile(y.cpu().numpy(), layers),
            "pred": pred.cpu().numpy().ravel(),
            "confidence": conf.cpu().numpy().ravel(),
            "p_label": probs.gather(-1, y.expand(layers, n)[..., None])[..., 0].cpu().numpy().ravel(),
        }))
        offset += n
    if not frames:
        raise ValueError("the data loader yielded no images")
    out = pd.concat(frames, ignore_index=True)
    out["correct"] = out["pred"] == out["label"]
    return out


def lens_summary(predictions: pd.DataFrame, model: BViT) -> pd.DataFrame:
    """Per step: accuracy, mean confidence and p(label), flip rate vs the previous step, beyond-horizon flag."""
    wide = predictions.pivot(index="image", columns="step", values="pred").sort_index(axis=1)
    flips = (wide.diff(axis=1) != 0).mean(axis=0)
    out = predictions.groupby("step", as_index=False).agg(
        accuracy=("correct", "mean"), confidence=("confidence", "mean"), p_label=("p_label", "mean"),
        images=("image", "nunique"),
    )
    out["flip_rate"] = out["step"].map(flips).astype(float)
    out.loc[out["step"] == out["step"].min(), "flip_rate"] = np.nan
    horizon = model.num_layers()
    out["beyond_horizon"] = out["step"] > horizon
    out["recurrent_step"] = [layer_position(int(s) - 1, model.num_blocks)[0] + 1 for s in out["step"]]
    return out


def flips_per_image(predictions: pd.DataFrame, horizon: int) -> pd.Series:
    """Number of argmax changes per image within the trained horizon (steps 1..horizon)."""
    inside = predictions[predictions["step"] <= horizon]
    wide = inside.pivot(index="image", columns="step", values="pred").sort_index(axis=1)
    return (wide.diff(axis=1).iloc[:, 1:] != 0).sum(axis=1)


def lens(
    model: BViT,
    loader: DataLoader,
    options: LensOptions = LensOptions(),
    device: torch.device | str = "cpu",
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """(per-step summary, per-image predictions, headline numbers) of the per-step readout."""
    preds = lens_predictions(model, loader, options, device)
    table = lens_summary(preds, model)
    horizon = min(model.num_layers(), int(table["step"].max()))
    inside = table[~table["beyond_horizon"]]
    best = inside.loc[inside["accuracy"].idxmax()]
    flips = flips_per_image(preds, horizon)
    summary = {
        "accuracy_at_horizon": float(table.loc[table["step"] == horizon, "accuracy"].iloc[0]),
        "best_step": int(best["step"]),
        "best_accuracy": float(best["accuracy"]),
        "accuracy_at_last_step": float(table["accuracy"].iloc[-1]),
        "last_step": int(table["step"].iloc[-1]),
        "mean_flips_per_image": float(flips.mean()),
        "never_flip_fraction": float((flips == 0).mean()),
    }
    return table, preds, summary
