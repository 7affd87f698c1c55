"""``bvit-interp train``: options map one to one onto ``TrainConfig``; unset options take the recipe's value."""

from __future__ import annotations

import argparse
import json

from ..data.datasets import build_datasets
from ..model.config import get_config
from ..train import RECIPES, TrainConfig, train
from .common import (
    add_common_args,
    float_pair,
    fraction,
    nonneg_float,
    positive_float,
    positive_int,
    resolve_device,
)


def parse_model_kwargs(items: list[str]) -> dict[str, object]:
    """['img_size=48', 'time_embed=true'] -> {'img_size': 48, 'time_embed': True} (JSON values, else strings)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-kwargs: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_parser(p: argparse.ArgumentParser) -> None:
    add_common_args(p, "runs/train", multi_model=False, default_models=("bvit_tiny",), default_batch_size=None,
                    only=("model", "data", "out", "batch_size", "workers", "device", "seed", "force", "debug"), overrides={
                        "model": {"metavar": "NAME", "help": "named config (bvit_tiny, vit_tiny, bvit_b, vit_s_2b6s, ...)"},
                        "out": {"help": "output directory (checkpoints, metrics.jsonl, model.safetensors)"},
                        "batch_size": {"help": "global batch size (split over torchrun processes)"},
                        "seed": {"help": "random seed of torch, NumPy and Python (recorded in the outputs)"},
                        "force": {"help": "train into a non-empty OUT"},
                    })
    p.add_argument("--recipe", choices=sorted(RECIPES), help="preset for unset options (default: 'shapes' for shapes data, else 'paper')")
    p.add_argument("--epochs", type=positive_float, help="epochs (fractions allowed)")
    p.add_argument("--base-lr", type=positive_float, help="base lr; peak lr = base_lr * batch_size / 512")
    p.add_argument("--lr", type=positive_float, help="absolute peak lr (overrides --base-lr)")
    p.add_argument("--weight-decay", type=nonneg_float, help="AdamW weight decay (none on norms, biases, tokens)")
    p.add_argument("--warmup-epochs", type=nonneg_float, help="linear warm-up length in epochs")
    p.add_argument("--warmup-factor", type=nonneg_float, help="warm-up starts at this fraction of the peak lr")
    p.add_argument("--label-smoothing", type=fraction, help="label smoothing")
    p.add_argument("--mixup", type=nonneg_float, help="Mixup alpha (0 disables)")
    p.add_argument("--cutmix", type=nonneg_float, help="CutMix alpha (0 disables)")
    p.add_argument("--ema-decay", type=fraction, help="EMA decay of the weights (0 disables)")
    p.add_argument("--crop-scale", type=float_pair, help="RandomResizedCrop scale range 'lo,hi'")
    p.add_argument("--crop-ratio", type=float_pair, help="RandomResizedCrop aspect ratio range 'lo,hi'")
    p.add_argument("--hflip", type=fraction, help="horizontal flip probability")
    p.add_argument("--rand-augment", help="timm RandAugment spec, e.g. rand-m9-mstd0.5-inc1 ('' disables)")
    p.add_argument("--reprob", type=fraction, help="Random Erasing probability")
    p.add_argument("--clip-grad", type=nonneg_float, help="gradient-norm clipping (0 disables)")
    p.add_argument("--shapes-train-size", type=positive_int, default=50_000, help="shapes images per epoch (fresh images every epoch)")
    p.add_argument("--curriculum-epochs", type=nonneg_float, default=0.0, help="shapes only: ramp background clutter from none (epoch 0) to full over this many epochs")
    p.add_argument("--shapes-version", type=int, default=0,
                   help="shapes dataset version (1: 32 px originals, 2: small objects anywhere at 48 px; 0: the default)")
    p.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides as timm's --model-kwargs, e.g. img_size=48 patch_size=6 embed_dim=192")
    p.add_argument("--pos-embed", choices=("learned", "sincos"), default="learned",
                   help="position embedding: learned (timm) or a fixed 2-D sin-cos table (frozen)")
    p.add_argument("--init", choices=("timm", "mimetic"), default="timm",
                   help="weight init: timm's, or mimetic attention init (Trockman & Kolter 2023)")
    p.add_argument("--aux-loc", type=nonneg_float, default=0.0,
                   help="weight of the dense relative-localisation loss (Liu et al. 2021); 0 disables")
    p.add_argument("--teacher", metavar="PATH|timm:ARCH",
                   help="distil from this checkpoint, or train the timm CNN ARCH on the same shapes data first")
    p.add_argument("--distill", choices=("soft", "hard"),
                   help="distillation target (default: hard for -dist models, as App. C; soft otherwise)")
    p.add_argument("--distill-alpha", type=nonneg_float, default=0.5, help="weight of the distillation term")
    p.add_argument("--distill-tau", type=positive_float, default=2.0, help="soft-distillation temperature")
    p.add_argument("--num-classes", type=positive_int, help="override the model's number of classes")
    p.add_argument("--val-limit", type=positive_int, help="evaluate on the first N validation images only")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt (one process: exactly, random generators included)")
    p.add_argument("--save-name", help="file stem of the final model in OUT (default 'model')")


def _check_inputs(args: argparse.Namespace, overrides: dict[str, object]) -> None:
    """Device, model config and data root fail here, naming the option, before OUT is created."""
    resolve_device(args.device)
    get_config(args.model, **overrides)
    if args.data != "shapes":
        build_datasets(args.data, None, None)


def run(args: argparse.Namespace) -> int:
    fields = {f: getattr(args, f) for f in (
        "model", "data", "out", "recipe", "epochs", "batch_size", "base_lr", "lr", "weight_decay",
        "warmup_epochs", "warmup_factor", "label_smoothing", "mixup", "cutmix", "ema_decay", "crop_scale",
        "crop_ratio", "hflip", "rand_augment", "reprob", "clip_grad", "shapes_train_size", "curriculum_epochs", "val_limit",
        "workers", "device", "seed", "resume", "force", "save_name", "shapes_version", "pos_embed", "init",
        "aux_loc", "teacher", "distill", "distill_alpha", "distill_tau",
    )}
    overrides = parse_model_kwargs(args.model_kwargs)
    if args.num_classes:
        overrides["num_classes"] = args.num_classes
    _check_inputs(args, overrides)
    result = train(TrainConfig(**fields, amp=not args.no_amp, model_overrides=overrides))
    print(json.dumps({k: result[k] for k in ("val_acc", "weights", "train_time_s", "samples_seen", "hardware")}, indent=2))
    return 0
