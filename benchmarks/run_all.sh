#!/usr/bin/env bash
# Every benchmark of the project, one after the other, on the machine at hand (README "Benchmarks").
# Each prints ratios measured side by side in one run; run it on an otherwise idle machine.
# Usage: bash benchmarks/run_all.sh [LOG_DIR]   (default: runs/bench; one log per benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
LOG=${1:-runs/bench}
mkdir -p "$LOG"
run() { local name=$1; shift; echo "=== $name: $*"; "$@" 2>&1 | tee "$LOG/$name.log"; }
run train        "$BIN/bvit-interp" bench train --iters 5
run pointing     "$BIN/bvit-interp" bench pointing-game --images 256 --images-224 8 --repeats 3
run pointing_w1  "$BIN/bvit-interp" bench pointing-game --images 256 --images-224 0 --repeats 3 --workers 1
run hooks        "$BIN/bvit-interp" bench hooks --repeats 3
run featviz      "$BIN/python" benchmarks/bench_featviz.py
run svd          "$BIN/python" benchmarks/bench_svd.py
run dynamics     "$BIN/python" benchmarks/bench_dynamics.py
run causal       "$BIN/python" benchmarks/bench_causal.py --ig-steps 8
run demo_latency "$BIN/python" benchmarks/demo_latency.py --out "$LOG/demo"
