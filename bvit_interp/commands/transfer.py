"""``bvit-interp transfer``: linear probe, fine-tuning, LoRA QV / FFN and TE tuning on new targets (Sec. 4.3, Table 4, App. H)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..registry import analysis_key
from ..runs import Run
from ..runs.transfer import TransferOptions, plan_cells, run_transfer, write_transfer
from ..transfer import METHODS, TransferSchedule
from ..transfer.report import METHOD_ALIASES, markdown_table, parse_methods, plan_pairs, table4
from ..transfer.schedule import APP_H_EPOCHS, APP_H_WARMUP_EPOCHS
from ..transfer.targets import (
    DEFAULT_TARGET,
    TransferTarget,
    is_imported,
    load_source_model,
    open_target,
    source_label,
    transform_key,
)
from .common import (
    LoadedModel,
    add_common_args,
    model_specs,
    nonneg_int,
    positive_int,
    resolve_device,
)

DEFAULT_SEEDS = 3  # App. H: three seeds, mean and std


def add_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Transfer each --model to each --data target with the methods of Table 4 / App. H: a new head on a "
        "frozen backbone (linear probe), everything trainable (fine-tuning), rank-8 LoRA on the query and value "
        "projections or on the FFN (frozen backbone), and time-embedding tuning (-TE models). Defaults follow App. H "
        "(AdamW, 5 warm-up epochs, cosine, 40 epochs, 3 seeds); --train-limit, --val-limit, --epochs and "
        "--max-steps-per-epoch make smaller budgets. Each (model, dataset, method, seed) is resumable: rerun the "
        "same command to continue, finished cells are kept. Writes results, summary, table4 (Table 4 layout, also "
        "CSV), history (per epoch) and the figures accuracy_vs_params and histories. See docs/transfer.md."
    )
    add_common_args(
        p, "runs/transfer", only=("model", "data", "batch_size", "workers", "device", "seed", "out", "force", "debug"),
        overrides={
            "model": {"help": "source model: a bundled name (bvit_tiny, bvit_tiny_te, bvit_tiny_reg, vit_tiny), one of "
                              "our checkpoints (path), or an imported ViT state dict 'timm:PATH' / 'torchvision:PATH' "
                              "(.pth / .safetensors, see --num-heads); repeat for several (default: bvit_tiny vit_tiny)"},
            "data": {"action": "append", "default": None, "metavar": "SPEC",
                     "help": f"target dataset: '{DEFAULT_TARGET}' (embedded: six shape classes the bundled models never "
                             "saw, rendered on the fly), 'cifar10:ROOT' / 'cifar100:ROOT' (a local torchvision copy; "
                             "nothing downloads) or an ImageFolder root with train/ and val/; repeat for several "
                             f"(default: {DEFAULT_TARGET})"},
            "batch_size": {"help": "images per optimiser step and per evaluation batch (App. H: 64; 128 for CIFAR)"},
            "seed": {"help": "seed of the training / validation image subsets, and the first fit seed "
                             "(fits use --seed, --seed+1, ...)"},
        },
    )
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help=f"methods to run, space- or comma-separated: {', '.join(METHODS)} (aliases: "
                        f"{', '.join(f'{k}={v}' for k, v in METHOD_ALIASES.items() if k in ('lp', 'ft', 'te'))}, or "
                        "hyphens for underscores); default: all, time_embedding_tuning only on models with time "
                        "embeddings (-TE), skipped with a note on the others")
    p.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS,
                   help="fits per (model, dataset, method) with different seeds (new head, adapters, shuffling); "
                        "the tables give mean and std (App. H: 3)")
    p.add_argument("--epochs", type=positive_int, default=APP_H_EPOCHS, help="training epochs per fit (App. H: 40)")
    p.add_argument("--warmup-epochs", type=nonneg_int, default=None,
                   help=f"linear warm-up epochs before the cosine decay; must be < --epochs (default: App. H's "
                        f"{APP_H_WARMUP_EPOCHS} of {APP_H_EPOCHS}, the same fraction 1/8 of --epochs, rounded, "
                        "for other --epochs)")
    p.add_argument("--train-limit", type=positive_int, default=None,
                   help="training images per target: a seeded random subset (--seed), the same for every fit "
                        "(default: the whole train split; shapes-b: 50,000)")
    p.add_argument("--val-limit", type=positive_int, default=None,
                   help="validation images per target: a seeded random subset (default: the whole val split; "
                        "shapes-b: 2,000)")
    p.add_argument("--max-steps-per-epoch", type=positive_int, default=None,
                   help="cap the optimiser steps of each epoch (a smaller budget without a smaller training set; "
                        "default: one pass over the training images)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast for forward passes (GPU; default off)")
    p.add_argument("--num-heads", type=positive_int, default=None,
                   help="attention heads of imported timm: / torchvision: models (a state dict does not record them; "
                        "default: width / 64, as ViT-Ti/S/B/L)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on stderr (cells, epochs, batches)")


def _schedule(args: argparse.Namespace) -> TransferSchedule:
    """App. H's schedule at --epochs / --warmup-epochs / --max-steps-per-epoch (ValueError naming the options)."""
    base = TransferSchedule(max_steps_per_epoch=args.max_steps_per_epoch)
    if args.warmup_epochs is None:
        return base.scaled(args.epochs)
    if args.warmup_epochs >= args.epochs:
        raise ValueError(f"--warmup-epochs {args.warmup_epochs} must be smaller than --epochs {args.epochs}")
    return TransferSchedule(epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                            max_steps_per_epoch=args.max_steps_per_epoch)


def _load_models(args: argparse.Namespace, device: str) -> list[LoadedModel]:
    specs = model_specs(args)
    if args.num_heads is not None and not any(is_imported(s) for s in specs):
        raise ValueError("--num-heads applies to imported models only (--model timm:PATH or torchvision:PATH)")
    loaded = [LoadedModel(source_label(s), s, load_source_model(s, device, args.num_heads)) for s in specs]
    labels = [m.label for m in loaded]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--model: two models share a name ({labels}); rename one checkpoint")
    return loaded


def _open_targets(specs: list[str], models: list[LoadedModel]) -> tuple[dict[str, dict[str, TransferTarget]], list[TransferTarget]]:
    """Every target opened once per distinct model input transform: ({model: {dataset: target}}, one per dataset)."""
    opened: dict[tuple[str, str], TransferTarget] = {}
    per_model: dict[str, dict[str, TransferTarget]] = {}
    for m in models:
        per_model[m.label] = {}
        for spec in specs:
            key = (spec, transform_key(m.model.config))
            if key not in opened:
                opened[key] = open_target(spec, m.model.config)
            per_model[m.label][opened[key].name] = opened[key]
    first = list(per_model[models[0].label].values())
    names = [t.name for t in first]
    if len(set(names)) != len(names):
        raise ValueError(f"--data: two targets share a name ({names}); give the ImageFolder roots distinct names")
    return per_model, first


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    data_specs = list(dict.fromkeys(args.data or [DEFAULT_TARGET]))
    methods = parse_methods(args.methods) if args.methods else list(METHODS)
    schedule = _schedule(args)
    models = _load_models(args, str(device))
    pairs, skipped = plan_pairs({m.label: m.model for m in models}, methods)
    if not pairs:
        raise ValueError(f"--methods {' '.join(methods)}: applies to none of the models "
                         f"({'; '.join(sorted(set(skipped['reason'])))})")
    targets, first = _open_targets(data_specs, models)  # data checked before the run exists
    seeds = [args.seed + i for i in range(args.seeds)]
    options = TransferOptions(train_limit=args.train_limit, val_limit=args.val_limit, batch_size=args.batch_size,
                              subset_seed=args.seed, amp=args.amp)
    for row in skipped.itertuples(index=False):
        print(f"transfer: note: {row.method} skipped for {row.model}: {row.reason}", file=sys.stderr)
    meta_options = {"models": model_specs(args), "data": data_specs, "methods": methods, "seeds": seeds,
                    "schedule": dataclasses.asdict(schedule), **options.to_dict()}
    data = first[0].describe() if len(first) == 1 else {
        "kind": "targets", "spec": data_specs, "targets": [t.describe() for t in first],
        "display": "; ".join(t.describe()["display"] for t in first)}
    meta = {"analysis": analysis_key(__name__), "models": [m.meta() for m in models], "data": data,
            "options": meta_options, "seed": args.seed}
    cells = plan_cells(pairs, [t.name for t in first], seeds)
    with Run.create(args.out, meta, force=args.force) as out:  # an interrupted run releases its lock, stays resumable
        tables = run_transfer(out, {m.label: m.model for m in models}, targets, cells, schedule, options, device,
                              args.workers, progress=args.progress, log=lambda text: print(text, file=sys.stderr))
        summary = write_transfer(out, tables, skipped)
        out.complete(summary={"cells": len(cells), "kept": tables.kept, "trained": tables.trained,
                              "skipped": skipped.to_dict("records")})
    print(f"transfer: wrote {out.path} ({tables.trained} cells trained, {tables.kept} kept from before)")
    print(markdown_table(table4(summary).drop(columns=["trainable_params"])))
    return 0
