"""``bvit-interp`` command line: thin argument parsing over the library's functions.

The analyses' subcommands come from the registry (``bvit_interp.registry``: one ``AnalysisSpec``
each, its command module imported here); the tools that are not analyses are listed in ``TOOLS``.
Every command module contributes ``add_parser`` and ``run``; this module only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from .commands.common import HelpFormatter
from .data.imagenet_s import SampleError
from .registry import analyses

# Commands that are not analyses: (subcommand, module under bvit_interp.commands, one-line help)
TOOLS: list[tuple[str, str, str]] = [
    ("train", "train", "train a bViT / ViT with the paper's recipe (single process or torchrun)"),
    ("demo", "demo", "run every analysis on the bundled models into one directory, cheapest first"),
    ("data", "data", "dataset utilities: export the procedural shapes set (ImageNet-S / ImageFolder layout)"),
    ("bench", "bench", "benchmarks: hook overhead, pointing-game throughput, training speed"),
]


# Errors a user's input causes: printed as one ``error:`` line (exit 2); --debug shows the traceback.
# (DeviceError, DataSpecError and the checkpoint errors are ValueErrors; SampleError is an unusable image.)
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, ValueError, KeyError, SampleError)


def _import(module: str) -> ModuleType | None:
    """The command module, or None when it is not installed (a missing optional part is skipped)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        return None


def _add(sub: argparse._SubParsersAction, name: str, module: ModuleType, help_text: str | None, **defaults: str) -> None:
    """One subcommand; without ``help_text`` it is left out of ``--help`` (a deprecated alias)."""
    kwargs = {"help": help_text} if help_text else {}
    p = sub.add_parser(name, description=help_text, formatter_class=HelpFormatter, **kwargs)
    module.add_parser(p)
    p.set_defaults(_run=module.run, **defaults)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bvit-interp",
        description="Per-step, per-head interpretability for recurrent (bViT) and standard Vision Transformers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for spec in analyses():
        mod = _import(spec.module)
        if mod is None:
            continue
        _add(sub, spec.command, mod, spec.help)
        for alias in spec.aliases:
            if alias != spec.command:
                _add(sub, alias, mod, None, _deprecated=spec.command)
    for name, module, help_text in TOOLS:
        mod = _import(f"bvit_interp.commands.{module}")
        if mod is not None:
            _add(sub, name, mod, help_text)
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
    if getattr(args, "_deprecated", None):
        print(f"bvit-interp {args.command}: deprecated name, use `bvit-interp {args._deprecated}`", file=sys.stderr)
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
