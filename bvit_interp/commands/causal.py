"""``bvit-interp causal``: activation patching, direct logit attribution, attribution patching and probes per step.

Inputs (models, data, pairs, sites) are all checked before the run directory is created; the
run is resumable per model and stage (``runs.causal``). Definitions: docs/causal.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from ..analysis.causal.activation import DEFAULT_SITES, DIRECTIONS
from ..analysis.causal.inputs import (
    MIN_PROBE_IMAGES,
    PAIR_KINDS,
    build_pairs,
    has_masks,
    open_data,
    probe_images,
)
from ..analysis.causal.metric import pair_runs
from ..analysis.causal.stages import CausalOptions, check_options
from ..data.sources import PointingSource
from ..registry import analysis_key
from ..runs import Run
from ..runs.causal import CausalInputs, causal_run, write_outputs
from .common import (
    LoadedModel,
    add_common_args,
    common_options,
    load_models,
    nonneg_int,
    parse_list,
    positive_int,
    print_summary,
    resolve_device,
)


def pairs_kind(text: str) -> str:
    """A --pairs value (argparse type): one of the kinds, or file:PATH."""
    if text in PAIR_KINDS[:-1] or (text.startswith("file:") and len(text) > 5):
        return text
    raise argparse.ArgumentTypeError(f"choose one of {', '.join(PAIR_KINDS)}, got {text!r}")


def add_parser(p: argparse.ArgumentParser) -> None:
    add_common_args(
        p, "runs/causal", default_limit=32, default_batch_size=None,
        only=("model", "data", "limit", "batch_size", "device", "seed", "out", "force", "debug"),
        overrides={
            "data": {"help": "'shapes' (exact counterfactual pairs and masks), an ImageNet-S root (validation/ + "
                             "validation-segmentation/: masks for noise-mask pairs and probes) or an ImageFolder root "
                             "(val/: noise-image or file pairs; no probes without masks)"},
            "limit": {"help": "number of pairs (a seeded random subset of the images, or of a pairs file's rows; "
                              "noise pairs whose image lacks a usable mask are skipped and listed)"},
            "batch_size": {"help": "images per stacked patched forward and per probe pass (default: 1024 on CUDA, "
                                   "64 on CPU, where stacking more is slower); changes speed, not results"},
            "seed": {"help": "random seed: pair and probe-image subsets, noise, bootstrap, probe splits and control "
                             "tasks (recorded in the run)"},
        })
    p.add_argument("--pairs", type=pairs_kind, default="class", metavar="{" + ",".join(PAIR_KINDS) + "}",
                   help="clean / corrupted pairs: 'class' (shapes: the same scene with another object class), 'none' "
                        "(shapes: the same scene without the object), 'noise-mask' / 'noise-image' (Gaussian noise, "
                        "3x the image's std, on the object mask / the whole image: causal tracing, any --data with "
                        "masks / any --data), or 'file:PATH' (a CSV / parquet with columns clean, corrupted, "
                        "clean_label, corrupted_label and optional clean_mask, corrupted_mask; paths relative to it)")
    p.add_argument("--sites", type=partial(parse_list, kind=str), default=",".join(DEFAULT_SITES), metavar="SITE[,SITE...]",
                   help="comma-separated hook sites to patch, e.g. resid_pre,attn_out,mlp_out,attn.z (head sites such "
                        "as attn.z are patched one head at a time; every site per token group: all, CLS, registers, "
                        "object patches, other patches)")
    p.add_argument("--directions", choices=("denoising", "noising", "both"), default="both",
                   help="denoising: clean activation into the corrupted run (is it sufficient?); noising: corrupted "
                        "into the clean run (is it necessary?)")
    p.add_argument("--no-attribution", action="store_true",
                   help="skip attribution patching (gradient x activation difference) and its comparison with exact "
                        "patching")
    p.add_argument("--ig-steps", type=nonneg_int, default=0,
                   help="also estimate attn.z patches by captum's integrated gradients between the two runs with this "
                        "many steps (slower, more faithful); 0: off")
    p.add_argument("--no-dla", action="store_true",
                   help="skip direct logit attribution and the direct vs indirect effects (path patching to the readout)")
    p.add_argument("--no-probes", action="store_true",
                   help="skip the per-step linear probes (class, quadrant, colour) with control tasks")
    p.add_argument("--probe-limit", type=positive_int, default=500,
                   help=f"images for the probes (a seeded subset of --data's images with masks; at least "
                        f"{MIN_PROBE_IMAGES})")


def open_sources(spec: str, models: list[LoadedModel]) -> dict[str, PointingSource]:
    """--data opened for every model; ValueError when the models were trained on different shapes data."""
    sources = {m.label: open_data(spec, m.model.config) for m in models}
    described = {json.dumps(s.data, sort_keys=True) for s in sources.values()}
    if len(described) > 1:
        raise ValueError(f"--model: {[m.label for m in models]} were trained on different shapes data (version, "
                         "classes or image size); run them separately")
    return sources


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    models = load_models(args, device)
    directions = DIRECTIONS if args.directions == "both" else (args.directions,)
    options = CausalOptions(sites=tuple(args.sites), directions=directions, attribution=not args.no_attribution,
                            ig_steps=0 if args.no_attribution else args.ig_steps, dla=not args.no_dla,
                            probes=not args.no_probes, seed=args.seed)
    if options.ig_steps and "attn.z" not in options.sites:
        raise ValueError("--ig-steps: integrated gradients run on attn.z; add it to --sites")
    if args.pairs.startswith("file:") and not Path(args.pairs[5:]).expanduser().is_file():
        raise FileNotFoundError(f"--pairs {args.pairs}: no such file")
    sources = open_sources(args.data, models)
    data = next(iter(sources.values()))
    if options.probes and not has_masks(data):
        print(f"causal: no probes: --data {data.description} has no object masks (use shapes or an ImageNet-S root)",
              file=sys.stderr)
    inputs: dict[str, CausalInputs] = {}
    for m in models:  # every input checked before the run exists
        check_options(m.model, options)
        source = sources[m.label]
        pairs = build_pairs(args.pairs, source, m.model.config, args.limit, args.seed)
        try:
            runs = pair_runs(m.model, pairs)
        except ValueError as err:
            raise ValueError(f"--pairs {args.pairs} / --model {m.label}: {err}") from None
        probes = probe_images(source, m.model.config, args.probe_limit, args.seed) if options.probes else None
        inputs[m.label] = CausalInputs(m.model, pairs, probes, runs)
    max_batch = args.batch_size or (1024 if device.type == "cuda" else 64)
    meta = {"analysis": analysis_key(__name__), "models": [m.meta() for m in models], "data": data.data,
            "options": {**common_options(args), "pairs": args.pairs, "probe_limit": args.probe_limit,
                        **options.to_dict()},
            "seed": args.seed}
    out = Run.create(args.out, meta, force=args.force)
    with out:
        per_model = causal_run(out, inputs, options, max_batch, max_batch)
        summaries = write_outputs(out, per_model, options)
        out.complete(summary=summaries)
    print_summary(analysis_key(__name__), out, summaries)
    return 0
