"""``bvit-interp lens``: per-step readout accuracy for 1..2T steps and answer flips (App. B, Fig. 8)."""

from __future__ import annotations

import argparse

from ..analysis.lens import LensOptions, lens
from ..analysis.lens_plots import plot_lens
from ..registry import analysis_key
from .common import (
    add_common_args,
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
    add_common_args(p, "runs/lens")
    p.add_argument("--max-steps", type=positive_int,
                   help="recurrent steps to run (default: 2T for a bViT, beyond the horizon; T for a ViT)")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    models = load_models(args, device)
    options = LensOptions(max_steps=args.max_steps)
    loaders = [val_loader(args, m.model.config)[0] for m in models]  # data checked before the run exists
    out = create_run(args, analysis_key(__name__), models, **options.to_dict())
    tables: dict[str, list] = {"lens": [], "predictions": []}
    summaries = {}
    for m, loader in zip(models, loaders, strict=True):
        table, preds, summary = lens(m.model, loader, options, device)
        tables["lens"].append(with_model(table, m.label))
        tables["predictions"].append(with_model(preds, m.label))
        summaries[m.label] = summary
    write_tables(out, tables)
    horizons = {m.label: m.model.num_layers() for m in models}
    out.write_figure("lens", plot_lens(out.read_table("lens"), horizons))
    out.complete(summary=summaries)
    print_summary(analysis_key(__name__), out, summaries)
    return 0
