"""Issue 14's lever table: train the bundled bViT geometry on shapes v2 with one change at a time.

Every lever runs the same sample budget (``--samples``, split into 4 epochs of fresh images so
that each run has a 4-point learning curve) from the same seed, and differs from ``baseline``
only where its overrides say. The baseline is the recipe of the shapes-v2 bViT in
models/MODEL_CARD.md (lr 1e-3, 8k warm-up samples, clutter and position curriculum over the
first quarter of the budget) at a smaller budget. Runs land in ``--runs/<lever>`` and resume; finished ones are
skipped. The table (markdown) is rewritten after every run.

    python scripts/levers.py --samples 64000 --table models/training/levers.md [--only a,b]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bvit_interp.train import TrainConfig, train

GEOMETRY = {"img_size": 48, "patch_size": 6}  # shapes v2: 8 x 8 patches, 65 tokens like v1

# name -> (what it changes, TrainConfig overrides, model overrides)
LEVERS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "baseline": ("AdamW lr 1e-3, wd 0.05, ls 0.1, 8k warm-up samples, EMA 0.995, curriculum over the first quarter",
                 {}, {}),
    "lr_2e-3": ("peak lr 2e-3", {"lr": 2e-3}, {}),
    "lr_5e-4": ("peak lr 5e-4", {"lr": 5e-4}, {}),
    "warmup_long": ("warm-up over the first quarter (16k samples at the default budget)", {"warmup_epochs": 1.0}, {}),
    "mimetic": ("mimetic attention init (Trockman & Kolter 2023)", {"init": "mimetic"}, {}),
    "sincos": ("fixed 2-D sin-cos position embedding", {"pos_embed": "sincos"}, {}),
    "aux_loc_0.1": ("relative-localisation loss, weight 0.1 (Liu et al. 2021)", {"aux_loc": 0.1}, {}),
    "distill_soft": ("soft distillation (T 2, alpha 0.5) from a timm resnet10t trained on the same data",
                     {"teacher": "TEACHER"}, {}),
    "batch_32": ("batch 32 (twice the optimizer steps), lr scaled to 5e-4", {"batch_size": 32, "lr": 5e-4}, {}),
    "no_smoothing": ("label smoothing 0", {"label_smoothing": 0.0}, {}),
    "wd_0.1": ("weight decay 0.1", {"weight_decay": 0.1}, {}),
    "width_192": ("width 192, 6 heads", {}, {"embed_dim": 192, "num_heads": 6}),
    "curriculum_half": ("longer curriculum: clutter and position ramp over the first half", {"curriculum_epochs": 2.0}, {}),
}


def config_for(name: str, samples: int, runs: Path, teacher: str, seed: int) -> TrainConfig:
    """The TrainConfig of one lever: baseline settings plus the lever's overrides."""
    _, train_over, model_over = LEVERS[name]
    train_over = {k: (teacher if v == "TEACHER" else v) for k, v in train_over.items()}
    base = {
        "model": "bvit_tiny", "data": "shapes", "shapes_version": 2, "recipe": "shapes",
        "epochs": 4, "shapes_train_size": samples // 4, "lr": 1e-3, "warmup_epochs": 8000 / (samples // 4),
        "curriculum_epochs": 1.0, "val_limit": 1000,
        "out": str(runs / name), "seed": seed, "save_name": "model",
        "model_overrides": {"num_classes": 10, **GEOMETRY, **model_over},
    }
    return TrainConfig(**{**base, **train_over})


def write_table(runs: Path, table: Path, samples: int) -> None:
    """Markdown table of every finished lever (val accuracy on the first 1000 val images)."""
    lines = [
        f"| lever | what changes | val acc after {samples // 4000}k / {samples // 2000}k / {3 * samples // 4000}k / "
        f"{samples // 1000}k samples (raw) | final EMA | images/s |",
        "|---|---|---|---|---|",
    ]
    for name, (what, _, _) in LEVERS.items():
        metrics = runs / name / "metrics.jsonl"
        if not (runs / name / "result.json").exists():
            continue
        hist = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        curve = " / ".join(f"{h['val_acc']:.3f}" for h in hist)
        ema = hist[-1].get("val_acc_ema")
        speed = sum(h["images_per_s"] for h in hist) / len(hist)
        lines.append(f"| `{name}` | {what} | {curve} | {ema:.3f} | {speed:.0f} |")
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=64_000, help="training images per lever")
    p.add_argument("--runs", default="runs/levers", help="one run directory per lever below this")
    p.add_argument("--table", default="models/training/levers.md", help="markdown table to (re)write")
    p.add_argument("--teacher", default="runs/levers/teacher", help="timm CNN teacher checkpoint (trained if missing)")
    p.add_argument("--only", help="comma-separated levers to run (default: all, in table order)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    args = p.parse_args()
    runs, table = Path(args.runs), Path(args.table)
    names = args.only.split(",") if args.only else list(LEVERS)
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        p.error(f"--only: unknown levers {unknown}; known: {list(LEVERS)}")
    for name in names:
        if (runs / name / "result.json").exists():
            continue
        if LEVERS[name][1].get("teacher") and not Path(args.teacher + ".json").exists():
            from bvit_interp.data.shapes import ShapesConfig
            from bvit_interp.teacher import train_teacher

            rec = train_teacher(args.teacher, "resnet10t", ShapesConfig.preset(2), seed=args.seed)
            print(json.dumps({"teacher": rec}), file=sys.stderr, flush=True)
        cfg = config_for(name, args.samples, runs, args.teacher, args.seed)
        resume = (runs / name / "train_state.pt").exists()
        print(f"== lever {name}{' (resuming)' if resume else ''}", file=sys.stderr, flush=True)
        train(TrainConfig(**{**cfg.__dict__, "resume": resume, "force": not resume}))
        write_table(runs, table, args.samples)
    write_table(runs, table, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
