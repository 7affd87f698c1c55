"""What the optimised images achieve: activation reached vs the best real image, at every step,
and how "simple" each image is (spectrum), so claims like "early steps look simpler" are measured.

- ``activation``: the target statistic on the clean (un-augmented) optimised image.
- ``best_real``: the neuron's best statistic over the exemplar images at that step; ``ratio``.
- ``cross_steps``: the same image's statistic for the same neuron at every other step.
- Spectrum of the image's luminance (mean removed): ``hf_energy`` = fraction of the power at
  radial frequencies above ``HF_CUTOFF`` cycles/px (half the Nyquist frequency);
  ``spectral_slope`` = slope of log radially averaged power vs log frequency (natural images
  are near -2; white noise 0; steeper = smoother); ``png_bpp`` = lossless PNG bits per pixel of
  the 8-bit image (a compressibility proxy for visual complexity).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ...model import BViT
from .exemplars import Exemplars
from .objectives import Target, neuron_statistic, run_layers
from .optimize import Visualizations, frozen
from .transforms import normalize

HF_CUTOFF = 0.25
_LUMA = np.array([0.299, 0.587, 0.114])


@torch.no_grad()
def step_activations(
    model: BViT, images: torch.Tensor, neurons: Sequence[int], patches: Sequence[int | None], batch_size: int = 64
) -> torch.Tensor:
    """(M, L): each image's own neuron statistic (mean over patches or at its patch) at every layer."""
    device = next(model.parameters()).device
    npt, n_layers = model.num_prefix_tokens, model.num_layers()
    neuron_t = torch.tensor(list(neurons), device=device)
    patch_t = torch.tensor([-1 if p is None else p for p in patches], device=device)
    out = []
    with frozen(model):
        for s in range(0, images.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            x = normalize(images[sl].to(device=device, dtype=next(model.parameters()).dtype), model.config)
            per_layer = run_layers(model, x, lambda post, sl=sl: neuron_statistic(post, neuron_t[sl], patch_t[sl], npt))
            out.append(torch.stack([per_layer[layer] for layer in range(n_layers)], dim=1).float().cpu())  # type: ignore[misc]
    return torch.cat(out)


def spectrum_stats(images: np.ndarray | torch.Tensor) -> pd.DataFrame:
    """hf_energy, spectral_slope and png_bpp per image of (M, 3, H, W) in [0, 1]."""
    arr = np.asarray(images, dtype=np.float64)
    luma = np.einsum("mchw,c->mhw", arr, _LUMA)
    luma = luma - luma.mean(axis=(1, 2), keepdims=True)
    h, w = luma.shape[1:]
    power = np.abs(np.fft.fft2(luma)) ** 2
    radius = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    nonzero = radius > 0
    total = power[:, nonzero].sum(axis=1)
    hf = power[:, radius > HF_CUTOFF].sum(axis=1) / np.maximum(total, 1e-30)
    rings = np.rint(radius * max(h, w)).astype(int)
    ks = np.arange(1, max(h, w) // 2 + 1)
    ring_power = np.stack([power[:, rings == k].mean(axis=1) for k in ks], axis=1)
    log_p = np.log(np.maximum(ring_power, 1e-30))
    slope = np.polyfit(np.log(ks), log_p.T, 1)[0]
    return pd.DataFrame({"hf_energy": hf, "spectral_slope": slope, "png_bpp": [png_bpp(img) for img in arr]})


def png_bpp(image: np.ndarray) -> float:
    """Bits per pixel of the lossless PNG of an 8-bit (3, H, W) image in [0, 1]."""
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return 8 * buf.tell() / (pixels.shape[0] * pixels.shape[1])


def check_statistic(targets: Sequence[Target], exemplars: Exemplars) -> None:
    """ValueError when the exemplars were ranked by a statistic the targets do not optimise."""
    wrong = {t.statistic for t in targets} - {exemplars.statistic}
    if wrong:
        raise ValueError(f"exemplars ranked by {exemplars.statistic!r} but targets need {sorted(wrong)} "
                         "(mean objective -> 'mean', one-patch objective -> 'max')")


def target_tables(model: BViT, vis: Visualizations, exemplars: Exemplars, batch_size: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(targets, cross_steps): one row per optimised image, and one per (image, evaluated step)."""
    check_statistic(vis.targets, exemplars)
    k, n = vis.images.shape[:2]
    flat = vis.images.reshape(k * n, *vis.images.shape[2:])
    reps = [t for t in vis.targets for _ in range(n)]
    acts = step_activations(model, flat, [t.neuron for t in reps], [t.patch for t in reps], batch_size)
    best = exemplars.values[..., 0]  # (L, F)
    rows, cross = [], []
    for i, t in enumerate(reps):
        reached, real = float(acts[i, t.layer]), float(best[t.layer, t.neuron])
        rows.append({
            "neuron": t.neuron, "step": t.step, "patch": -1 if t.patch is None else t.patch, "image": i % n,
            "activation": reached, "best_real": real, "ratio": reached / real if real > 0 else float("nan"),
            "best_real_image": int(exemplars.indices[t.layer, t.neuron, 0]),
            "final_objective": float(vis.history[i // n, -1]),
        })
        for layer in range(acts.shape[1]):
            real_l = float(best[layer, t.neuron])
            cross.append({"neuron": t.neuron, "step": t.step, "image": i % n, "eval_step": layer + 1,
                          "activation": float(acts[i, layer]), "best_real": real_l,
                          "ratio": float(acts[i, layer]) / real_l if real_l > 0 else float("nan")})
    table = pd.concat([pd.DataFrame(rows), spectrum_stats(flat.numpy())], axis=1)
    return table, pd.DataFrame(cross)


def step_dependence(exemplars: Exemplars, neurons: Sequence[int], steps: Sequence[int],
                    selection: dict[int, str] | None = None) -> pd.DataFrame:
    """Per neuron: how much its preferred real inputs change across ``steps`` (1-based), from the exemplars alone.

    ``spread``: std over the steps of the best real activation (the ``most_variable`` criterion);
    ``exemplar_jaccard``: mean over step pairs of the Jaccard overlap of the top-k exemplar image
    sets (1 = the same images at every step, 0 = disjoint); ``top_changes``: share of consecutive
    step pairs whose top exemplar differs. ``selection`` labels each neuron (e.g. top / random).
    """
    rows = []
    layers = [s - 1 for s in steps]
    for neuron in neurons:
        best = exemplars.values[layers, neuron, 0].double()
        sets = [set(exemplars.indices[layer, neuron].tolist()) for layer in layers]
        pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1 :]]
        tops = [int(exemplars.indices[layer, neuron, 0]) for layer in layers]
        rows.append({
            "neuron": int(neuron),
            "selection": (selection or {}).get(int(neuron), "given"),
            "spread": float(best.std()) if len(layers) > 1 else float("nan"),
            "exemplar_jaccard": float(np.mean([len(a & b) / len(a | b) for a, b in pairs])) if pairs else float("nan"),
            "top_changes": float(np.mean([a != b for a, b in zip(tops[:-1], tops[1:], strict=True)])) if len(tops) > 1 else float("nan"),
        })
    return pd.DataFrame(rows)


def step_complexity(table: pd.DataFrame) -> pd.DataFrame:
    """Per step: mean (and std) of hf_energy, spectral_slope and png_bpp over the optimised images."""
    cols = ["hf_energy", "spectral_slope", "png_bpp", "ratio"]
    g = table.groupby("step")[cols]
    out = g.mean().add_suffix("_mean").join(g.std().add_suffix("_std"))
    out["n"] = table.groupby("step").size()
    return out.reset_index()


def complexity_trend(table: pd.DataFrame) -> dict[str, float]:
    """Spearman correlation of step with each complexity measure over all images (positive = later is more).

    Pearson on average ranks (= Spearman), NaN when either side is constant.
    """
    steps = table["step"].rank()
    out = {}
    for col in ("hf_energy", "spectral_slope", "png_bpp"):
        ranks = table[col].rank()
        constant = steps.nunique() < 2 or ranks.nunique() < 2
        out[col] = float("nan") if constant else float(steps.corr(ranks))
    return out
