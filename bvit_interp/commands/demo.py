"""``bvit-interp demo``: every registered analysis on the bundled models, cheapest first, one run each under one root."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..defaults import BUNDLED, model_path
from ..registry import AnalysisSpec, analyses, find_analysis


def _available() -> list[str]:
    out = []
    for name in BUNDLED:
        try:
            model_path(name)
            out.append(name)
        except FileNotFoundError:
            pass
    return out


def plan(root: Path, models: list[str], quick: bool) -> list[tuple[AnalysisSpec, list[str]]]:
    """(analysis, argv) of every registered analysis, cheapest first; each writes ``<root>/<key>``.

    ``quick`` takes the specs' small image counts and short schedules (CI, a first look).
    """
    return [(spec, spec.demo_args(root, models, quick)) for spec in analyses()]


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="root directory; one run per analysis inside it (<root>/<key>)")
    p.add_argument("--quick", action="store_true", help="small image counts and short schedules (CI, first look)")
    p.add_argument("--only", nargs="*", help="run only these analyses (keys or command names, e.g. pointing rank)")
    p.add_argument("--force", action="store_true", help="recompute analyses that already have a finished run")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def run(args: argparse.Namespace) -> int:
    from ..cli import main

    only = set()
    for name in args.only or []:
        spec = find_analysis(name)
        if spec is None:
            raise ValueError(f"--only {name}: no such analysis; known: {', '.join(s.key for s in analyses())}")
        only.add(spec.key)
    models = _available()
    if not models:
        raise FileNotFoundError("no bundled models found in models/; train them first (see models/MODEL_CARD.md)")
    root = Path(args.out)
    results = []
    for spec, argv in plan(root, models, args.quick):
        if only and spec.key not in only:
            continue
        out = root / spec.key
        if (out / "meta.json").exists() and '"complete"' in (out / "meta.json").read_text() and not args.force:
            results.append((spec.title, "kept", 0.0))
            continue
        print(f"\n=== {spec.title}: bvit-interp {' '.join(argv)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        code = main([*argv, "--force"] if args.force else argv)
        results.append((spec.title, "ok" if code == 0 else f"failed ({code})", time.perf_counter() - t0))
    print("\nanalysis                 status       seconds")
    for title, status, secs in results:
        print(f"{title:<24} {status:<12} {secs:7.1f}")
    print(f"\nruns in {root}; browse them with: streamlit run app/main.py -- --runs {root}")
    return 0 if all(s in ("ok", "kept") for _, s, _ in results) else 1
