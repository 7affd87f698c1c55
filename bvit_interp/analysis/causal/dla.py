"""Direct logit attribution (DLA) per head and step, and path patching of each head to the readout only.

The readout is ``head(norm(x_final)[cls])`` (a -dist model averages it with ``head_dist`` on the
distillation token). The final residual stream at a readout token is a sum of direct terms:

    x_final = embed + sum_t time_embed_t + sum_l (sum_h head_out_{l,h} + attn_bias_l + mlp_out_l)

with ``head_out_{l,h} = ls1(z_{l,h} W_proj[:, h])`` (each head's ``attn.z`` through its slice of
the output projection and the layer scale) and ``attn_bias_l = ls1(b_proj)``.

Frozen-scale approximation: the final norm is linear once its scale is fixed. RMSNorm:
``norm(x) = s * x * w`` with ``s = 1 / sqrt(mean(x^2) + eps)``; LayerNorm: ``s * (x - mean(x)) * w
+ b`` with ``s = 1 / sqrt(var(x) + eps)``. With ``s`` computed on the clean run's own ``x_final``
(per pair and readout token) and held fixed, every term c contributes ``u . (s * centre(c) * w)``
to the logit difference (``u = W_head[a] - W_head[b]``), and the terms plus the constant (norm
bias and head bias) sum to the clean logit difference exactly (float rounding only). On another
run (the corrupted one) the frozen clean scale is an approximation: the sum then differs from
that run's logit difference by the change of scale, reported as ``total`` vs ``ld``.

Direct vs indirect effect (``direct_effects``): the total effect of (step, head) is ordinary
activation patching of its ``attn.z`` (it reaches later steps and the readout); the direct effect
is path patching to the readout only: the head's output difference is added to the final
residual stream and passes the real (not frozen) final norm, while later steps see the run's
own value. Indirect = total - direct. ``direct_linear`` is the frozen-scale (DLA) version of the
direct effect.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...model import BViT
from ...model.hooks import layer_position
from ...model.patching import run_patched
from .activation import DIRECTIONS, GroupPatch, select_layers
from .metric import (
    DEFAULT_MIN_GAP,
    PairRuns,
    as_float,
    logit_difference,
    model_input,
    normalise,
    pair_runs,
)
from .pairs import PairBatch

TERMS = ("embed", "time", "head", "attn_bias", "mlp", "bias")


@dataclass
class Readout:
    """The linearised readout of one batch: per readout token, the direction u (B, R, D) and norm parts."""

    weight: torch.Tensor  # (D,) the final norm's weight (ones without one)
    bias: torch.Tensor  # (D,) its bias (zeros without one)
    centre: bool  # LayerNorm subtracts the mean
    directions: torch.Tensor  # (B, R, D): coef_t * (W_t[a] - W_t[b]) per readout token t
    constant: torch.Tensor  # (B,): the norm bias and head bias terms of the logit difference


def readout_tokens(model: BViT) -> int:
    """How many leading tokens the head reads: 1 (CLS) or 2 (CLS and the distillation token)."""
    return 2 if model.head_dist is not None else 1


def _norm_parts(model: BViT) -> tuple[torch.Tensor, torch.Tensor, bool, float]:
    """(weight, bias, centre, eps) of the final norm; NotImplementedError for a norm that is not RMS / Layer / Identity."""
    norm, d = model.norm, model.embed_dim
    ref = model.cls_token
    ones, zeros = torch.ones(d, device=ref.device, dtype=ref.dtype), torch.zeros(d, device=ref.device, dtype=ref.dtype)
    if isinstance(norm, nn.Identity):
        return ones, zeros, False, 0.0
    if isinstance(norm, nn.LayerNorm):
        w = norm.weight if norm.weight is not None else ones
        b = norm.bias if norm.bias is not None else zeros
        return w, b, True, float(norm.eps)
    if type(norm).__name__ == "RmsNorm" or isinstance(norm, getattr(nn, "RMSNorm", ())):
        w = norm.weight if getattr(norm, "weight", None) is not None else ones
        eps = norm.eps if norm.eps is not None else torch.finfo(ref.dtype).eps
        return w, zeros, False, float(eps)  # type: ignore[arg-type]
    raise NotImplementedError(f"direct logit attribution supports RMSNorm, LayerNorm or Identity, not {type(norm).__name__}")


def _check_linear_head(model: BViT) -> None:
    """NotImplementedError when the readout is not a linear head on the CLS (and dist) token."""
    if model.global_pool != "token" or model.attn_pool is not None or not isinstance(model.fc_norm, nn.Identity):
        raise NotImplementedError("direct logit attribution needs the CLS-token readout (global_pool='token')")
    for head in (model.head, model.head_dist):
        if head is not None and not isinstance(head, nn.Linear):
            raise NotImplementedError("direct logit attribution needs a linear classifier head")


def frozen_scale(model: BViT, x_final: torch.Tensor) -> torch.Tensor:
    """The final norm's scale s (..., 1) of the pre-norm stream ``x_final`` (..., D): held fixed by DLA."""
    _, _, centre, eps = _norm_parts(model)
    if isinstance(model.norm, nn.Identity):
        return torch.ones_like(x_final[..., :1])
    x = as_float(x_final)
    v = x.var(-1, unbiased=False, keepdim=True) if centre else x.pow(2).mean(-1, keepdim=True)
    return torch.rsqrt(v + eps)


def linear_readout(model: BViT, right: torch.Tensor, wrong: torch.Tensor) -> Readout:
    """The readout of ``logit[right] - logit[wrong]`` as directions per readout token and a constant."""
    _check_linear_head(model)
    weight, bias, centre, _ = _norm_parts(model)
    heads = [model.head] if model.head_dist is None else [model.head, model.head_dist]
    coef = 1.0 / len(heads)
    dirs, const = [], torch.zeros(len(right), device=right.device)
    for head in heads:
        w = as_float(head.weight)
        u = coef * (w[right] - w[wrong])  # (B, D)
        dirs.append(u)
        const = const + u @ as_float(bias)
        if head.bias is not None:
            const = const + coef * as_float(head.bias[right] - head.bias[wrong])
    return Readout(as_float(weight), as_float(bias), centre, torch.stack(dirs, 1), const)


def _contribution(readout: Readout, scale: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """Logit-difference contribution (..., B) of a term (..., B, R, D) under the frozen scale (B, R, 1)."""
    t = as_float(term)
    if readout.centre:
        t = t - t.mean(-1, keepdim=True)
    return (t * scale * readout.weight * readout.directions).sum((-1, -2))


def head_outputs(model: BViT, z: torch.Tensor, layer: int) -> torch.Tensor:
    """Each head's output ``ls1(z_h W_proj[:, h])`` (B, H, R, D) from ``attn.z`` (B, H, R, Dh) at ``layer``."""
    block = model.blocks[layer_position(layer, model.num_blocks)[1]]
    attn = block.attn
    if not isinstance(attn.norm, nn.Identity):
        raise NotImplementedError("per-head outputs need an attention block without a norm before its projection")
    h, dh = attn.num_heads, attn.head_dim
    w = attn.proj.weight.reshape(-1, h, dh)  # (D, H, Dh)
    out = torch.einsum("bhrk,dhk->bhrd", z.to(w.dtype), w)
    return block.ls1(out)


def attn_bias(model: BViT, layer: int) -> torch.Tensor:
    """The projection bias as it enters the residual stream at ``layer``: ``ls1(b_proj)`` (D,)."""
    block = model.blocks[layer_position(layer, model.num_blocks)[1]]
    b = block.attn.proj.bias
    return block.ls1(b if b is not None else torch.zeros_like(block.attn.proj.weight[:, 0]))


@torch.no_grad()
def decompose(model: BViT, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The direct terms of the final residual stream at the readout tokens, from one forward of ``x``.

    Returns embed (B, R, D), time (R?, D: the summed time embeddings, zeros without), head
    (L, B, H, R, D), attn_bias (L, D), mlp (L, B, R, D), final (B, R, D: the real pre-norm stream)
    and logits (B, C).
    """
    if not model.resumable:
        raise ValueError(f"model {model.config.name!r} carries state beside the residual stream; DLA needs a plain model")
    r = readout_tokens(model)
    n = model.num_layers()
    with model.capture(["attn.z", "mlp_out"], tokens=slice(0, r)) as cache:
        h = model.embed(x)
        embed = h[:, :r].clone()
        for layer in range(n):
            h = model.layer(h, layer)
    final = h[:, :r]
    logits = model.forward_head(model.norm(h))
    time = torch.zeros_like(embed[0, 0])
    if model.time_embed is not None:
        for layer in range(n):
            step, block = layer_position(layer, model.num_blocks)
            if block == model.num_blocks - 1:
                time = time + model.time_embed[min(step, model.config.steps - 1)]
    heads = torch.stack([head_outputs(model, cache["attn.z", layer], layer) for layer in range(n)])
    return {
        "embed": embed, "time": time, "head": heads,
        "attn_bias": torch.stack([attn_bias(model, layer) for layer in range(n)]),
        "mlp": torch.stack([cache["mlp_out", layer] for layer in range(n)]),
        "final": final, "logits": logits,
    }


@torch.no_grad()
def direct_logit_attribution(
    model: BViT, pairs: PairBatch, run: str = "clean", runs: PairRuns | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(terms, totals) of the DLA of ``run`` ("clean" / "corrupted") with the final norm's scale frozen at the clean run.

    terms: pair, term (embed, time, head, attn_bias, mlp, bias), step (1-based; 0 for
    step-free terms), head (-1 unless term == "head"), value (logits of the difference).
    totals: pair, ld (the run's logit difference), total (sum of the terms), error (total - ld).
    """
    if run not in ("clean", "corrupted"):
        raise ValueError(f"run must be 'clean' or 'corrupted', got {run!r}")
    model.eval()
    runs = runs or pair_runs(model, pairs)
    clean_parts = decompose(model, model_input(model, pairs.clean))
    parts = clean_parts if run == "clean" else decompose(model, model_input(model, pairs.corrupted))
    scale = frozen_scale(model, clean_parts["final"])  # (P, R, 1)
    readout = linear_readout(model, runs.right, runs.wrong)
    n_pairs, n_layers = len(pairs), model.num_layers()
    num_heads = model.config.num_heads
    rows: list[pd.DataFrame] = []

    def add(term: str, values: torch.Tensor, step: np.ndarray | int = 0, head: np.ndarray | int = -1) -> None:
        v = values.reshape(-1, n_pairs)
        k = len(v)
        rows.append(pd.DataFrame({
            "pair": np.tile(np.arange(n_pairs), k), "term": term,
            "step": np.repeat(step, n_pairs) if isinstance(step, np.ndarray) else step,
            "head": np.repeat(head, n_pairs) if isinstance(head, np.ndarray) else head,
            "value": v.double().cpu().numpy().reshape(-1),
        }))

    add("embed", _contribution(readout, scale, parts["embed"]))
    add("time", _contribution(readout, scale, parts["time"].expand_as(parts["embed"])))
    heads = _contribution(readout, scale, parts["head"].permute(0, 2, 1, 3, 4))  # (L, H, P)
    add("head", heads, np.repeat(np.arange(1, n_layers + 1), num_heads), np.tile(np.arange(num_heads), n_layers))
    biases = _contribution(readout, scale, parts["attn_bias"][:, None, None, :].expand(n_layers, *parts["embed"].shape))
    add("attn_bias", biases, np.arange(1, n_layers + 1))
    add("mlp", _contribution(readout, scale, parts["mlp"]), np.arange(1, n_layers + 1))
    add("bias", readout.constant)
    terms = pd.concat(rows, ignore_index=True)
    ld = logit_difference(parts["logits"], runs.right, runs.wrong).double().cpu().numpy()
    total = terms.groupby("pair")["value"].sum().sort_index().to_numpy()
    totals = pd.DataFrame({"pair": np.arange(n_pairs), "ld": ld, "total": total, "error": total - ld})
    return terms, totals


def dla_by_step(terms: pd.DataFrame) -> pd.DataFrame:
    """Mean over pairs per (term, step, head): the DLA map and the per-step MLP / bias terms."""
    return terms.groupby(["term", "step", "head"], as_index=False)["value"].mean()


@torch.no_grad()
def direct_effects(
    model: BViT, pairs: PairBatch, direction: str = "denoising", steps: Iterable[int] | None = None,
    min_gap: float = DEFAULT_MIN_GAP, runs: PairRuns | None = None,
) -> pd.DataFrame:
    """Per (step, head, pair): total effect (patching ``attn.z``), direct effect (path patching to the readout), indirect.

    Columns: direction, step, head, pair, total, direct, direct_linear (the frozen-scale DLA
    version), indirect (total - direct), all normalised (1 clean, 0 corrupted); and ld_total,
    ld_direct (raw logit differences).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    model.eval()
    runs = runs or pair_runs(model, pairs)
    layers = select_layers(model, None if steps is None else tuple(steps))
    run_x, src_x = ((pairs.corrupted, pairs.clean) if direction == "denoising" else (pairs.clean, pairs.corrupted))
    run_parts = decompose(model, model_input(model, run_x))
    src_parts = decompose(model, model_input(model, src_x))
    clean_final = (src_parts if direction == "denoising" else run_parts)["final"]
    scale = frozen_scale(model, clean_final)
    readout = linear_readout(model, runs.right, runs.wrong)
    num_heads, n_pairs = model.config.num_heads, len(pairs)
    with model.capture("resid_pre") as cache:
        model(model_input(model, run_x))
    with model.capture("attn.z") as src_cache:
        model(model_input(model, src_x))
    run_ld = logit_difference(run_parts["logits"], runs.right, runs.wrong)
    frames = []
    for layer in layers:
        delta = src_parts["head"][layer] - run_parts["head"][layer]  # (P, H, R, D)
        final = run_parts["final"][None] + delta.permute(1, 0, 2, 3)  # (H, P, R, D)
        direct_logits = model.forward_head(model.norm(final.reshape(-1, *final.shape[2:]))).reshape(num_heads, n_pairs, -1)
        ld_direct = logit_difference(direct_logits, runs.right, runs.wrong)  # (H, P)
        ld_linear = run_ld + _contribution(readout, scale, delta.permute(1, 0, 2, 3))
        variants = [GroupPatch("attn.z", layer, src_cache["attn.z", layer], head=h) for h in range(num_heads)]
        ld_total = logit_difference(run_patched(model, cache["resid_pre", layer], variants, start=layer),
                                    runs.right, runs.wrong)
        total, direct = normalise(ld_total, runs, min_gap), normalise(ld_direct, runs, min_gap)
        frames.append(pd.DataFrame({
            "direction": direction, "step": layer + 1,
            "head": np.repeat(np.arange(num_heads), n_pairs), "pair": np.tile(np.arange(n_pairs), num_heads),
            "total": total.cpu().numpy().reshape(-1), "direct": direct.cpu().numpy().reshape(-1),
            "direct_linear": normalise(ld_linear, runs, min_gap).cpu().numpy().reshape(-1),
            "indirect": (total - direct).cpu().numpy().reshape(-1),
            "ld_total": ld_total.cpu().numpy().reshape(-1), "ld_direct": ld_direct.cpu().numpy().reshape(-1),
        }))
    return pd.concat(frames, ignore_index=True)


__all__ = ["TERMS", "Readout", "attn_bias", "decompose", "direct_effects", "direct_logit_attribution", "dla_by_step",
           "frozen_scale", "head_outputs", "linear_readout", "readout_tokens"]
