"""Cost of the causal analysis on the bundled models: the full patching map vs the naive loop, attribution vs exact.

Two comparisons per model, on ``--pairs`` class counterfactual pairs of the shapes validation set
(rendered once beforehand, not timed):

- **patching map**: one full (step x head) denoising map of ``attn.z``, each patched run resumed
  from the corrupted run's residual stream at its step and the heads of a step stacked along the
  batch (``analysis.causal.patching_cost``), against the naive loop of one full forward per
  (step, head) with a plain hook; both give the same numbers (tested). Also the layer
  applications each needs per image (naive H L^2, resumed H L (L+1) / 2).
- **attribution vs exact**: every (direction, site, step, head, token group) cell of the
  command's default sites, exactly (``activation_patching``) and by attribution patching (one
  forward-backward per direction), with Spearman's rho between the two summaries; with
  ``--ig-steps N`` also captum's integrated gradients on ``attn.z`` (timed against exact
  patching of ``attn.z`` alone).

Both are run once after a warm-up on two pairs; wall and process CPU seconds are reported (on a
shared machine the CPU time is the steadier number). Missing bundled checkpoints fall back to
random weights of the same config (timings do not depend on the weights; rho does).

    python benchmarks/bench_causal.py [--models bvit_tiny,vit_tiny] [--pairs 8] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from bvit_interp import build_model
from bvit_interp.analysis.causal import (
    AttributionOptions,
    PatchingOptions,
    activation_patching,
    attribution_patching,
    captum_attribution,
    counterfactual_pairs,
    pair_runs,
    patching_cost,
    rank_correlation,
    summarise,
)
from bvit_interp.analysis.causal.activation import KEYS
from bvit_interp.data.shapes import shapes_for_model
from bvit_interp.defaults import resolve_model
from bvit_interp.distributed import resolve_device
from bvit_interp.model import BViT


def _bundled(name: str, device: torch.device) -> tuple[BViT, str]:
    """The bundled model, or a random one of its config when the checkpoint is not there yet."""
    try:
        return resolve_model(name, device=str(device)).eval(), "trained"
    except FileNotFoundError:
        return build_model(name).to(device).eval(), "random"


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of one call, synchronising CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> tuple[dict, dict]:
    """(patching-map row, attribution row) of one model."""
    model, weights = _bundled(name, device)
    pairs = counterfactual_pairs(model.config, range(args.pairs), "class", shapes_for_model(model.config))
    runs = pair_runs(model, pairs)
    cost = patching_cost(model, pairs, "attn.z", repeats=args.repeats, max_batch=args.max_batch)
    map_row = {"model": name, "weights": weights, "pairs": args.pairs, "cells": int(cost["cells"]),
               "naive_s": cost["naive_s"], "resumed_s": cost["resumed_s"], "ratio": cost["ratio"],
               "naive_layers": int(cost["naive_layer_applications"]),
               "resumed_layers": int(cost["resumed_layer_applications"]),
               "layer_ratio": cost["naive_layer_applications"] / cost["resumed_layer_applications"]}
    print(f"{name} map: naive {cost['naive_s']:.2f} s, resumed {cost['resumed_s']:.2f} s ({cost['ratio']:.2f}x)",
          file=sys.stderr, flush=True)

    exact_opts = PatchingOptions(max_batch=args.max_batch, seed=args.seed)
    approx_opts = AttributionOptions()
    warm = pairs.select([0, 1])
    warm_runs = pair_runs(model, warm)
    activation_patching(model, warm, exact_opts, warm_runs)
    attribution_patching(model, warm, approx_opts, warm_runs)
    exact_wall, exact_cpu, (_, exact) = _timed(lambda: activation_patching(model, pairs, exact_opts, runs), device)
    approx_wall, approx_cpu, approx_pairs = _timed(lambda: attribution_patching(model, pairs, approx_opts, runs), device)
    rho = rank_correlation(exact, summarise(approx_pairs, KEYS, runs, seed=args.seed))
    overall = rho[rho["direction"] == "all"].iloc[0]
    attr_row = {"model": name, "weights": weights, "pairs": args.pairs, "cells": len(exact),
                "exact_s": exact_wall, "attribution_s": approx_wall, "ratio": exact_wall / approx_wall,
                "cpu_ratio": exact_cpu / approx_cpu, "rho": float(overall["rho"]),
                "rho_min_site": float(rho[rho["direction"] != "all"]["rho"].min())}
    print(f"{name} attribution: exact {exact_wall:.1f} s, attribution {approx_wall:.2f} s "
          f"({attr_row['ratio']:.0f}x), rho {attr_row['rho']:.3f}", file=sys.stderr, flush=True)
    if args.ig_steps:
        z_opts = PatchingOptions(sites=("attn.z",), max_batch=args.max_batch, seed=args.seed)
        z_wall, _, (_, z_exact) = _timed(lambda: activation_patching(model, pairs, z_opts, runs), device)

        def ig() -> pd.DataFrame:
            parts = [captum_attribution(model, pairs, "attn.z", "ig", d, n_steps=args.ig_steps, runs=runs)
                     for d in ("denoising", "noising")]
            return pd.concat(parts, ignore_index=True).drop(columns="method")

        ig_wall, _, ig_pairs = _timed(ig, device)
        ig_rho = rank_correlation(z_exact, summarise(ig_pairs, KEYS, runs, seed=args.seed))
        attr_row.update({"exact_attn_z_s": z_wall, "ig_s": ig_wall, "ig_ratio": z_wall / ig_wall,
                         "ig_rho": float(ig_rho[ig_rho["direction"] == "all"]["rho"].iloc[0])})
    return map_row, attr_row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bvit_tiny,vit_tiny", help="comma-separated bundled model names")
    p.add_argument("--pairs", type=int, default=8, help="class counterfactual pairs (shapes validation set)")
    p.add_argument("--max-batch", type=int, default=0,
                   help="images per stacked forward (0: 1024 on CUDA, 64 on CPU, as the command)")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats of the patching map (best is kept)")
    p.add_argument("--ig-steps", type=int, default=0, help="also time integrated gradients on attn.z (0: no)")
    p.add_argument("--device", default="cpu", help="'auto', 'cpu', 'cuda'")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed of the summaries")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.max_batch = args.max_batch or (1024 if device.type == "cuda" else 64)
    maps, attrs = [], []
    for name in args.models.split(","):
        map_row, attr_row = bench_model(name, args, device)
        maps.append(map_row)
        attrs.append(attr_row)
    fmt = {"float_format": lambda v: f"{v:.3g}", "index": False}
    print(f"device {device}, torch threads {torch.get_num_threads()}, max batch {args.max_batch}")
    print("\nfull (step x head) attn.z denoising map: resumed + stacked vs the naive loop of full forwards")
    print(pd.DataFrame(maps).to_string(**fmt))
    print("\nattribution patching vs exact patching (default sites, both directions, every token group)")
    print(pd.DataFrame(attrs).to_string(**fmt))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device), "threads": torch.get_num_threads(), "map": maps, "attribution": attrs},
                      fh, indent=2)


if __name__ == "__main__":
    main()
