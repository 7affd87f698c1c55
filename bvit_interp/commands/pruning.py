"""``bvit-interp prune``: step-masked RTL pruning of the shared block (paper Sec. 4.2.3, App. G).

Writes into ``--out``: ``init.*`` (theta_0), ``masks/round_NNN.npz``, ``model.*`` (the last
trained model with its ``model.masks.npz``), tables ``summary``, ``steps``, ``utilization``,
``pairs``, ``rounds``, figures ``fig5_utilization.png`` and ``fig14_pruning.png``, and
``state.json``. Rerunning the same command resumes after the last finished round.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..analysis.pruning import summary_table
from ..data.spec import describe
from ..pruning.masks import LAYER_TYPES
from ..pruning.rtl import PRESETS, PruneConfig, build_model_and_data, preset_config
from ..pruning.strategy import SCOPES
from ..registry import analysis_key
from ..runs import Run
from ..runs.pruning import PruningRun, print_progress, write_figures
from .common import (
    add_common_args,
    finite_float,
    fraction,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    resolve_device,
)


def _types(text: str) -> tuple[str, ...]:
    """Parse 'qkv,proj' into layer types (argparse type)."""
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [n for n in names if n not in LAYER_TYPES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown layer types {bad or text!r}; choose from {','.join(LAYER_TYPES)}")
    return names


def _show(value: object) -> str:
    return "all" if value is None else str(value)


def _preset_values(option: str) -> str:
    """'(unset = paper 30, quick 5)': what each preset puts in an option the user leaves unset."""
    default = getattr(PruneConfig, option)
    values = ", ".join(f"{name} {_show(preset.get(option, default))}" for name, preset in sorted(PRESETS.items()))
    return f"(unset = {values})".replace("%", "%%")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-config", default="bvit_tiny", help="named model config trained from a fresh seeded init (bvit_prune_g1 = paper App. G.1, 32 px; bvit_tiny, bvit_micro, ...)")
    p.add_argument("--init-from", metavar="NAME|PATH", help="start from these weights (bundled model or checkpoint) instead of a fresh init; they are theta_0")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="fills unset options: paper = App. G.3 (30 rounds, 20%%); quick = ~15 min on a 2-core CPU")
    p.add_argument("--rounds", type=nonneg_int, help="pruning rounds; the last round's masks are also trained and evaluated " + _preset_values("rounds"))
    p.add_argument("--rate", type=finite_float, help="fraction of each step's active weights pruned per round " + _preset_values("rate"))
    p.add_argument("--scope", choices=SCOPES, default="layer", help="magnitude threshold per layer, or one per step over all masked layers")
    p.add_argument("--layers", type=_types, default=",".join(LAYER_TYPES), help="masked layer types, comma-separated")
    p.add_argument("--epochs", type=positive_float, help="full-model training per round, in epochs " + _preset_values("epochs"))
    p.add_argument("--graft-epochs", type=positive_float, help="training of each step's graft per round, in epochs " + _preset_values("graft_epochs"))
    p.add_argument("--lr", type=positive_float, help="peak learning rate of full training; unset = the data's training recipe")
    p.add_argument("--graft-lr", type=positive_float, help="peak learning rate of graft training; unset = as full training")
    p.add_argument("--weight-decay", type=nonneg_float, help="AdamW weight decay; unset = the recipe's")
    p.add_argument("--warmup-epochs", type=nonneg_float, help="linear warm-up of full training; unset = 10%% of --epochs (grafts scale it)")
    p.add_argument("--label-smoothing", type=fraction, help="label smoothing; unset = the recipe's")
    p.add_argument("--clip-grad", type=nonneg_float, help="gradient-norm clipping, 0 disables; unset = the recipe's")
    p.add_argument("--shapes-train-size", type=positive_int, help="shapes training images per epoch " + _preset_values("shapes_train_size"))
    p.add_argument("--val-limit", type=positive_int, help="evaluate on the first N validation images " + _preset_values("val_limit"))
    p.add_argument("--train-eval-limit", type=positive_int, help="training images re-evaluated for the train accuracy " + _preset_values("train_eval_limit"))
    p.add_argument("--random-control", action=argparse.BooleanOptionalAction, default=None,
                   help="also train each round with random masks of the same densities (val accuracy control) " + _preset_values("random_control"))
    p.add_argument("--num-classes", type=positive_int, help="override the model's number of classes")
    p.add_argument("--no-amp", action="store_true", help="on CUDA, train in fp32 instead of bf16 autocast")
    add_common_args(p, "runs/pruning", only=("data", "batch_size", "workers", "device", "seed", "out", "force", "debug"),
                    default_batch_size=128, overrides={
                        "batch_size": {"help": "training batch size (paper App. G.2: 128)"},
                        "seed": {"help": "seed of the init, data order and random controls"},
                    })


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    """The run's ``PruneConfig``: preset values for every option left unset."""
    return preset_config(
        args.preset, model=args.model_config, init_from=args.init_from, data=args.data, rounds=args.rounds,
        rate=args.rate, scope=args.scope, layer_types=tuple(args.layers), epochs=args.epochs,
        graft_epochs=args.graft_epochs, batch_size=args.batch_size, lr=args.lr, graft_lr=args.graft_lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        clip_grad=args.clip_grad, shapes_train_size=args.shapes_train_size, val_limit=args.val_limit,
        train_eval_limit=args.train_eval_limit, random_control=args.random_control, num_classes=args.num_classes,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    device = resolve_device(args.device)
    options = json.loads(json.dumps(cfg.to_dict()))
    build_model_and_data(cfg)  # the model and data load (or fail naming the option) before the run exists
    amp = device.type == "cuda" and not args.no_amp
    meta = {"analysis": analysis_key(__name__), "models": [{"name": cfg.init_from or cfg.model}], "data": describe(cfg.data),
            "options": {**options, "amp": amp}, "seed": cfg.seed}
    run_dir = Run.create(args.out, meta, force=args.force)

    def progress(event: str, info: dict[str, Any]) -> None:
        print_progress(event, info)
        if event == "round_done" and info["round"] < info["rounds"]:  # the last round's figures follow below
            write_figures(run_dir)

    pruner = PruningRun(cfg, run_dir, device, amp=amp, progress=progress, workers=args.workers)
    model = pruner.model
    run_dir.update_meta(device=str(device), models=[{
        "name": cfg.init_from or cfg.model, "path": model.checkpoint_path, "sha256": model.checkpoint_sha256,
        "config": model.config.to_dict(), "init": "checkpoint" if cfg.init_from else f"fresh (seed {cfg.seed})",
    }])
    pruner.run_all()
    write_figures(run_dir)
    run_dir.complete()
    print(summary_table(run_dir.read_table("summary"), run_dir.read_table("rounds")).to_string(index=False))
    print(f"wrote {run_dir.path}")
    return 0
