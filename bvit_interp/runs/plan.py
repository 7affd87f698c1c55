"""The demo's plan file (``<root>/demo.json``): which analyses run, in which order, and their live state.

``bvit-interp demo`` writes it atomically on every change; the app reads it to show, on every
page, whether that page's analysis is queued, running (with the progress its bar last showed),
done or failed (with the reason), and the overview shows the whole plan with times.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write

PLAN_FILE = "demo.json"
STATES = ("queued", "running", "done", "kept", "failed", "interrupted")
ACTIVE = ("queued", "running")


@dataclass
class PlanEntry:
    """One analysis of the demo and its state."""

    key: str
    title: str
    argv: list[str]
    state: str = "queued"
    progress: float | None = None  # fraction of the current progress bar, when the analysis shows one
    detail: str = ""  # the progress bar's text (what it is doing)
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""  # the reason of a failure (last error line of the analysis)
    log: str = ""  # path of the analysis's full output
    estimate_s: float | None = None  # seconds it took last time on this machine, when known

    @property
    def seconds(self) -> float | None:
        """Wall time so far (running) or in total (finished)."""
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at


@dataclass
class DemoPlan:
    """The whole plan: profile, server URL, entries in run order."""

    profile: str
    url: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    pid: int | None = None
    entries: list[PlanEntry] = field(default_factory=list)

    def entry(self, key: str) -> PlanEntry | None:
        """The entry of analysis ``key``, or None when the plan does not hold it."""
        return next((e for e in self.entries if e.key == key), None)

    def save(self, root: str | Path) -> None:
        """Write ``<root>/demo.json`` atomically."""
        path = Path(root) / PLAN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(asdict(self), indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, root: str | Path) -> DemoPlan | None:
        """The plan under ``root``, or None when there is none or it cannot be read."""
        path = Path(root) / PLAN_FILE
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
            entries = [PlanEntry(**e) for e in doc.pop("entries", [])]
            return cls(**doc, entries=entries)
        except (OSError, ValueError, TypeError):
            return None

    def table(self) -> list[dict[str, Any]]:
        """One row per analysis for display: order, state, progress, times."""
        rows = []
        for i, e in enumerate(self.entries, 1):
            rows.append({
                "order": i, "analysis": e.title, "key": e.key, "state": e.state,
                "progress": None if e.progress is None else round(100 * e.progress),
                "seconds": None if e.seconds is None else round(e.seconds, 1),
                "last time (s)": None if e.estimate_s is None else round(e.estimate_s, 1),
                "command": "bvit-interp " + " ".join(e.argv),
                "error": e.error,
            })
        return rows
