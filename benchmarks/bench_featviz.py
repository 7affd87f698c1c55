"""Feature visualization: time per (neuron, step) target, K targets batched vs optimised one by one.

For the bundled-size model (the trained ``bvit_tiny`` if present, else random weights of its
config: timings do not depend on the weights) and bViT-B at 224 px (random weights), K targets
with steps spread evenly over 1..T are optimised for a few iterations three ways: one batch
with early stopping (the default), one by one, and one batch running every step (no early
stop). Prints one row per model with seconds per target, the batching speed-up and the saving
from stopping at the largest needed step (and dropping finished targets).

    python benchmarks/bench_featviz.py [--device auto] [--k 16] [--iterations 5] [--copies 8]
                                       [--b-k 8] [--b-iterations 2] [--b-copies 2] [--skip-b] [--threads N]
                                       [--clock auto|wall|cpu]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import pandas as pd
import torch

from bvit_interp import build_model
from bvit_interp.analysis.featviz import FeatvizOptions, TransformOptions, visualize
from bvit_interp.benchmarks import spread_targets
from bvit_interp.defaults import DEFAULT_MODEL, resolve_model
from bvit_interp.distributed import resolve_device
from bvit_interp.model import BViT


def _timed(fn: Callable[[], object], device: torch.device, clock: str) -> float:
    """Seconds of ``fn``: wall clock (synchronised on CUDA) or this process's CPU time."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = now()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return now() - start


def bench_featviz(
    label: str, model: BViT, k: int, iterations: int, copies: int, device: torch.device, clock: str = "wall"
) -> dict[str, object]:
    """Seconds per target: batched (early stop), one by one, batched without early stop."""
    model.to(device).eval()
    targets = spread_targets(model, k)
    options = FeatvizOptions(iterations=iterations, transforms=TransformOptions(copies=copies))
    visualize(model, targets[:1], FeatvizOptions(iterations=1, transforms=TransformOptions(copies=copies)))  # warm-up
    batched = _timed(lambda: visualize(model, targets, options, batch_size=k), device, clock)
    one_by_one = sum(_timed(lambda t=t: visualize(model, [t], options, batch_size=1), device, clock) for t in targets)
    full = _timed(lambda: visualize(model, targets, options, batch_size=k, early_stop=False), device, clock)
    layers_needed = sum(t.step for t in targets) / (k * model.num_layers())
    return {
        "model": label, "img": model.config.img_size, "K": k, "iters": iterations, "copies": copies,
        "s/target batched": batched / k, "s/target one-by-one": one_by_one / k,
        "batching speed-up": one_by_one / batched,
        "s/target no early stop": full / k, "early-stop saving": 1 - batched / full,
        "layer-count saving": 1 - layers_needed,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--k", type=int, default=16, help="targets of the bundled-size model")
    p.add_argument("--iterations", type=int, default=5, help="optimisation steps timed, bundled-size model")
    p.add_argument("--copies", type=int, default=8, help="augmented copies per image, bundled-size model")
    p.add_argument("--b-k", type=int, default=8, help="targets of bViT-B")
    p.add_argument("--b-iterations", type=int, default=2, help="optimisation steps timed, bViT-B")
    p.add_argument("--b-copies", type=int, default=2, help="augmented copies per image, bViT-B")
    p.add_argument("--skip-b", action="store_true", help="only the bundled-size model")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                   help="wall clock, or CPU time of this process (robust on a shared CPU); auto: cpu on CPU, wall on CUDA")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    try:
        tiny, weights = resolve_model(DEFAULT_MODEL), "trained"
    except FileNotFoundError:
        tiny, weights = build_model(DEFAULT_MODEL).eval(), "random"
    clock = ("cpu" if device.type == "cpu" else "wall") if args.clock == "auto" else args.clock
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {clock} seconds")
    rows = [bench_featviz(f"{DEFAULT_MODEL} ({weights})", tiny, args.k, args.iterations, args.copies, device, clock)]
    if not args.skip_b:
        big = build_model("bvit_b")
        rows.append(bench_featviz("bvit_b (random)", big, args.b_k, args.b_iterations, args.b_copies, device, clock))
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
