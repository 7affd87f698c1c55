"""Time per pruning round split into full training, grafts, pruning, evaluation and checkpointing.

Runs the ``quick`` preset (or ``--preset paper``) on ``--model-config`` into a temporary
run directory and prints one row per round plus the projected total of the whole preset
(``--rounds 1`` = one pruning round and the training of its masks: a fast measurement).

    python benchmarks/bench_pruning.py [--rounds 1] [--threads 2] [--device cpu] [--model-config bvit_tiny]
        [--shapes-train-size N --val-limit N]   # a shorter measurement than the preset's sizes
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd
import torch

from bvit_interp.distributed import resolve_device
from bvit_interp.pruning.rtl import PRESETS, preset_config
from bvit_interp.runs import Run
from bvit_interp.runs.pruning import PruningRun

COLUMNS = {"time_train_s": "full training", "time_grafts_s": "grafts", "time_prune_s": "pruning",
           "time_eval_s": "evaluation", "time_control_s": "random control", "time_checkpoint_s": "checkpoint"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="preset to time")
    p.add_argument("--rounds", type=int, help="pruning rounds to run (default: the preset's)")
    p.add_argument("--model-config", default="bvit_tiny", help="named model config")
    p.add_argument("--device", default="cpu", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--shapes-train-size", type=int, help="override the preset's images per epoch (a shorter measurement)")
    p.add_argument("--val-limit", type=int, help="override the preset's validation and train-accuracy images")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset_config(args.preset, model=args.model_config, rounds=args.rounds,
                        shapes_train_size=args.shapes_train_size, val_limit=args.val_limit, train_eval_limit=args.val_limit)
    full_rounds = PRESETS[args.preset]["rounds"]
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), time.process_time()
        pruner = PruningRun(cfg, Run.create(tmp, {"analysis": "pruning"}), resolve_device(args.device))
        setup_s = time.perf_counter() - start
        history = pruner.run_all()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    df = pd.DataFrame(history)[["round", "mask_sparsity", "iterations", *COLUMNS]].rename(columns=COLUMNS)
    df["total"] = df[list(COLUMNS.values())].sum(axis=1)
    print(f"preset {args.preset} on {cfg.model}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{cfg.shapes_train_size} images/epoch, epochs {cfg.epochs}, graft epochs {cfg.graft_epochs}")
    print(df.round(2).to_string(index=False))
    pruning_rounds = df[df["round"] < cfg.rounds]
    per_graft = pruning_rounds["grafts"].mean() / pruner.model.config.steps
    projected = (setup_s + df["total"].iloc[-1] + full_rounds * pruning_rounds["total"].mean()) / 60
    # On a busy machine wall time overstates the cost; process CPU time / threads is the idle-machine estimate.
    print(f"setup {setup_s:.1f}s, wall {wall:.1f}s, process CPU {cpu:.1f}s, {per_graft:.2f}s per graft; "
          f"projected {args.preset} preset ({full_rounds} rounds): {projected:.1f} min")


if __name__ == "__main__":
    main()
