#!/usr/bin/env bash
# The one recorded training command of each bundled model (issue 14: shapes v2), resumable.
# Usage: bash scripts/train_bundled.sh [MODEL ...]   (default: all four, one after the other)
# Each run goes to runs/train/<model>_v2; a finished run (result.json) is skipped, an
# interrupted one continues from its train_state.pt. About 90 min per model alone on the
# 2-core machine of sessions 2-4, about 2.5 h on the AMD EPYC (AVX2) one of session 5. One
# loader worker renders the next batch while the model trains (the same images; flips drawn from the
# worker's own seeded RNG). Rendering is about 6% of a step, so this buys little: 1.14x in a
# 30-iteration probe, 58 images/s with and without it over whole vit_tiny epochs.
# bvit_tiny's run, before this flag, rendered in the training process.
# Then: python scripts/bundle_models.py --name <model> runs/train/<model>_v2 (see MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(bvit_tiny bvit_tiny_te bvit_tiny_reg vit_tiny)
for model in "${models[@]}"; do
  out=runs/train/${model}_v2
  [ -f "$out/result.json" ] && { echo "== $model: done ($out)"; continue; }
  resume=()
  [ -f "$out/train_state.pt" ] && resume=(--resume)
  echo "== $model -> $out ${resume[*]}"
  "$BIN/bvit-interp" train --model "$model" --model-kwargs img_size=48 patch_size=6 --shapes-version 2 \
    --out "$out" --shapes-train-size 16000 --epochs 32 --curriculum-epochs 4 --lr 1e-3 \
    --warmup-epochs 0.5 --val-limit 1000 --seed 0 --workers 1 "${resume[@]}"
done
