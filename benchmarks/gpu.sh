#!/usr/bin/env bash
# GPU benchmark of issue 20 (README "Benchmarks"): hooks, pointing game, feature visualization and
# training measured side by side in one run (estimated 3-5 minutes on one H200, not yet measured;
# its budget stops it at 8 minutes).
# Runs from the repository root without installing the package (PYTHONPATH=repository root).
# Python: $PYTHON if set, else .venv/bin/python if present, else python3 (the GPU image's).
# Usage: bash benchmarks/gpu.sh [--out DIR] [--tiny] [...]   (--help lists every option)
# Writes DIR/gpu_bench.json and DIR/gpu_bench.md (DIR: --out, else $OUT if set, else runs/gpu-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_bench.py "$@"
