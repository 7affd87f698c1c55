"""``bvit-interp pointing`` (old name ``pointing-game``): score every head at every step; writes a run and prints a summary."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..analysis.pointing import (
    AVERAGES,
    FRAMES,
    IGNORE_RULES,
    POINT_RULES,
    TIE_RULES,
    PointingOptions,
)
from ..analysis.pointing_plots import overlay_for_best_head
from ..data.loaders import stratified_indices
from ..data.sources import SampleError, open_source
from ..defaults import DEFAULT_MODEL, model_label, model_path, resolve_model
from ..distributed import broadcast_object, cleanup, init_distributed, resolve_device
from ..model import read_checkpoint_info
from ..registry import analysis_key
from ..runs import Run
from ..runs.pointing import pointing_game, write_tables
from .common import (
    add_common_args,
    add_max_steps_arg,
    model_specs,
    nonneg_float,
    nonneg_int,
    positive_int,
)


def add_parser(p: argparse.ArgumentParser) -> None:
    add_common_args(p, "runs/pointing", default_models=(DEFAULT_MODEL,), overrides={
        "model": {"help": f"bundled model name or checkpoint path; repeat for side-by-side variants (default {DEFAULT_MODEL})"},
        "data": {"help": "'shapes' (procedural validation set, rendered in memory) or an ImageNet-S root with validation/ and validation-segmentation/"},
        "limit": {"help": "score N images: a seeded random subset (--seed), stratified by class (default: all)"},
        "batch_size": {"help": "images per forward pass (per process)"},
        "workers": {"help": "data-loader worker processes (decode, resize, distance maps)"},
        "seed": {"help": "seed of the --limit subset and of the macro rates' bootstrap interval, recorded in meta.json (the scoring itself is deterministic)"},
    })
    p.add_argument("--split", default="validation", help="ImageNet-S split folder name")
    p.add_argument("--tolerance", type=nonneg_float, default=0.0, help="hit if the point's pixel is strictly closer than this many pixels to a mask pixel, TorchRay's rule (15 = TorchRay's default); 0 = the paper: the pixel is in the mask")
    p.add_argument("--tie", choices=TIE_RULES, default="first", help="with several maximal patches: first one, or hit if any hits")
    p.add_argument("--point", choices=POINT_RULES, default="center", help="patch centre of the argmax, or argmax of the bilinearly upsampled map")
    p.add_argument("--frame", choices=FRAMES, default="original", help="score in the original image or in the model's crop")
    p.add_argument("--average", choices=AVERAGES, default="micro", help="headline averaging over images (micro, Wilson 95%% CI) or classes (macro, 95%% bootstrap CI over classes); tables hold both")
    p.add_argument("--ignore", choices=IGNORE_RULES, default="miss", help="ImageNet-S ignore pixels (id 1000): a point on one is a miss (default) or is dropped from that (image, step, head); 'exclude' also leaves them out of the chance baseline")
    add_max_steps_arg(p, "recurrent steps to run (default: the trained horizon; more to look beyond it)", old_steps=True)
    p.add_argument("--chunk-size", type=positive_int, default=512, help="images per resumable part written to the run (a resumed run keeps its chunk size)")
    p.add_argument("--no-amp", action="store_true", help="on CUDA, run the forward in fp32 (default: AMP forward, fp32 softmax row)")
    p.add_argument("--overlays", type=nonneg_int, default=4, help="images in the attention-map figure of the best head (0 = none)")
    p.add_argument("--strict", action="store_true", help="stop at the first unusable image instead of skipping and recording it")
    p.add_argument("--csv", action="store_true", help="also write every table as CSV")


def _print_summary(tables, average: str) -> None:
    for model, g in tables.summary.groupby("model", sort=False):
        skipped = int((tables.skipped["model"] == model).sum()) if len(tables.skipped) else 0
        n = int(tables.baselines.loc[tables.baselines["model"] == model, "n"].iloc[0])
        print(f"\n{model}: {n} images scored, {skipped} skipped ({average} average)")
        print(f"  chance {g['chance'].iloc[0]:.3f}   centre point {g['centre'].iloc[0]:.3f}")
        print("  step  best head  best rate [95% CI]     mean over heads")
        for row in g.itertuples():
            print(f"  {row.step:>4}  {row.best_head:>9}  {row.best_rate:.3f} [{row.best_ci_low:.3f}, {row.best_ci_high:.3f}]  {row.mean_over_heads:.3f}")


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    info = init_distributed(args.device)
    try:
        device = resolve_device(args.device, info)
        specs = model_specs(args)
        labels = [model_label(s) for s in specs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"--model names must differ in their file stem, got {labels}")
        models = {label: resolve_model(spec, device=str(device)) for label, spec in zip(labels, specs, strict=True)}
        if args.data.startswith("shapes"):
            sources = {label: open_source(args.data, m.config) for label, m in models.items()}
            configs = {json.dumps(s.config.to_dict(), sort_keys=True) for s in sources.values()}
            if len(configs) > 1:
                raise ValueError(f"--model: {labels} were trained on different shapes data (version or image size); "
                                 "score them in separate runs")
            source = next(iter(sources.values()))
        else:
            source = open_source_split(args.data, args.split)
        options = PointingOptions(args.tolerance, args.tie, args.point, args.frame, args.average, args.max_steps,
                                  args.ignore)
        amp = device.type == "cuda" and not args.no_amp
        indices = stratified_indices(source.wnids(), args.limit, args.seed) if args.limit else None
        meta = {
            "analysis": analysis_key(__name__),
            "models": [
                {"name": label, "path": str(model_path(spec)), "sha256": m.checkpoint_sha256,
                 "config": read_checkpoint_info(model_path(spec))["config"]}
                for label, spec, m in zip(labels, specs, models.values(), strict=True)
            ],
            "data": source.data,
            "options": {**options.to_dict(), "limit": args.limit, "seed": args.seed, "models": labels,
                        "subset": "stratified by class" if indices is not None else "all",
                        "images": len(source) if indices is None else len(indices),
                        "chunk_size": args.chunk_size, "amp": amp, "strict": args.strict},
            "seed": args.seed,
            "world_size": info.world_size,
        }
        created = Run.create(args.out, meta, force=args.force) if info.is_main else None
        # every process reads the parts where the main one writes (a --force rerun: its staging directory)
        run_dir = created or Run(str(broadcast_object(None, info)))
        if created is not None:
            broadcast_object(str(created.path), info)
        with run_dir:  # released at the end; an unfinished run stays resumable
            try:
                tables = pointing_game(
                    models, source, options, run_dir, indices=indices, chunk_size=args.chunk_size,
                    batch_size=args.batch_size, workers=args.workers, device=device,
                    amp=amp, strict=args.strict, dist_info=info, seed=args.seed,
                )
            except SampleError as err:  # only raised with --strict; without it such images are skipped and recorded
                # from a loader worker the message holds the worker's traceback: keep its last line
                text = str(err).strip().splitlines()[-1].split("SampleError: ", 1)[-1]
                raise ValueError(f"--strict: stopped at an unusable image: {text}; without --strict it is skipped "
                                 "and recorded in the skipped table") from err
            if info.is_main:
                write_tables(run_dir, tables, csv=args.csv)
                if args.overlays:
                    for label, model in models.items():
                        mine = tables.summary[tables.summary["model"] == label]
                        imgs = tables.images[tables.images["model"] == label]
                        fig = overlay_for_best_head(model, source, options, mine, imgs, args.overlays, device=device)
                        run_dir.write_figure(f"overlay_{label}", fig)
                run_dir.complete(n_skipped=len(tables.skipped))
                _print_summary(tables, args.average)
                print(f"\nrun written to {run_dir.path}", file=sys.stderr)
        return 0
    finally:
        cleanup(info)


def open_source_split(root: str, split: str):
    from ..data.sources import ImageNetSSource

    return ImageNetSSource(root, split)
