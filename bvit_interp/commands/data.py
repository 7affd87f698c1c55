"""``bvit-interp data export-shapes``: write the procedural shapes set in ImageNet-S or ImageFolder layout."""

from __future__ import annotations

import argparse

from ..data.export import FORMATS, export_shapes
from ..data.shapes import ShapesConfig, chance_level
from .common import HelpFormatter, positive_int


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    e = sub.add_parser("export-shapes", help="render the shapes split to disk (ImageNet-S layout by default)",
                       formatter_class=HelpFormatter)
    e.add_argument("out", help="output directory (must be empty or new unless --force)")
    e.add_argument("--format", choices=FORMATS, default="imagenet-s", help="on-disk layout")
    e.add_argument("--split", choices=("val", "train"), default="val", help="which split to export")
    e.add_argument("--version", type=int, default=0, dest="shapes_version",
                   help="shapes dataset version (1: 32 px originals, 2: small objects anywhere at 48 px; "
                        "default: the version the bundled models were trained on)")
    e.add_argument("--classes", choices=("a", "b"), default="a",
                   help="class set: a = the ten classes of the bundled models, b = six others (the transfer target)")
    e.add_argument("--img-size", type=positive_int, help="image size in pixels (default: the version's)")
    e.add_argument("--num-val", type=positive_int, default=2000, help="validation split size")
    e.add_argument("--limit", type=positive_int, help="export only the first N images of the split")
    e.add_argument("--seed", type=int, default=0, help="dataset seed")
    e.add_argument("--force", action="store_true", help="replace an earlier export in OUT")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def run(args: argparse.Namespace) -> int:
    overrides = {"img_size": args.img_size} if args.img_size else {}
    config = ShapesConfig.preset(args.shapes_version, num_val=args.num_val, seed=args.seed, classes=args.classes,
                                 **overrides)
    out = export_shapes(args.out, args.format, config, args.split, args.limit, args.force)
    print(f"wrote {args.split} split ({args.format}) to {out}; mean target-mask fraction "
          f"{chance_level(config, args.split, args.limit):.3f} (pointing-game chance level)")
    return 0
