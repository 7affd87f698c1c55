"""Time of a truncated-SVD sweep split into SVD and evaluation: the bundled pair and bViT-B at 224 px.

The bundled pair runs the full default sweep (10 ranks) on the ``--limit`` shapes
validation images; bViT-B (random weights, 224 px) runs ``--b-ranks`` ranks on
``--b-images`` random images. Missing bundled checkpoints fall back to random weights of
the same config (timings do not depend on the weights). Prints one row per model.

    python benchmarks/bench_svd.py [--device cpu] [--limit 256] [--b-images 16] [--b-ranks 2]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from bvit_interp import build_model
from bvit_interp.analysis.rank import default_ranks, truncation_sweep
from bvit_interp.data.loaders import data_loader, materialize
from bvit_interp.defaults import resolve_model
from bvit_interp.distributed import resolve_device
from bvit_interp.model import BViT


def _bundled(name: str) -> tuple[BViT, str]:
    """The bundled model, or a random one of its config when the checkpoint is not there yet."""
    try:
        return resolve_model(name), "trained"
    except FileNotFoundError:
        return build_model(name).eval(), "random"


def time_sweep(label: str, weights: str, model: BViT, loader: DataLoader, ranks: list[int], device: torch.device) -> dict[str, object]:
    """Run one sweep and split its wall time into SVD, truncated evaluations and the baseline evaluation."""
    model.to(device)
    start = time.perf_counter()
    df = truncation_sweep(model, loader, ranks, device=device)
    total = time.perf_counter() - start
    svd_s, eval_s = float(df["svd_s"].iloc[0]), float(df["eval_s"].sum())
    return {
        "model": label, "weights": weights, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "img": model.config.img_size, "images": int(df["images"].iloc[0]), "ranks": len(ranks),
        "matrices": int(df["num_matrices"].iloc[0]), "svd_s": svd_s, "eval_s": eval_s,
        "eval_s_per_rank": eval_s / len(ranks), "baseline_s": total - svd_s - eval_s, "total_s": total,
        "svd_share": svd_s / total, "svd_per_rank_would_add_s": svd_s * (len(ranks) - 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--limit", type=int, default=256, help="shapes validation images for the bundled pair")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size of the bundled pair")
    p.add_argument("--b-images", type=int, default=16, help="random 224 px images for bViT-B")
    p.add_argument("--b-ranks", type=int, default=2, help="ranks for bViT-B (the lowest and highest of the default list first)")
    p.add_argument("--skip-b", action="store_true", help="only the bundled pair")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    rows = []
    for name in ("bvit_tiny", "vit_tiny"):
        model, weights = _bundled(name)
        loader = materialize(data_loader("shapes", model.config, limit=args.limit, batch_size=args.batch_size)[0])
        rows.append(time_sweep(name, weights, model, loader, default_ranks(model.config.embed_dim), device))
    if not args.skip_b:
        model = build_model("bvit_b").eval()
        x = torch.randn(args.b_images, 3, 224, 224)
        y = torch.randint(0, model.config.num_classes, (args.b_images,))
        full = default_ranks(model.config.embed_dim)
        ranks = sorted({full[0], full[-1], *full[1 : max(0, args.b_ranks - 2) + 1]})[: args.b_ranks]
        loader = DataLoader(TensorDataset(x, y), batch_size=args.b_images)
        rows.append(time_sweep("bvit_b", "random", model, loader, ranks, device))
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
