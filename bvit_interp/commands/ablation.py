"""``bvit-interp ablation`` (old name ``ablate``): step x head ablation map (zero / mean ablation of one head at one step, step skips)."""

from __future__ import annotations

import argparse
from functools import partial

from ..analysis.ablation import HEAD_MODES, AblationOptions, ablate, drop_matrix
from ..analysis.ablation_plots import plot_ablation_map
from ..registry import analysis_key
from .common import (
    add_common_args,
    add_steps_arg,
    create_run,
    load_models,
    parse_list,
    positive_int,
    print_summary,
    resolve_device,
    val_loader,
    with_model,
    write_tables,
)


def add_parser(p: argparse.ArgumentParser) -> None:
    add_common_args(p, "runs/ablation", default_limit=500)
    p.add_argument("--modes", type=partial(parse_list, kind=str), default=("zero", "mean"),
                   help=f"comma-separated head ablations from {', '.join(HEAD_MODES)} ('none' is a no-op control)")
    p.add_argument("--no-skip", action="store_true", help="do not run whole-step skips")
    add_steps_arg(p, "which 1-based steps to ablate, e.g. 1,6,12 or 1 6 12 (default: all)")
    p.add_argument("--max-batch", type=positive_int,
                   help="images per resumed forward, a layer's variants stacked up to this (default: 1024 on CUDA, "
                        "no stacking on CPU, where it is slower)")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    models = load_models(args, device)
    options = AblationOptions(modes=tuple(args.modes), skip_steps=not args.no_skip,
                              steps=tuple(args.steps) if args.steps else None,
                              max_batch=args.max_batch)
    for m in models:
        n_layers = m.model.num_layers()
        if options.steps and any(not 1 <= s <= n_layers for s in options.steps):
            raise ValueError(f"--steps {','.join(map(str, options.steps))}: model {m.label} has steps 1..{n_layers}")
    loaders = [val_loader(args, m.model.config)[0] for m in models]  # data checked before the run exists
    out = create_run(args, analysis_key(__name__), models, **options.to_dict())
    tables: dict[str, list] = {"head_ablation": [], "step_ablation": []}
    summaries = {}
    for m, loader in zip(models, loaders, strict=True):
        heads, steps, summary = ablate(m.model, loader, options, device)
        tables["head_ablation"].append(with_model(heads, m.label))
        tables["step_ablation"].append(with_model(steps, m.label))
        out.write_arrays(f"drop_{m.label}", **{mode: drop_matrix(heads, mode) for mode in options.modes})
        title = f"{m.label}: accuracy drop (clean {summary['clean_accuracy']:.3f}, {summary['images']} images)"
        out.write_figure(f"ablation_{m.label}", plot_ablation_map(heads, steps, title))
        summaries[m.label] = summary
    write_tables(out, tables)
    out.complete(summary=summaries)
    print_summary(analysis_key(__name__), out, summaries)
    return 0
