"""``bvit-interp demo``: every analysis on the bundled models, one run directory each, under one root."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..defaults import BUNDLED, model_path


def _available() -> list[str]:
    out = []
    for name in BUNDLED:
        try:
            model_path(name)
            out.append(name)
        except FileNotFoundError:
            pass
    return out


def plan(root: Path, models: list[str], quick: bool) -> list[tuple[str, list[str]]]:
    """(title, argv) of each analysis; ``quick`` shrinks image counts and schedules for CI."""
    limit = ["--limit", "300" if quick else "1000"]
    pair = [m for m in models if m in ("bvit_tiny", "vit_tiny")]
    multi = [a for m in models for a in ("--model", m)]
    pair_args = [a for m in pair for a in ("--model", m)]
    steps = [
        ("pointing game", ["pointing-game", *multi, "--out", str(root / "pointing")]
         + (["--limit", "500"] if quick else [])),
        ("svd ranks", ["svd", *pair_args, *limit, "--out", str(root / "svd")]),
        ("per-step readout", ["lens", *pair_args, *limit, "--out", str(root / "lens")]),
        ("step x head ablation", ["ablate", *pair_args, *limit, "--out", str(root / "ablate")]),
        ("trajectories", ["trajectories", *pair_args, "--limit", "200" if quick else "500", "--out", str(root / "trajectories")]),
        ("early exit", ["early-exit", *pair_args, *limit, "--train-limit", "1000" if quick else "5000",
                        "--epochs", "3" if quick else "30", "--out", str(root / "early_exit")]),
        ("feature visualization", ["featviz", "--model", models[0], "--top", "2" if quick else "3",
                                   "--control-random", "2" if quick else "3",
                                   "--steps", "1", "4", "8", "12", "--iterations", "40" if quick else "200",
                                   "--copies", "2" if quick else "4", "--exemplars-limit", "300" if quick else "2000",
                                   "--out", str(root / "featviz")]),
        # rewinding to the trained bundled weights: from a fresh init the quick preset's CPU
        # budget leaves the model at chance, and masks of an untrained block mean nothing
        ("step-masked pruning", ["prune", "--preset", "quick", "--init-from", models[0],
                                 *(["--rounds", "1"] if quick else []), "--out", str(root / "prune")]),
    ]
    return steps


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="root directory; one run per analysis inside it")
    p.add_argument("--quick", action="store_true", help="small image counts and short schedules (CI, first look)")
    p.add_argument("--only", nargs="*", help="run only the analyses whose command names are given (e.g. pointing-game svd)")
    p.add_argument("--force", action="store_true", help="recompute analyses that already have a finished run")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def run(args: argparse.Namespace) -> int:
    from ..cli import main

    models = _available()
    if not models:
        raise FileNotFoundError("no bundled models found in models/; train them first (see models/MODEL_CARD.md)")
    root = Path(args.out)
    results = []
    for title, argv in plan(root, models, args.quick):
        if args.only and argv[0] not in args.only:
            continue
        out = Path(argv[argv.index("--out") + 1])
        if (out / "meta.json").exists() and '"complete"' in (out / "meta.json").read_text() and not args.force:
            results.append((title, "kept", 0.0))
            continue
        print(f"\n=== {title}: bvit-interp {' '.join(argv)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        code = main([*argv, "--force"] if args.force else argv)
        results.append((title, "ok" if code == 0 else f"failed ({code})", time.perf_counter() - t0))
    print("\nanalysis                 status       seconds")
    for title, status, secs in results:
        print(f"{title:<24} {status:<12} {secs:7.1f}")
    print(f"\nruns in {root}; browse them with: streamlit run app/main.py -- --runs {root}")
    return 0 if all(s in ("ok", "kept") for _, s, _ in results) else 1
