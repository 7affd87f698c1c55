"""GPU benchmark (issue 20): the project's GPU goals measured side by side in one short run.

Four sections, each timed round-robin (``bvit_interp.benchmarks``) within its own time budget:

1. hooks: bViT-B 224 px, batch 256, bf16 autocast: plain forward vs CLS-row (``attn.cls_pattern``)
   + ``resid_post`` capture at all 12 steps vs full ``attn.pattern`` capture; peak memory of each.
   Goal: CLS capture <= 1.10x the plain forward.
2. pointing: bViT-B on an ImageNet-S-layout root of synthetic non-square JPEGs with PNG masks
   (written to local disk first, outside the timing; reused when present), loader workers:
   the whole scorer (``score_model``) vs plain inference over a loader of the same images.
   Goals: <= 1.15x, and ImageNet-S919 validation (12,419 images) projected under 60 s.
3. featviz: seconds per (neuron, step) target with K = 1, 16, 64 targets in one batch.
   Goal: >= 5x faster per target at K = 64 than at K = 1.
4. train: images/s of bViT-B and ViT-B at 224 px (batch 256) and of the bundled tiny config
   (batch 64), with the recipes' AMP setting (autocast on CUDA; bf16 here).

Writes ``gpu_bench.json`` and ``gpu_bench.md`` (one table) into ``--out`` after every section,
so a run cut short keeps what it measured. ``--tiny`` runs the same code paths with tiny
models and sizes in seconds on a CPU (the test suite runs it). Needs torch, torchvision, timm,
numpy, pandas, pillow and tqdm; never imports captum, pacmap or streamlit. Run from the
repository root without installing the package (an estimated 3-5 minutes on one H200)::

    bash benchmarks/gpu.sh [--out DIR] [--tiny] [--device auto] [--sections hooks,pointing,featviz,train]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import timm
import torch

from bvit_interp.analysis.sources import ImageNetSSource
from bvit_interp.benchmarks import (
    bench_featviz_batching,
    bench_hooks,
    bench_pointing_loader,
    bench_train,
    make_synthetic_imagenet_s,
)
from bvit_interp.model import build_model

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("hooks", "pointing", "featviz", "train")
IMAGENET_S919_VAL = 12_419
FEATVIZ_DEFAULT_ITERATIONS = 400  # FeatvizOptions().iterations (Ghiasi et al. 2022)
OPTIONAL_MODULES = ("captum", "pacmap", "streamlit")
T0 = time.perf_counter()


@dataclass
class TrainCase:
    """One model of the training section."""

    label: str
    config: str
    batch: int
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """Models, sizes, repetitions and time budgets (seconds) of one run."""

    hooks_model: str
    hooks_batch: int
    hooks_repeats: int
    pointing_model: str
    pointing_images: int
    pointing_classes: int
    pointing_sides: tuple[int, int]
    pointing_batch: int
    pointing_repeats: int
    featviz_model: str
    featviz_ks: tuple[int, ...]
    featviz_singles: int
    featviz_iterations: int
    featviz_copies: int
    featviz_repeats: int
    train_cases: tuple[TrainCase, ...]
    train_iterations: int
    budgets: dict[str, float]

    @classmethod
    def full(cls) -> Plan:
        """The GPU run: bViT-B / ViT-B at 224 px; section budgets sum to 6 minutes (estimated 3-5 on one H200)."""
        return cls(
            hooks_model="bvit_b", hooks_batch=256, hooks_repeats=20,
            pointing_model="bvit_b", pointing_images=4000, pointing_classes=50, pointing_sides=(333, 500),
            pointing_batch=64, pointing_repeats=3,
            featviz_model="bvit_b", featviz_ks=(1, 16, 64), featviz_singles=4, featviz_iterations=10,
            featviz_copies=8, featviz_repeats=3,
            train_cases=(
                TrainCase("bvit_b 224 px", "bvit_b", 256),
                TrainCase("vit_b 224 px", "vit_b", 256),
                TrainCase("bvit_tiny 32 px (bundled config)", "bvit_tiny", 64),
            ),
            train_iterations=10,
            budgets={"hooks": 60, "pointing": 150, "featviz": 75, "train": 75},
        )

    @classmethod
    def tiny(cls) -> Plan:
        """The smoke run: the same code paths with tiny models and sizes, seconds on a CPU."""
        return cls(
            hooks_model="bvit_tiny", hooks_batch=8, hooks_repeats=3,
            pointing_model="bvit_tiny", pointing_images=24, pointing_classes=4, pointing_sides=(40, 72),
            pointing_batch=8, pointing_repeats=2,
            featviz_model="bvit_micro", featviz_ks=(1, 4, 16), featviz_singles=2, featviz_iterations=2,
            featviz_copies=2, featviz_repeats=2,
            train_cases=(
                TrainCase("bvit_micro 16 px", "bvit_micro", 8),
                TrainCase("vit_micro 16 px (4 blocks x 1 step)", "bvit_micro", 8, {"blocks": 4, "steps": 1}),
                TrainCase("bvit_tiny 32 px (bundled config)", "bvit_tiny", 8),
            ),
            train_iterations=3,
            budgets={"hooks": 60, "pointing": 60, "featviz": 60, "train": 60},
        )


def log(message: str) -> None:
    """Print one progress line with the wall-clock time and the seconds since start, flushed."""
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.1f}s] {message}", flush=True)


def section_logger(name: str) -> Callable[[str], None]:
    """A progress printer that prefixes ``name``."""
    return lambda line: log(f"{name}: {line}")


def free_memory(device: torch.device) -> None:
    """Drop unreferenced tensors and return cached accelerator memory between sections."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def goal(name: str, value: float, op: str, limit: float, unit: str, label: str = "") -> dict[str, Any]:
    """A goal check: ``value op limit`` with op '<=', '<' or '>='; ``unit`` 'x' (a ratio) or 's'; ``label`` for the table."""
    met = {"<=": value <= limit, "<": value < limit, ">=": value >= limit}[op]
    return {"goal": name, "value": value, "op": op, "limit": limit, "unit": unit, "label": label, "met": bool(met)}


# ----------------------------------------------------------------------------- sections
def section_hooks(plan: Plan, args: argparse.Namespace, device: torch.device, budget: float) -> dict[str, Any]:
    """Plain forward vs CLS-row + resid_post capture vs full attention-pattern capture."""
    model = build_model(plan.hooks_model)
    cfg = model.config
    rows = bench_hooks(model, plan.hooks_batch, plan.hooks_repeats, device, args.amp, budget, section_logger("hooks"))
    plain_peak = rows[0]["peak_mib"]
    for r in rows:
        r["peak_mib_over_plain"] = r["peak_mib"] - plain_peak
    cls_ratio = rows[1]["time_ratio_vs_plain"]
    return {
        "config": {"model": plan.hooks_model, "img_size": cfg.img_size, "steps": cfg.steps, "batch": plan.hooks_batch,
                   "autocast": "bf16" if args.amp else "off"},
        "rows": rows,
        "goals": [goal("CLS-row + resid_post capture time / plain forward", cls_ratio, "<=", 1.10, "x")],
    }


def default_data_dir(plan: Plan, tiny: bool) -> Path:
    """Where the synthetic ImageNet-S root goes by default (local temporary disk)."""
    tag = "tiny" if tiny else "full"
    return Path(tempfile.gettempdir()) / f"bvit-gpu-bench-imagenet-s-{tag}-{plan.pointing_images}"


def prepare_pointing_data(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    """Write (or reuse) the synthetic ImageNet-S root; runs first, before any CUDA context exists, untimed."""
    say = section_logger("pointing data")
    root = Path(args.data_dir) if args.data_dir else default_data_dir(plan, args.tiny)
    gen_workers = 0 if args.tiny else min(16, os.cpu_count() or 1)
    say(f"{plan.pointing_images} synthetic JPEG + PNG pairs in {root} ({gen_workers or 1} processes; untimed)")
    t = time.perf_counter()
    root, reused = make_synthetic_imagenet_s(root, plan.pointing_images, plan.pointing_classes, plan.pointing_sides,
                                             workers=gen_workers)
    seconds = time.perf_counter() - t
    say(f"{'reused' if reused else 'written'} in {seconds:.1f} s")
    return {"data_dir": str(root), "data_reused": reused, "data_seconds": seconds}


def section_pointing(plan: Plan, args: argparse.Namespace, device: torch.device, budget: float) -> dict[str, Any]:
    """The scorer vs plain inference over loaders of the synthetic ImageNet-S images."""
    start = time.perf_counter()
    say = section_logger("pointing")
    data = args.pointing_data if args.pointing_data is not None else prepare_pointing_data(plan, args)
    root = Path(data["data_dir"])
    source = ImageNetSSource(str(root))
    model = build_model(plan.pointing_model)
    remaining = budget - (time.perf_counter() - start)
    rows = bench_pointing_loader(model, source, len(source), plan.pointing_batch, args.workers, plan.pointing_repeats,
                                 device, args.amp, remaining, say)
    for r in rows:
        r["projected_imagenet_s919_s"] = IMAGENET_S919_VAL / r["images_per_s"]
    scorer = rows[-1]
    return {
        "config": {"model": plan.pointing_model, "images": len(source), "classes": plan.pointing_classes,
                   "longer_side_px": list(plan.pointing_sides), "batch": plan.pointing_batch, "workers": args.workers,
                   "autocast": "on (torch's default dtype, as `bvit-interp pointing`)" if args.amp else "off", **data},
        "rows": rows,
        "goals": [
            goal("scorer time / plain inference time (image loader)", scorer["time_ratio_vs_plain_inference"],
                 "<=", 1.15, "x", "vs image loader"),
            goal("scorer time / plain inference time over the scorer's per-image work (image + mask + distance map)",
                 scorer["time_ratio_vs_scorer_loader"], "<=", 1.15, "x", "vs scorer's loader"),
            goal(f"ImageNet-S919 validation ({IMAGENET_S919_VAL:,} images) projected seconds",
                 scorer["projected_imagenet_s919_s"], "<", 60.0, "s", "S919"),
        ],
    }


def section_featviz(plan: Plan, args: argparse.Namespace, device: torch.device, budget: float) -> dict[str, Any]:
    """Seconds per (neuron, step) target for K targets batched."""
    model = build_model(plan.featviz_model)
    rows = bench_featviz_batching(model, plan.featviz_ks, plan.featviz_iterations, plan.featviz_copies,
                                  plan.featviz_repeats, device, args.amp, plan.featviz_singles, budget,
                                  section_logger("featviz"))
    for r in rows:
        r["projected_seconds_per_target_default_iterations"] = r["seconds_per_target_iteration"] * FEATVIZ_DEFAULT_ITERATIONS
    k_max = max(plan.featviz_ks)
    return {
        "config": {"model": plan.featviz_model, "img_size": model.config.img_size, "ks": list(plan.featviz_ks),
                   "iterations": plan.featviz_iterations, "copies": plan.featviz_copies,
                   "autocast": "bf16" if args.amp else "off"},
        "rows": rows,
        "goals": [goal(f"per-target speed-up at K={k_max} vs K={min(plan.featviz_ks)}",
                       rows[-1]["speedup_per_target_vs_smallest_k"], ">=", 5.0, "x")],
    }


def section_train(plan: Plan, args: argparse.Namespace, device: torch.device, budget: float) -> dict[str, Any]:
    """Training images/s (forward + backward + AdamW) on random data per model."""
    rows = []
    start = time.perf_counter()
    for i, case in enumerate(plan.train_cases):
        say = section_logger(f"train {case.label}")
        share = (budget - (time.perf_counter() - start)) / (len(plan.train_cases) - i)
        model = build_model(case.config, **case.overrides)
        result = bench_train(model, case.batch, plan.train_iterations, device, args.amp, share, say)
        rows.append({"variant": case.label, "batch": case.batch, "img_size": model.config.img_size, **result})
        del model
        free_memory(device)
    if len(rows) >= 2:
        rows[0]["time_ratio_vs_next"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    return {
        "config": {"cases": [asdict(c) for c in plan.train_cases], "iterations": plan.train_iterations,
                   "autocast": "bf16" if args.amp else "off", "optimizer": "AdamW", "data": "random tensors"},
        "rows": rows,
        "goals": [],
    }


RUNNERS: dict[str, Callable[[Plan, argparse.Namespace, torch.device, float], dict[str, Any]]] = {
    "hooks": section_hooks, "pointing": section_pointing, "featviz": section_featviz, "train": section_train,
}


# ----------------------------------------------------------------------------- output
def clean(value: Any) -> Any:
    """JSON-safe copy: NaN / inf -> None, numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Versions, device and settings of this run."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    cuda = device.type == "cuda"
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "tiny" if args.tiny else "full",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "device_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "autocast": "bf16 (pointing: torch's default autocast dtype, as its command)" if args.amp else "off",
        "pointing_autocast_dtype": str(getattr(torch, "get_autocast_dtype", lambda _t: None)(device.type)),
        "git_commit": commit,
        "argv": sys.argv[1:],
    }


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with thousands separators and ``digits`` significant digits (or '-')."""
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def mib(value: float | None) -> str:
    """'peak N MiB', or 'peak n/a' where no accelerator counts memory (CPU)."""
    return "peak n/a" if value is None or not math.isfinite(value) else f"peak {value:,.0f} MiB"


def goal_text(goals: list[dict[str, Any]], tiny: bool) -> str:
    """Goal cells: 'limit: met / NOT met' (tiny runs: for information only)."""
    parts = []
    for g in goals:
        state = "met" if g["met"] else "NOT met"
        limit = f"{g['limit']:.2f}x" if g["unit"] == "x" else f"{g['limit']:g} s"
        label = f"{g['label']} " if g.get("label") else ""
        parts.append(f"{label}{g['op']} {limit}: {state}{' (tiny run)' if tiny else ''}")
    return "; ".join(parts)


def table_rows(name: str, result: dict[str, Any], tiny: bool) -> list[list[str]]:
    """Markdown cells (section, variant, throughput, ratio, memory / notes, goal) of one section."""
    status = result.get("status")
    if status != "ok":
        return [[name, f"{status}: {result.get('error', '')}".strip(), "", "", "", ""]]
    rows, goals = result["rows"], result["goals"]
    out = []
    if name == "hooks":
        for i, r in enumerate(rows):
            over = r["peak_mib_over_plain"]
            extra = f" (+{over:,.0f} MiB over plain)" if i and math.isfinite(over) else ""
            notes = f"{mib(r['peak_mib'])}{extra}; {fmt(r['captured_mib_per_batch'])} MiB captured per batch"
            out.append([name, r["variant"], f"{fmt(r['images_per_s'])} img/s", f"{r['time_ratio_vs_plain']:.3f}x plain",
                        notes, goal_text(goals, tiny) if i == 1 else ""])
    elif name == "pointing":
        for r in rows:
            scorer = r["variant"].startswith("scoring")
            notes = (f"{r['time_ratio_vs_scorer_loader']:.3f}x over the scorer's loader; "
                     f"ImageNet-S919 val projected {fmt(r['projected_imagenet_s919_s'])} s")
            out.append([name, r["variant"], f"{fmt(r['images_per_s'])} img/s",
                        f"{r['time_ratio_vs_plain_inference']:.3f}x plain inference", notes,
                        goal_text(goals, tiny) if scorer else ""])
    elif name == "featviz":
        for i, r in enumerate(rows):
            notes = (f"{r['iterations']} it x {r['copies']} copies timed; {FEATVIZ_DEFAULT_ITERATIONS} it projected "
                     f"{fmt(r['projected_seconds_per_target_default_iterations'])} s/target; "
                     f"{mib(r['peak_mib_one_iteration'])} (one iteration)")
            out.append([name, r["variant"], f"{fmt(r['seconds_per_target'], 4)} s/target",
                        f"{r['speedup_per_target_vs_smallest_k']:.2f}x faster per target than K={rows[0]['K']}",
                        notes, goal_text(goals, tiny) if i == len(rows) - 1 else ""])
    else:
        for i, r in enumerate(rows):
            ratio = f"{r['time_ratio_vs_next']:.3f}x the time of {rows[1]['variant']}" if i == 0 and len(rows) > 1 else ""
            out.append([name, r["variant"], f"{fmt(r['images_per_s'])} img/s", ratio,
                        f"batch {r['batch']}; {mib(r['peak_mib'])}", ""])
    return out


def markdown(report: dict[str, Any]) -> str:
    """The results as one markdown table under a line naming date, device, versions and mode."""
    env, tiny = report["environment"], report["environment"]["mode"] == "tiny"
    head = (f"{env['date_utc']} · {env['device_name']} ({env['device']}) · torch {env['torch']}, CUDA {env['cuda'] or '-'}"
            f", timm {env['timm']}"
            f" · autocast: {env['autocast']} · {env['mode']} run · {report['elapsed_s']:.0f} s")
    lines = ["# GPU benchmark (benchmarks/gpu.sh)", "", head, "",
             "| section | variant | throughput | ratio | memory / notes | goal |", "|---|---|---|---|---|---|"]
    for name, result in report["sections"].items():
        for cells in table_rows(name, result, tiny):
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    """Write gpu_bench.json and gpu_bench.md (each replaced atomically)."""
    report["elapsed_s"] = time.perf_counter() - T0
    report["optional_modules_imported"] = sorted(m for m in OPTIONAL_MODULES if sys.modules.get(m) is not None)
    for name, text in (("gpu_bench.json", json.dumps(clean(report), indent=2) + "\n"), ("gpu_bench.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-bench",
                   help="directory for gpu_bench.json and gpu_bench.md (default: $OUT if set, else runs/gpu-bench)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny models, batches and image counts: the same code paths in seconds on a CPU")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N' (default: auto)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all, in this order)")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                   help="autocast of every section: auto = on for CUDA only (as the training recipes and the "
                   "pointing command do), on = also on a CPU, off = nowhere (default: auto)")
    p.add_argument("--workers", type=int, default=None,
                   help="pointing-game loader workers (default: CPU cores - 2, at most 14; 1 with --tiny)")
    p.add_argument("--pointing-images", type=int, default=None,
                   help="synthetic ImageNet-S images for the pointing game (default: 4000; 24 with --tiny)")
    p.add_argument("--data-dir", default=None,
                   help="where the synthetic ImageNet-S root is written or reused "
                   "(default: a folder in the system's temporary directory)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run: a section that would start later is skipped, and each "
                   "section's repetitions stop early at its share (default: 480; 300 with --tiny)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    if args.workers is None:
        args.workers = 1 if args.tiny else max(1, min(14, (os.cpu_count() or 2) - 2))
    if args.workers < 0:
        p.error("--workers must be >= 0")
    if args.pointing_images is not None and args.pointing_images < 1:
        p.error("--pointing-images must be >= 1")
    if args.budget is None:
        args.budget = 300.0 if args.tiny else 480.0
    return args


def resolve_device(spec: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; an explicit CUDA device must exist."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"gpu_bench: error: --device {spec}: CUDA is not available")
    return torch.device(spec)


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections, writing the JSON and markdown after each; 0 when every section ran."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    args.amp = args.amp == "on" or (args.amp == "auto" and device.type == "cuda")
    plan = Plan.tiny() if args.tiny else Plan.full()
    if args.pointing_images is not None:
        plan.pointing_images = args.pointing_images
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    log(f"{'tiny' if args.tiny else 'full'} run on {device}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"budget {args.budget:.0f} s; results in {out}")
    args.pointing_data, data_error = None, None
    if "pointing" in args.sections:  # forks its writers before the CUDA context exists
        try:
            args.pointing_data = prepare_pointing_data(plan, args)
        except Exception as err:  # reported as the pointing section's error
            data_error = err
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.zeros(1, device=device)  # create the context before any timing
    report: dict[str, Any] = {"environment": environment(device, args), "plan": asdict(plan), "sections": {}}
    env = report["environment"]
    log(f"device {env['device_name']}, autocast {env['autocast']}")
    for name in args.sections:
        elapsed = time.perf_counter() - T0
        share = min(plan.budgets[name], args.budget - elapsed)
        if share <= 0:
            log(f"{name}: skipped (run budget of {args.budget:.0f} s spent)")
            report["sections"][name] = {"status": "skipped", "error": "run budget spent"}
            write_outputs(out, report)
            continue
        log(f"{name}: start (budget {share:.0f} s)")
        start = time.perf_counter()
        try:
            if name == "pointing" and data_error is not None:
                raise data_error
            result = {"status": "ok", **RUNNERS[name](plan, args, device, share)}
        except Exception as err:  # a failing section (out of memory, say) must not lose the others
            traceback.print_exc()
            result = {"status": "error", "error": f"{type(err).__name__}: {err}"[:300], "traceback": traceback.format_exc()}
        result["elapsed_s"] = time.perf_counter() - start
        report["sections"][name] = result
        free_memory(device)
        write_outputs(out, report)
        log(f"{name}: {result['status']} in {result['elapsed_s']:.1f} s")
    print(markdown(report), flush=True)
    log(f"done; wrote {out / 'gpu_bench.json'} and {out / 'gpu_bench.md'}")
    return 0 if all(r["status"] == "ok" for r in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
