"""Early exit on a frozen bViT / ViT (paper App. B, Table 5).

Shallow internal classifiers (a norm + linear head on the CLS state, initialised from the
model's own final norm and head) are attached to chosen steps of a frozen model and trained
on cached CLS features with cross-entropy plus the CE-AUROC confidence term of Eq. 10. At
inference a sample stops at the first exit whose confidence (max softmax probability)
exceeds the threshold tau; samples that never exit run the full model and take its logits,
so tau = 1.0 (a probability never exceeds 1) is the full model exactly.

Eq. 10 as implemented (our copy of the paper lost the formula; the text defines its parts):
for exit k with logits z, confidence c = max softmax(z), P / N the correctly / incorrectly
classified samples of the batch,
    L_k = CE(z, y) + lambda * 1/(|P||N|) * sum_{p in P, n in N} sigmoid(s * (c_n - c_p)),
a differentiable surrogate of 1 - AUROC of the confidence as a correctness detector
(lambda = ``auroc_weight``, s = ``auroc_scale``; the term is 0 when P or N is empty).

FLOPs are counted analytically from the config (2 FLOPs per multiply-add): patch embedding,
qkv / proj / FFN linears and the heads evaluated. By default the two attention matmuls
(scores and weighted sum) are left out, the paper's convention: ViT-B/16 at 224 px counts
33.70 GFLOPs, the value in its Table 5. ``include_attention=True`` (``--include-attention``)
adds them (ViT-B/16: 35.1 GFLOPs). Exit heads train for 50 epochs by default (App. B).
Time per image is measured around the model calls only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..model import BViT, BViTConfig
from .states import batches, collect_cls_states, readout

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class EarlyExitOptions:
    """Where the exits sit, how they are trained, which thresholds are swept."""

    exits: tuple[int, ...] | None = None  # 1-based steps (layers); default: every step before the last
    epochs: int = 50  # paper App. B: exit classifiers trained for 50 epochs
    lr: float = 1e-3
    batch_size: int = 256
    auroc_weight: float = 1.0  # lambda of Eq. 10
    auroc_scale: float = 1.0  # s in sigmoid(s * (c_n - c_p))
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    include_attention: bool = False  # paper's GFLOPs leave the attention matmuls out (ViT-B: 33.70)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# ----------------------------------------------------------------------------- FLOPs
def embed_flops(config: BViTConfig) -> float:
    """Patch-embedding convolution FLOPs per image."""
    return 2.0 * config.num_patches * config.in_chans * config.patch_size**2 * config.embed_dim


def layer_flops(config: BViTConfig, include_attention: bool = False) -> float:
    """FLOPs of one block application per image: qkv, proj, FFN (+ attention scores and weighted sum if asked)."""
    n, d = config.num_patches + config.num_prefix_tokens, config.embed_dim
    hidden = int(d * config.mlp_ratio)
    linear = 2.0 * n * d * (3 * d + d + 2 * hidden)
    return linear + (4.0 * n * n * d if include_attention else 0.0)


def head_flops(config: BViTConfig) -> float:
    """Linear classifier FLOPs per image (the final head and each exit head)."""
    return 2.0 * config.embed_dim * config.num_classes


def flops_per_image(config: BViTConfig, layers: float | None = None, include_attention: bool = False) -> float:
    """FLOPs of embedding + ``layers`` block applications (default: the whole network) + the head."""
    n_layers = config.depth if layers is None else layers
    return embed_flops(config) + n_layers * layer_flops(config, include_attention) + head_flops(config)


# ----------------------------------------------------------------------------- exit heads
class ExitHeads(nn.Module):
    """One norm + linear classifier per exit layer (0-based), initialised from the model's final norm and head."""

    def __init__(self, model: BViT, layers: Sequence[int]) -> None:
        super().__init__()
        last = model.num_layers()
        self.layers = tuple(sorted(int(layer) for layer in layers))
        if not self.layers or any(not 0 <= layer < last - 1 for layer in self.layers):
            raise ValueError(f"exit steps must lie in 1..{last - 1} (the last step uses the model's head), got "
                             f"{[layer + 1 for layer in self.layers]}")
        self.heads = nn.ModuleDict({
            str(layer): nn.Sequential(copy.deepcopy(model.norm), copy.deepcopy(model.head)) for layer in self.layers
        })
        self.heads.requires_grad_(True)

    def forward(self, cls: torch.Tensor, layer: int) -> torch.Tensor:
        """Logits of the exit at ``layer`` for CLS states (B, D)."""
        return self.heads[str(layer)](cls)


def ce_auroc_loss(
    logits: torch.Tensor, labels: torch.Tensor, auroc_weight: float = 1.0, auroc_scale: float = 1.0
) -> torch.Tensor:
    """Cross-entropy + lambda * mean over (correct p, incorrect n) pairs of sigmoid(s * (c_n - c_p)) (Eq. 10)."""
    ce = F.cross_entropy(logits, labels)
    conf = logits.softmax(-1).max(-1).values
    correct = logits.argmax(-1) == labels
    pos, neg = conf[correct], conf[~correct]
    if auroc_weight == 0 or len(pos) == 0 or len(neg) == 0:
        return ce
    return ce + auroc_weight * torch.sigmoid(auroc_scale * (neg[None, :] - pos[:, None])).mean()


def train_exit_heads(
    heads: ExitHeads,
    features: torch.Tensor,
    labels: torch.Tensor,
    options: EarlyExitOptions = EarlyExitOptions(),
    seed: int = 0,
) -> pd.DataFrame:
    """Train the exit heads in place on cached CLS features (exits, N, D); returns the loss per epoch and exit."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    device = features.device
    heads.train().to(device)
    opt = torch.optim.Adam(heads.parameters(), lr=options.lr)
    n = features.shape[1]
    history = []
    for epoch in tqdm(range(options.epochs), desc="exit heads", unit="epoch"):
        order = torch.randperm(n, generator=g).to(device)
        sums = torch.zeros(len(heads.layers), dtype=torch.float64)
        for start in range(0, n, options.batch_size):
            idx = order[start : start + options.batch_size]
            losses = torch.stack([
                ce_auroc_loss(heads(features[e, idx], layer), labels[idx], options.auroc_weight, options.auroc_scale)
                for e, layer in enumerate(heads.layers)
            ])
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            sums += losses.detach().double().cpu() * len(idx)
        history += [{"epoch": epoch + 1, "step": layer + 1, "loss": float(sums[e] / n)}
                    for e, layer in enumerate(heads.layers)]
    heads.eval()
    return pd.DataFrame(history)


# ----------------------------------------------------------------------------- inference
@torch.no_grad()
def early_exit_forward(
    model: BViT, heads: ExitHeads, x: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, 1-based exit step) per image: stop at the first exit whose max softmax exceeds ``threshold``.

    Exited images leave the batch, so later steps run on fewer images (real compute savings).
    """
    h = model.embed(x)
    n_layers = model.num_layers()
    active = torch.arange(len(x), device=x.device)
    logits = torch.empty(len(x), model.config.num_classes, device=x.device, dtype=h.dtype)
    exit_step = torch.full((len(x),), n_layers, dtype=torch.long, device=x.device)
    exits = set(heads.layers)
    for layer in range(n_layers):
        h = model.layer(h, layer)
        if layer not in exits:
            continue
        z = heads(h[:, 0], layer)
        done = z.float().softmax(-1).max(-1).values > threshold
        if done.any():
            logits[active[done]] = z[done].to(logits.dtype)
            exit_step[active[done]] = layer + 1
            h, active = h[~done], active[~done]
            if len(active) == 0:
                return logits, exit_step
    logits[active] = model.forward_head(model.norm(h)).to(logits.dtype)
    return logits, exit_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def threshold_sweep(
    model: BViT,
    heads: ExitHeads,
    loader: DataLoader,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    device: torch.device | str = "cpu",
    include_attention: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sweep, exit distribution): accuracy, mean steps, GFLOPs and ms per image for each threshold.

    A ``no_exit`` row times the plain model without exit heads (the paper's "no EE" column).
    Every batch runs all settings (after one untimed warm-up), so data loading is shared and untimed.
    """
    device = torch.device(device)
    model.eval().to(device)
    heads.eval().to(device)
    cfg = model.config
    settings: list[float | None] = [None, *thresholds]
    n_layers = model.num_layers()
    correct = np.zeros(len(settings))
    seconds = np.zeros(len(settings))
    steps_hist = np.zeros((len(settings), n_layers + 1))
    heads_run = np.zeros(len(settings))
    n_images, warm = 0, False
    for x, y in batches(loader, device, desc=f"exit sweep {model.config.name}"):
        for i, tau in enumerate(settings):
            if not warm:  # untimed warm-up of each setting on the first batch
                if tau is None:
                    model(x)
                else:
                    early_exit_forward(model, heads, x, tau)
            _sync(device)
            t0 = time.perf_counter()
            if tau is None:
                pred, step = model(x).argmax(-1), torch.full_like(y, n_layers)
            else:
                logits, step = early_exit_forward(model, heads, x, tau)
                pred = logits.argmax(-1)
            _sync(device)
            seconds[i] += time.perf_counter() - t0
            correct[i] += float((pred == y).sum())
            steps_hist[i] += np.bincount(step.cpu().numpy(), minlength=n_layers + 1)
            if tau is not None:
                heads_run[i] += sum(int((step > layer).sum()) for layer in heads.layers)
        warm = True
        n_images += len(y)
    if n_images == 0:
        raise ValueError("the data loader yielded no images")
    exit_rows, sweep_rows = [], []
    for i, tau in enumerate(settings):
        frac = steps_hist[i] / n_images
        mean_steps = float((frac * np.arange(n_layers + 1)).sum())
        # Embedding + layers run + exit heads evaluated + the final head for images that did not exit.
        full_head = frac[n_layers]
        flops = (embed_flops(cfg) + mean_steps * layer_flops(cfg, include_attention)
                 + (heads_run[i] / n_images + full_head) * head_flops(cfg))
        sweep_rows.append({
            "threshold": np.nan if tau is None else float(tau),
            "no_exit": tau is None,
            "accuracy": correct[i] / n_images,
            "mean_steps": mean_steps,
            "exited_fraction": 1.0 - float(full_head),
            "gflops": flops / 1e9,
            "ms_per_image": 1e3 * seconds[i] / n_images,
            "images": n_images,
        })
        if tau is not None:
            exit_rows += [{"threshold": float(tau), "step": s, "fraction": float(frac[s])}
                          for s in range(1, n_layers + 1)]
    return pd.DataFrame(sweep_rows), pd.DataFrame(exit_rows)


def exit_quality(
    model: BViT, heads: ExitHeads, features: torch.Tensor, labels: torch.Tensor
) -> pd.DataFrame:
    """Per exit on held-out features: exit-head accuracy, frozen final-head (lens) accuracy, AUROC of the confidence."""
    from sklearn.metrics import roc_auc_score

    rows = []
    with torch.no_grad():
        for e, layer in enumerate(heads.layers):
            z = heads(features[e], layer).float()
            conf, pred = z.softmax(-1).max(-1)
            correct = (pred == labels).cpu().numpy()
            lens_pred = readout(model, features[e]).argmax(-1)
            both = 0 < correct.sum() < len(correct)
            rows.append({
                "step": layer + 1,
                "accuracy": float(correct.mean()),
                "lens_accuracy": float((lens_pred == labels).float().mean()),
                "confidence": float(conf.mean()),
                "auroc": float(roc_auc_score(correct, conf.cpu().numpy())) if both else np.nan,
            })
    return pd.DataFrame(rows)


def early_exit(
    model: BViT,
    train_loader: DataLoader,
    val_loader: DataLoader,
    options: EarlyExitOptions = EarlyExitOptions(),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[ExitHeads, dict[str, pd.DataFrame]]:
    """Train exit heads on a frozen model, then sweep thresholds: (heads, {sweep, exits, distribution, history})."""
    device = torch.device(device)
    model.eval().to(device)
    n_layers = model.num_layers()
    steps = options.exits if options.exits is not None else tuple(range(1, n_layers))
    heads = ExitHeads(model, [s - 1 for s in steps]).to(device)
    feats, labels = collect_cls_states(model, train_loader, device, layers=heads.layers)
    history = train_exit_heads(heads, feats.to(device), labels.to(device), options, seed)
    val_feats, val_labels = collect_cls_states(model, val_loader, device, layers=heads.layers)
    exits = exit_quality(model, heads, val_feats.to(device), val_labels.to(device))
    sweep, distribution = threshold_sweep(model, heads, val_loader, options.thresholds, device, options.include_attention)
    return heads, {"sweep": sweep, "exits": exits, "distribution": distribution, "history": history}


def sweep_summary(sweep: pd.DataFrame, tolerance: float = 0.01) -> dict[str, float]:
    """Headline of a sweep: the full model, and the cheapest threshold within ``tolerance`` of its accuracy."""
    full = sweep[sweep["no_exit"]].iloc[0]
    ok = sweep[~sweep["no_exit"] & (sweep["accuracy"] >= full["accuracy"] - tolerance)]
    best = ok.loc[ok["gflops"].idxmin()] if len(ok) else full
    return {
        "full_accuracy": float(full["accuracy"]),
        "full_gflops": float(full["gflops"]),
        "full_ms": float(full["ms_per_image"]),
        "cheapest_threshold": float(best["threshold"]),
        "cheapest_accuracy": float(best["accuracy"]),
        "cheapest_gflops_saving": float(1 - best["gflops"] / full["gflops"]),
    }
