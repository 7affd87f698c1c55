"""Time of the dynamics analyses (trajectories, lens, early exit, ablation) on the bundled-size models.

Each row is one analysis core on one model over ``--limit`` shapes validation images,
rendered once beforehand (rendering is not timed). Missing bundled checkpoints fall back to
random weights of the same config (timings do not depend on the weights). The ablation map
is also run as the naive loop of full forwards on ``--ablation-limit`` images, and both are
printed side by side with their ratio. Wall and process CPU seconds are both reported: on a
shared machine the CPU time is the steadier number.

    python benchmarks/bench_dynamics.py [--device cpu] [--threads 1] [--limit 256] [--ablation-limit 64] [--ablation-only]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from bvit_interp import build_model
from bvit_interp.analysis.ablation import AblationOptions, ablate
from bvit_interp.analysis.early_exit import EarlyExitOptions, early_exit
from bvit_interp.analysis.lens import lens
from bvit_interp.analysis.trajectories import trajectories
from bvit_interp.data.loaders import data_loader
from bvit_interp.defaults import resolve_model
from bvit_interp.distributed import resolve_device
from bvit_interp.model import BViT


def _bundled(name: str) -> tuple[BViT, str]:
    """The bundled model, or a random one of its config when the checkpoint is not there yet."""
    try:
        return resolve_model(name), "trained"
    except FileNotFoundError:
        return build_model(name).eval(), "random"


def _rendered(model: BViT, split: str, limit: int, batch_size: int) -> DataLoader:
    """Shapes images rendered once into memory, so the timings leave data loading out."""
    loader, _ = data_loader("shapes", model.config, split, limit, batch_size=batch_size)
    xs, ys = zip(*[(b[0], b[1]) for b in loader], strict=True)
    return DataLoader(TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=batch_size)


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> tuple[list[dict], dict]:
    """Rows of (analysis, time) for one model, and its fast-vs-naive ablation comparison."""
    model, weights = _bundled(name)
    model.to(device)
    val = _rendered(model, "val", args.limit, args.batch_size)
    small = _rendered(model, "val", args.ablation_limit, args.batch_size)
    train = _rendered(model, "train", args.train_limit, args.batch_size)
    cores: dict[str, Callable[[], Any]] = {
        "trajectories (states + PaCMAP + kNN)": lambda: trajectories(model, val, device=device),
        "lens (1..2T readout)": lambda: lens(model, val, device=device),
        "early exit (features, 30 epochs, sweep)": lambda: early_exit(model, train, val, EarlyExitOptions(), device=device),
        "ablation map (fast)": lambda: ablate(model, val, AblationOptions(), device),
    }
    rows = []
    for analysis, fn in ({} if args.ablation_only else cores).items():
        wall, cpu = _timed(fn)
        rows.append({"model": name, "weights": weights, "analysis": analysis, "images": args.limit,
                     "wall_s": wall, "cpu_s": cpu, "ms_per_image": 1e3 * wall / args.limit})
        print(f"{name} {analysis}: {wall:.1f} s wall, {cpu:.1f} s cpu", file=sys.stderr, flush=True)
    fast = _timed(lambda: ablate(model, small, AblationOptions(), device))
    naive = _timed(lambda: ablate(model, small, AblationOptions(), device, naive=True))
    comparison = {"model": name, "images": args.ablation_limit,
                  "fast_wall_s": fast[0], "naive_wall_s": naive[0], "wall_ratio": naive[0] / fast[0],
                  "fast_cpu_s": fast[1], "naive_cpu_s": naive[1], "cpu_ratio": naive[1] / fast[1]}
    return rows, comparison


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bvit_tiny,vit_tiny", help="comma-separated bundled model names")
    p.add_argument("--limit", type=int, default=256, help="validation images per analysis")
    p.add_argument("--ablation-limit", type=int, default=64, help="images for the fast-vs-naive ablation comparison")
    p.add_argument("--train-limit", type=int, default=1024, help="training images for the early-exit heads")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward")
    p.add_argument("--device", default="cpu", help="'auto', 'cpu', 'cuda'")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--ablation-only", action="store_true", help="only the fast-vs-naive ablation comparison")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows, comparisons = [], []
    for name in args.models.split(","):
        model_rows, comparison = bench_model(name, args, device)
        rows += model_rows
        comparisons.append(comparison)
    fmt = {"float_format": lambda v: f"{v:.3g}", "index": False}
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    if rows:
        print(pd.DataFrame(rows).to_string(**fmt))
    print("\nablation map: resumed + batched variants vs a naive loop of full forwards (same images, same numbers)")
    print(pd.DataFrame(comparisons).to_string(**fmt))


if __name__ == "__main__":
    main()
