"""``bvit-interp featviz``: optimised images of FFN neurons per step, dataset exemplars, activation ratios.

Writes to the run: ``exemplars_all.npz`` (top-k per neuron and step, one pass over the data),
``parts/`` (one npz per optimised target, so an interrupted run resumes), ``images/`` (one PNG
per (neuron, step)), ``featviz.npz`` (all images), tables ``targets`` (activation reached, best
real activation, ratio, spectrum measures), ``cross_steps`` (each image's activation at every
step), ``exemplars`` (top-k per target), ``complexity`` (per-step means) and ``selection`` (per neuron:
how it was chosen, top / given / random control, and how much its exemplars change across the
steps), figures ``grid.png``
(Fig. 3), ``exemplar_grid.png``, ``neuron_<n>.png`` and ``complexity.png``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
import torch

from ..analysis.featviz import (
    PARAMS,
    FeatvizOptions,
    Target,
    TransformOptions,
    complexity_trend,
    denormalize,
    load_inputs,
    step_complexity,
    step_dependence,
    target_tables,
)
from ..analysis.featviz.optimize import SCHEDULES
from ..analysis.featviz_plots import complexity_figure, grid_figure, neuron_figure
from ..defaults import DEFAULT_MODEL
from ..registry import analysis_key
from ..runs.featviz import exemplars as resumable_exemplars
from ..runs.featviz import optimise as resumable_optimise
from .common import (
    add_common_args,
    add_steps_arg,
    create_run,
    float_pair,
    load_models,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    resolve_device,
    val_loader,
)

DEFAULT_TOP = 3


def add_parser(p: argparse.ArgumentParser) -> None:
    add_common_args(p, default_out="runs/featviz", multi_model=False, default_models=(DEFAULT_MODEL,), default_batch_size=128)
    p.add_argument("--exemplars-limit", dest="limit", type=positive_int, default=argparse.SUPPRESS,
                   help="same as --limit: rank exemplars on N validation images")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--neurons", type=nonneg_int, nargs="+", metavar="N", help="FFN hidden units to visualize")
    which.add_argument("--top", type=positive_int, metavar="N",
                       help=f"visualize the N neurons whose best real activation varies most across steps (default {DEFAULT_TOP})")
    p.add_argument("--control-random", type=int, default=0, metavar="N",
                   help="also visualize N randomly drawn neurons (seeded by --seed, none of the selected ones) as a "
                        "control: --top picks neurons whose preferred inputs vary across steps by construction")
    add_steps_arg(p, "which 1-based steps (unrolled layers for a ViT), e.g. 1 4 8 or 1,4,8; default all")
    p.add_argument("--patch", type=nonneg_int, help="maximise the neuron at this patch token instead of its mean over patch tokens")
    p.add_argument("--iterations", type=positive_int, default=400, help="optimisation steps (Ghiasi: 400)")
    p.add_argument("--copies", type=positive_int, default=8, help="augmented copies per image and iteration (Ghiasi: 8)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="Adam learning rate (betas 0.5, 0.99)")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning-rate schedule")
    p.add_argument("--param", choices=PARAMS, default="pixel",
                   help="pixel: clamped pixels (Ghiasi); pixel-sigmoid; spectral: Lucid's 1/f decorrelated parameterization")
    p.add_argument("--tv-weight", type=nonneg_float, default=0.0005, help="total-variation weight (Ghiasi: 0.0005)")
    p.add_argument("--jitter", type=nonneg_int, help="max roll in pixels (default: 32 px at 224 px, scaled to the model's size)")
    p.add_argument("--color-shift", type=nonneg_float, default=1.0, help="colour shift range (0 disables)")
    p.add_argument("--color-scale", type=nonneg_float, default=1.0, help="log colour scale range (0 disables)")
    p.add_argument("--noise", type=nonneg_float, default=0.5, help="std of the annealed per-channel noise at the start")
    p.add_argument("--scale", type=float_pair, help="random zoom range 'lo,hi' (default off)")
    p.add_argument("--rotate", type=nonneg_float, default=0.0, help="max random rotation in degrees (default off)")
    p.add_argument("--images-per-target", type=positive_int, default=1, help="images per (neuron, step); >1 with --diversity")
    p.add_argument("--diversity", type=nonneg_float, default=0.0, help="weight of the diversity penalty between a target's images")
    p.add_argument("--exemplars-k", type=positive_int, default=8, help="dataset exemplars kept per (neuron, step)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the optimisation forward (CUDA speed; slightly changes images)")


def _checked_target(target: Target, model: torch.nn.Module) -> None:
    """``Target.check`` with the option names in the message."""
    try:
        target.check(model)  # type: ignore[arg-type]
    except ValueError as err:
        raise ValueError(f"--neurons/--steps/--patch: {err}") from err


def _options(args: argparse.Namespace) -> FeatvizOptions:
    transforms = TransformOptions(copies=args.copies, jitter=args.jitter, color_shift=args.color_shift,
                                  color_scale=args.color_scale, noise=args.noise, scale=args.scale, rotate=args.rotate)
    return FeatvizOptions(iterations=args.iterations, lr=args.lr, schedule=args.schedule, param=args.param,
                          tv_weight=args.tv_weight, diversity=args.diversity,
                          images_per_target=args.images_per_target, transforms=transforms, seed=args.seed)


def _print_summary(table: pd.DataFrame, per_step: pd.DataFrame, trend: dict[str, float]) -> None:
    first = table[table["image"] == 0]
    print("neuron  step  reached  best real  ratio  hf_energy  slope  png_bpp")
    for r in first.itertuples():
        print(f"{r.neuron:>6}  {r.step:>4}  {r.activation:7.3f}  {r.best_real:9.3f}  {r.ratio:5.2f}"
              f"  {r.hf_energy:9.3f}  {r.spectral_slope:5.2f}  {r.png_bpp:7.2f}")
    print(f"\nratio reached / best real: median {table['ratio'].median():.2f}, "
          f"{(table['ratio'] > 1).mean():.0%} of images above 1")
    print("per step (mean over neurons): " + ", ".join(
        f"{int(r.step)}: hf {r.hf_energy_mean:.3f} slope {r.spectral_slope_mean:.2f}" for r in per_step.itertuples()))
    print("Spearman rho of step with: " + ", ".join(f"{k} {v:+.2f}" for k, v in trend.items())
          + "  (hf/png > 0 or slope > 0: later steps carry more fine detail)")


def _print_selection(chosen: pd.DataFrame) -> None:
    """Step dependence of the selected neurons beside the random control (means per selection)."""
    means = chosen.groupby("selection", sort=False)[["spread", "exemplar_jaccard", "top_changes"]].mean()
    print("\nstep dependence of the exemplars (mean per selection; Jaccard 1 = same images at every step):")
    for name, r in means.iterrows():
        print(f"  {name:<7} spread of best real {r.spread:.3f}, exemplar Jaccard across steps {r.exemplar_jaccard:.3f}, "
              f"top exemplar changes {r.top_changes:.0%}")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    (loaded,) = load_models(args, device)
    model = loaded.model
    options = _options(args)
    if args.top is not None and args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    if args.control_random < 0:
        raise ValueError(f"--control-random must be >= 0, got {args.control_random}")
    for n in args.neurons or [0]:  # targets checked before the run exists (--top's neurons come later)
        for s in args.steps or [1]:
            _checked_target(Target(n, s, args.patch), model)
    statistic = "mean" if args.patch is None else "max"
    loader, _ = val_loader(args, model.config)
    run_dir = create_run(args, analysis_key(__name__), [loaded], featviz=options.to_dict(), neurons=args.neurons, top=args.top,
                         steps=args.steps, patch=args.patch, exemplars_k=args.exemplars_k, amp=args.amp,
                         control_random=args.control_random)
    subset = loader.dataset
    dataset, indices = subset.dataset, subset.indices  # type: ignore[attr-defined]

    exemplars = resumable_exemplars(run_dir, model, dataset, args.exemplars_k, indices, statistic, args.batch_size,
                                    args.workers)

    selected = args.neurons or exemplars.most_variable(args.top or DEFAULT_TOP)
    control = exemplars.random_neurons(args.control_random, args.seed, exclude=selected) if args.control_random else []
    neurons = [*selected, *control]
    selection = {**{int(n): "given" if args.neurons else "top" for n in selected}, **{n: "random" for n in control}}
    steps = args.steps or list(range(1, model.num_layers() + 1))
    targets = [Target(n, s, args.patch) for n in neurons for s in steps]
    for t in targets:
        t.check(model)
    per_batch = max(1, args.batch_size // (options.transforms.copies * options.images_per_target))
    vis = resumable_optimise(model, targets, options, run_dir, per_batch, args.amp)

    table, cross = target_tables(model, vis, exemplars, args.batch_size)
    table.insert(1, "selection", table["neuron"].map(selection))
    chosen = step_dependence(exemplars, neurons, steps, selection)
    chosen = chosen.merge(table.groupby("neuron")["ratio"].median().rename("median_ratio").reset_index(), on="neuron")
    per_step = step_complexity(table)
    pairs = [(t.neuron, t.step) for t in targets]
    ex_table = exemplars.table(pairs)
    ex_images = denormalize(load_inputs(dataset, ex_table["image_index"].tolist()), model.config).numpy()
    k = exemplars.values.shape[-1]
    ex_images = ex_images.reshape(len(targets), k, *ex_images.shape[1:])
    run_dir.write_table("targets", table)
    run_dir.write_table("cross_steps", cross)
    run_dir.write_table("exemplars", ex_table)
    run_dir.write_table("complexity", per_step)
    run_dir.write_table("selection", chosen)
    images = vis.images.numpy()
    run_dir.write_arrays("featviz", images=images, neurons=np.array([t.neuron for t in targets]),
                         steps=np.array([t.step for t in targets]), exemplar_images=ex_images)
    for i, t in enumerate(targets):
        for j in range(images.shape[1]):
            run_dir.write_image(f"images/n{t.neuron}_s{t.step}" + (f"_{j}" if images.shape[1] > 1 else ""), images[i, j])

    first = table[table["image"] == 0].reset_index(drop=True)
    cells = {(t.neuron, t.step): images[i, 0] for i, t in enumerate(targets)}
    ratios = {(t.neuron, t.step): f"x{first.loc[i, 'ratio']:.2f}" for i, t in enumerate(targets)}
    title = f"{loaded.label}: optimised images (caption: activation / best real activation)"
    run_dir.write_figure("grid", grid_figure(cells, ratios, title=title))
    ex_cells = {(t.neuron, t.step): ex_images[i, 0] for i, t in enumerate(targets)}
    ex_patches = {(t.neuron, t.step): int(exemplars.patches[t.layer, t.neuron, 0]) for t in targets}
    ex_labels = {(t.neuron, t.step): f"{exemplars.best(t.neuron, t.step):.2f}" for t in targets}
    run_dir.write_figure("exemplar_grid", grid_figure(ex_cells, ex_labels, ex_patches, model.config.patch_size,
                                                      title=f"{loaded.label}: top dataset exemplar (peak patch boxed)"))
    for neuron in neurons:
        mine = [i for i, t in enumerate(targets) if t.neuron == neuron]
        fig = neuron_figure(neuron, [targets[i].step for i in mine],
                            {targets[i].step: images[i, 0] for i in mine}, {targets[i].step: ex_images[i] for i in mine},
                            {targets[i].step: exemplars.patches[targets[i].layer, neuron].tolist() for i in mine},
                            model.config.patch_size)
        run_dir.write_figure(f"neuron_{neuron}", fig)
    run_dir.write_figure("complexity", complexity_figure(per_step))
    trend = complexity_trend(table)
    run_dir.complete(neurons=list(neurons), control_neurons=list(control), steps=list(steps), complexity_trend=trend,
                     median_ratio=float(table["ratio"].median()))
    _print_summary(table, per_step, trend)
    _print_selection(chosen)
    print(f"\nrun written to {run_dir.path}", file=sys.stderr)
    return 0
