"""Browser options: ``streamlit run app/main.py -- --runs DIR [--models DIR] [--data DIR] [--debug]``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bvit_interp.defaults import MODELS_DIR


@dataclass(frozen=True)
class AppConfig:
    """Where the browser reads: the runs root, the models directory, extra data roots."""

    runs: Path
    models: Path
    data: tuple[Path, ...] = ()
    debug: bool = False

    @property
    def roots(self) -> tuple[Path, ...]:
        """Every directory the browser may read inside."""
        return (self.runs, self.models, *self.data)


def parse_config(argv: Sequence[str] | None = None) -> AppConfig:
    """Options after ``--`` on the streamlit command line; env BVIT_APP_RUNS / BVIT_APP_MODELS as defaults."""
    p = argparse.ArgumentParser(prog="app/main.py", add_help=False, allow_abbrev=False)
    p.add_argument("--runs", default=os.environ.get("BVIT_APP_RUNS", "runs"), help="runs root to browse")
    p.add_argument("--models", default=os.environ.get("BVIT_APP_MODELS", str(MODELS_DIR)),
                   help="models directory (model card, checkpoints for on-demand attention)")
    p.add_argument("--data", action="append", default=[], help="an image root (ImageNet-S) the browser may read")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of short messages")
    args, _ = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    resolve = lambda v: Path(v).expanduser().resolve()  # noqa: E731
    return AppConfig(resolve(args.runs), resolve(args.models), tuple(resolve(d) for d in args.data), args.debug)


def get_config() -> AppConfig:
    """The configuration of this session (parsed on every script run; cheap)."""
    return parse_config()
