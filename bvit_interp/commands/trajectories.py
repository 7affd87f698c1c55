"""``bvit-interp trajectories``: joint PaCMAP of the CLS state of every image at every step (App. E.2, Fig. 9)."""

from __future__ import annotations

import argparse

from ..analysis.trajectories import NORMALIZATIONS, TrajectoryOptions, trajectories
from ..analysis.trajectories_plots import plot_centroids, plot_class_panels
from ..registry import analysis_key
from .common import (
    add_common_args,
    add_max_steps_arg,
    create_run,
    load_models,
    positive_int,
    print_summary,
    resolve_device,
    val_loader,
    with_model,
    write_tables,
)


def add_parser(p: argparse.ArgumentParser) -> None:
    add_common_args(p, "runs/trajectories", default_limit=500)
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="none",
                   help="normalise states before PaCMAP: per point by RMS, or z-score each step's cloud")
    p.add_argument("--neighbors", type=positive_int, default=10, help="PaCMAP n_neighbors")
    p.add_argument("--knn", type=positive_int, default=10, help="k of the kNN-preservation score")
    add_max_steps_arg(p, "recurrent steps to run (default: the trained horizon)", old_steps=True)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    models = load_models(args, device)
    options = TrajectoryOptions(normalize=args.normalize, n_neighbors=args.neighbors, knn=args.knn, steps=args.max_steps)
    loaders = [val_loader(args, m.model.config) for m in models]  # data checked before the run exists
    out = create_run(args, analysis_key(__name__), models, **options.to_dict())
    tables: dict[str, list] = {"points": [], "centroids": [], "step_stats": []}
    summaries = {}
    for m, (loader, classes) in zip(models, loaders, strict=True):
        points, centroids, stats, summary = trajectories(m.model, loader, classes, options, args.seed, device)
        for name, df in (("points", points), ("centroids", centroids), ("step_stats", stats)):
            tables[name].append(with_model(df, m.label))
        title = f"{m.label}: CLS state per step (kNN kept {summary['knn_preservation']:.2f}, chance {summary['knn_chance']:.3f})"
        out.write_figure(f"classes_{m.label}", plot_class_panels(points, title=title))
        out.write_figure(f"centroids_{m.label}", plot_centroids(centroids, title=f"{m.label}: class centroids (o = step 1)"))
        summaries[m.label] = summary
    write_tables(out, tables)
    out.complete(summary=summaries)
    print_summary(analysis_key(__name__), out, summaries)
    return 0
