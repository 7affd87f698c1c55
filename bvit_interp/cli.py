"""``bvit-interp`` command line: thin argument parsing over the library's functions.

Each subcommand lives in ``bvit_interp.commands.<name>`` and contributes ``add_parser`` and
``run``; this module only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .commands.common import HelpFormatter
from .data.imagenet_s import SampleError

# (subcommand, module under bvit_interp.commands, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("pointing-game", "pointing", "score every head at every step on ImageNet-S-style masks (paper Sec. 4.2.2)"),
    ("featviz", "featviz", "feature visualization of FFN neurons per step, dataset exemplars (Sec. 4.2.1)"),
    ("svd", "svd", "energy ranks per matrix and per step, truncated-SVD accuracy sweeps (App. A.2)"),
    ("prune", "prune", "step-masked RTL pruning of the shared block (Sec. 4.2.3, App. G)"),
    ("trajectories", "trajectories", "PaCMAP trajectories of the CLS state across steps (App. E.2)"),
    ("lens", "lens", "per-step readout accuracy, also beyond the trained horizon (App. B, Fig. 8)"),
    ("early-exit", "early_exit", "early-exit classifiers on chosen steps and a threshold sweep (App. B)"),
    ("ablate", "ablate", "step x head ablation map (zero / mean ablation, whole-step skips)"),
    ("train", "train", "train a bViT / ViT with the paper's recipe (single process or torchrun)"),
    ("demo", "demo", "run every analysis on the bundled models into one directory"),
    ("data", "data", "dataset utilities: export the procedural shapes set (ImageNet-S / ImageFolder layout)"),
    ("bench", "bench", "benchmarks: hook overhead, pointing-game throughput, training speed"),
]


# Errors a user's input causes: printed as one ``error:`` line (exit 2); --debug shows the traceback.
# (DeviceError, DataSpecError and the checkpoint errors are ValueErrors; SampleError is an unusable image.)
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, ValueError, KeyError, SampleError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bvit-interp",
        description="Per-step, per-head interpretability for recurrent (bViT) and standard Vision Transformers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        try:
            mod = importlib.import_module(f"bvit_interp.commands.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"bvit_interp.commands.{module}":
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
        mod.add_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


def _version() -> str:
    from bvit_interp import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    import matplotlib

    matplotlib.use("Agg")  # commands only write figures; the library's plot modules leave the backend alone
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if getattr(args, "debug", False):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, SampleError):
            msg = f"unusable image ({err})"
        print(f"bvit-interp {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
