"""``bvit-interp demo``: every registered analysis on the bundled models, cheapest first, one run each under one root.

With ``--serve`` the results browser is served first and the analyses run behind it: every
page shows its analysis's live state (queued / running with progress / done / failed with
the reason) from ``<root>/demo.json`` and fills in when its run finishes. Each analysis runs
as a child process whose output goes to the terminal and to ``<root>/.demo-logs/<key>.log``;
Ctrl-C stops the server and the analysis (runs are written atomically and resume), and a
rerun keeps finished runs and resumes the others.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..defaults import BUNDLED, model_path
from ..registry import AnalysisSpec, analyses, find_analysis
from ..runs.plan import DemoPlan, PlanEntry
from ..runs.run import is_complete_run

PROFILES = {"laptop": True, "full": False}  # profile -> the specs' quick (small) arguments?
DEFAULT_ROOTS = {"laptop": "runs/demo", "full": "runs/demo-full"}
APP_MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"
# a tqdm bar: "desc:  45%|####      | 270/600 [00:12<00:14, ...]"
_BAR = re.compile(r"(?:(?P<desc>[^|\r\n]*?):\s*)?(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<n>[\d.]+[kMG]?)/(?P<total>[\d.]+[kMG]?)")


def _available() -> list[str]:
    out = []
    for name in BUNDLED:
        try:
            model_path(name)
            out.append(name)
        except FileNotFoundError:
            pass
    return out


def plan(root: Path, models: list[str], quick: bool) -> list[tuple[AnalysisSpec, list[str]]]:
    """(analysis, argv) of every registered analysis, cheapest first; each writes ``<root>/<key>``.

    ``quick`` takes the specs' small image counts and short schedules (the laptop profile, CI).
    """
    return [(spec, spec.demo_args(root, models, quick)) for spec in analyses()]


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "--runs", dest="out", metavar="DIR",
                   help="root directory; one run per analysis inside it, <root>/<key> "
                        "(default: runs/demo for the laptop profile, runs/demo-full for the full one)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="laptop",
                   help="laptop: small image counts and short schedules (every page within minutes on 2 CPU cores); "
                        "full: the README's sizes (about three hours on 2 cores)")
    p.add_argument("--quick", action="store_true", help="same as --profile laptop (kept for old scripts)")
    p.add_argument("--serve", action="store_true",
                   help="serve the results browser first and run the analyses behind it; the pages fill in live")
    p.add_argument("--port", type=int, default=8501, help="port of the results browser (a free one if taken)")
    p.add_argument("--headless", action="store_true", help="with --serve: do not open a browser window")
    p.add_argument("--only", nargs="*", help="run only these analyses (keys or command names, e.g. pointing rank)")
    p.add_argument("--force", action="store_true", help="recompute analyses that already have a finished run")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def _free_port(preferred: int) -> int:
    """``preferred`` if nothing listens there, else a free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def start_server(root: Path, port: int, headless: bool, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``streamlit run app/main.py -- --runs root`` on localhost; returns the process once it answers."""
    if not APP_MAIN.exists():
        raise FileNotFoundError(f"--serve: the results browser {APP_MAIN} is not here (run from a source checkout)")
    port = _free_port(port)
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_MAIN), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    if headless:
        cmd += ["--server.headless", "true"]
    cmd += ["--", "--runs", str(root)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=APP_MAIN.parent.parent)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the results browser exited ({proc.returncode}); see {log}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return proc, url
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the results browser did not answer within 120 s; see {log}")
    except BaseException:  # also Ctrl-C while waiting: never leave the server behind
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    """Ask a child to stop (it got the terminal's Ctrl-C already, or gets SIGTERM), then kill it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _error_line(lines: list[str]) -> str:
    """The reason of a failure: the last 'error:' line of the output, else its last line."""
    for line in reversed(lines):
        if "error:" in line or "Error" in line:
            return line.strip()
    return lines[-1].strip() if lines else "no output"


def run_analysis(entry: PlanEntry, demo: DemoPlan, root: Path, force: bool) -> subprocess.Popen[bytes]:
    """Run one analysis as a child process, mirroring its output and its progress into the plan."""
    log = root / ".demo-logs" / f"{entry.key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bvit_interp.cli", *entry.argv, *(["--force"] if force else [])]
    entry.state, entry.started_at, entry.log, entry.progress, entry.detail, entry.error = (
        "running", time.time(), str(log), None, "", "")
    demo.save(root)
    print(f"\n=== {entry.title}: bvit-interp {' '.join(entry.argv)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    try:
        lines, pending = _follow(proc, entry, demo, root, log)
    except KeyboardInterrupt:  # a terminal's Ctrl-C reached the child too; a SIGTERM did not: pass it on
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                _stop(proc)
        raise
    code = proc.wait()
    entry.finished_at = time.time()
    if code == 0:
        entry.state, entry.progress = "done", 1.0
    elif code == 130:
        entry.state = "interrupted"
    else:
        entry.state, entry.error = "failed", _error_line(lines + ([pending] if pending.strip() else []))
    demo.save(root)
    return proc


def _follow(proc: subprocess.Popen[bytes], entry: PlanEntry, demo: DemoPlan, root: Path, log: Path) -> tuple[list[str], str]:
    """Copy the child's output to the terminal and its log until it closes; progress bars go into the plan."""
    assert proc.stdout is not None
    lines: list[str] = []
    pending, last_save = "", 0.0
    with open(log, "wb") as fh:
        while chunk := proc.stdout.read(4096):
            fh.write(chunk)
            fh.flush()
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
            parts = re.split(r"[\r\n]", pending + chunk.decode("utf-8", "replace"))
            pending = parts.pop()
            for part in parts:
                m = _BAR.search(part)
                if m:
                    entry.progress = int(m["pct"]) / 100
                    entry.detail = f"{(m['desc'] or '').strip()} {m['n']}/{m['total']}".strip()
                elif part.strip():
                    lines = [*lines[-40:], part]
            if time.monotonic() - last_save > 1.0:
                demo.save(root)
                last_save = time.monotonic()
    return lines, pending


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the demo like Ctrl-C: the analysis leaves a resumable run, the server stops."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    profile = "laptop" if args.quick else args.profile
    signal.signal(signal.SIGTERM, _interrupt)
    only = set()
    for name in args.only or []:
        spec = find_analysis(name)
        if spec is None:
            raise ValueError(f"--only {name}: no such analysis; known: {', '.join(s.key for s in analyses())}")
        only.add(spec.key)
    models = _available()
    if not models:
        raise FileNotFoundError("no bundled models found in models/; train them first (see models/MODEL_CARD.md)")
    if args.serve and not APP_MAIN.exists():
        raise FileNotFoundError(f"--serve: the results browser {APP_MAIN} is not here (run from a source checkout)")
    root = Path(args.out or DEFAULT_ROOTS[profile])
    previous = DemoPlan.load(root)
    demo = DemoPlan(profile, pid=os.getpid())
    for spec, argv in plan(root, models, PROFILES[profile]):
        if only and spec.key not in only:
            continue
        before = previous.entry(spec.key) if previous else None
        estimate = before.seconds if before and before.state == "done" else (before.estimate_s if before else None)
        entry = PlanEntry(spec.key, spec.title, argv, estimate_s=estimate)
        if is_complete_run(root / spec.key) and not args.force:
            entry.state = "kept"
        demo.entries.append(entry)
    server = None
    try:
        if args.serve:
            server, demo.url = start_server(root, args.port, args.headless, root / ".demo-logs" / "streamlit.log")
        demo.save(root)
        print(f"bvit-interp demo ({profile} profile) -> {root}", file=sys.stderr)
        if demo.url:
            print(f"results browser: {demo.url}  (pages fill in as the analyses finish; Ctrl-C stops everything)",
                  file=sys.stderr)
        for i, e in enumerate(demo.entries, 1):
            when = f"~{e.estimate_s:.0f} s last time" if e.estimate_s else ""
            print(f"  {i}. {e.title:<24} {e.state:<7} {when}", file=sys.stderr)
        sys.stderr.flush()
        for entry in demo.entries:
            if entry.state == "kept":
                continue
            run_analysis(entry, demo, root, args.force)
            if entry.state == "interrupted":
                raise KeyboardInterrupt
        demo.finished_at = time.time()
        demo.save(root)
        print("\nanalysis                 status       seconds")
        for e in demo.entries:
            print(f"{e.title:<24} {e.state:<12} {e.seconds or 0.0:7.1f}" + (f"  {e.error}" if e.error else ""))
        if server is not None:
            print(f"\nall analyses finished; browsing {root} at {demo.url} until Ctrl-C", file=sys.stderr, flush=True)
            server.wait()
        else:
            print(f"\nruns in {root}; browse them with: bvit-interp demo --serve --out {root}  "
                  f"(or streamlit run app/main.py -- --runs {root})")
        return 0 if all(e.state in ("done", "kept") for e in demo.entries) else 1
    except KeyboardInterrupt:
        for e in demo.entries:
            if e.state == "running":
                e.state, e.finished_at = "interrupted", time.time()
        demo.save(root)
        print("\ninterrupted: finished runs are kept and the others resume when the demo runs again", file=sys.stderr)
        return 130
    finally:
        _stop(server)
