"""``bvit-interp bench {hooks,pointing-game,train}``: speed figures measured side by side on this machine."""

from __future__ import annotations

import argparse
import platform

import pandas as pd
import torch

from ..benchmarks import RandomSource, bench_hooks, bench_pointing, bench_train, bench_train_loop
from ..data.sources import open_source
from ..defaults import DEFAULT_MODEL, model_path, resolve_model
from ..distributed import DistInfo, resolve_device
from ..model import build_model
from .common import HelpFormatter


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    h = sub.add_parser("hooks", help="plain forward vs CLS-row capture vs full-pattern capture (bViT-B, 224 px)",
                       formatter_class=HelpFormatter)
    h.add_argument("--model", default="bvit_b", help="named config (random weights) to time")
    h.add_argument("--batch-size", type=int, default=8, help="images per forward")
    h.add_argument("--repeats", type=int, default=5, help="timed repetitions per variant (median reported)")
    h.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    g = sub.add_parser("pointing-game", help="plain forward vs the full scoring pipeline, bundled model and bViT-B",
                       formatter_class=HelpFormatter)
    g.add_argument("--images", type=int, default=256, help="images for the bundled model")
    g.add_argument("--images-224", type=int, default=16, help="random 224 px images for bViT-B (0 skips it)")
    g.add_argument("--batch-size", type=int, default=64, help="images per forward")
    g.add_argument("--repeats", type=int, default=3, help="timed repetitions per variant (median reported)")
    g.add_argument("--workers", type=int, default=0, help="loader workers of the scoring pipeline")
    g.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    t = sub.add_parser("train", help="training images/s for the bundled config and bViT-B at 224 px",
                       formatter_class=HelpFormatter)
    t.add_argument("--iters", type=int, default=5, help="timed iterations of the random-data rows (median reported)")
    t.add_argument("--loop-iters", type=int, default=20,
                   help="iterations per round of the project-loop vs bare-loop comparison (0 skips it)")
    t.add_argument("--loop-rounds", type=int, default=3, help="alternating rounds of that comparison (median reported)")
    t.add_argument("--shapes-version", type=int, default=0, help="shapes version of that comparison (0: the default)")
    t.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides of the bundled config for that comparison, e.g. img_size=48 patch_size=6")
    t.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def _header(device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")


def _bundled_or_random() -> tuple[str, torch.nn.Module]:
    try:
        model_path(DEFAULT_MODEL)
        return DEFAULT_MODEL, resolve_model(DEFAULT_MODEL)
    except FileNotFoundError:
        return f"{DEFAULT_MODEL} (random weights: bundled checkpoint missing)", build_model(DEFAULT_MODEL)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, DistInfo())
    _header(device)
    pd.set_option("display.width", 160)
    if args.bench == "hooks":
        model = build_model(args.model)
        print(f"{args.model} at {model.config.img_size} px, batch {args.batch_size}, every step captured")
        print(pd.DataFrame(bench_hooks(model, args.batch_size, args.repeats, device)).to_string(index=False, float_format="%.3f"))
    elif args.bench == "pointing-game":
        label, model = _bundled_or_random()
        rows = [dict(r, model=label) for r in bench_pointing(model, open_source("shapes", model.config), args.images, args.batch_size, args.repeats, device, args.workers)]
        if args.images_224:
            big = build_model("bvit_b")
            rows += [dict(r, model="bvit_b 224px (random)") for r in bench_pointing(
                big, RandomSource(args.images_224, 256), args.images_224, min(args.batch_size, 8), args.repeats, device, args.workers)]
        print(pd.DataFrame(rows)[["model", "variant", "images_per_s", "time_ratio_vs_plain", "time_ratio_vs_loading"]].to_string(index=False, float_format="%.3f"))
    else:
        if args.loop_iters:
            from .train import parse_model_kwargs

            loop = bench_train_loop(DEFAULT_MODEL, parse_model_kwargs(args.model_kwargs), args.shapes_version, 64,
                                    args.loop_iters, args.loop_rounds)
            print(f"{DEFAULT_MODEL} config, batch 64, fresh shapes images, {args.loop_rounds} alternating rounds:")
            print(pd.DataFrame(loop).to_string(index=False, float_format="%.3f"))
        label, model = _bundled_or_random()
        rows = [dict(bench_train(model, 64, args.iters, device), model=label, batch=64)]
        rows.append(dict(bench_train(build_model("bvit_b"), 8, max(2, args.iters // 2), device), model="bvit_b 224px", batch=8))
        print(pd.DataFrame(rows)[["model", "batch", "images_per_s", "seconds_per_iteration"]].to_string(index=False, float_format="%.3f"))
    return 0
