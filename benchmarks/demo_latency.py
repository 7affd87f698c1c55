"""How soon `make demo` shows real results: serve the live demo and time when each page first shows its figure.

Starts ``bvit-interp demo --serve --headless`` (laptop profile by default) into a fresh runs
root, then polls every analysis page with Debian's Chromium (Playwright, as app/screenshots.py)
and records, from the moment the command started, when the server answered, when each page
first showed a finished result (a figure: an image or a chart, and no queued/running status)
and when the demo finished. Writes ``demo_latency.json`` and ``demo_latency.md`` in ``--out``.

    python benchmarks/demo_latency.py --out runs/bench-demo [--profile laptop] [--timeout 1800]

A benchmark, not a test: run it on an otherwise idle machine (issue 17's goals: the pointing
page within 3 minutes, every page within 12 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "app"))

from screenshots import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402

from bvit_interp.registry import analyses  # noqa: E402
from bvit_interp.runs.plan import DemoPlan  # noqa: E402

SHOWN = ("[data-testid=stImage] img, [data-testid=stVegaLiteChart], [data-testid=stArrowVegaLiteChart], "
         "[data-testid=stDataFrame]")


def page_state(page, url: str) -> tuple[bool, str]:
    """(shows a finished result, status text) of one page after it has loaded."""
    page.goto(url, timeout=120_000)
    page.wait_for_selector("h1", timeout=120_000)
    page.wait_for_timeout(1500)  # let the script run past the status messages
    text = page.locator("[data-testid=stMain]").inner_text(timeout=30_000)
    busy = any(word in text for word in ("Queued", "Running in the demo"))
    figures = page.locator(SHOWN).count()
    return figures > 0 and not busy, "busy" if busy else f"{figures} elements"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-demo", help="output directory (the demo's runs root goes inside it)")
    p.add_argument("--profile", default="laptop", choices=("laptop", "full"), help="demo profile to time")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between two rounds over the pages")
    args = p.parse_args()
    out = Path(args.out)
    runs = out / "runs"
    if runs.exists():
        shutil.rmtree(runs)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "bvit_interp.cli", "demo", "--serve", "--headless", "--profile", args.profile,
           "--out", str(runs), "--port", str(port)]
    log = open(out / "demo.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    served = None
    while served is None and time.monotonic() - t0 < 300:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    served = time.monotonic() - t0
        except OSError:
            time.sleep(0.5)
    first: dict[str, float] = {}
    keys = [s.key for s in analyses()]
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            while len(first) < len(keys) and time.monotonic() - t0 < args.timeout:
                for key in keys:
                    if key in first:
                        continue
                    try:
                        ok, what = page_state(page, f"{url}/{key}")
                    except Exception as err:  # a page mid-rerun: try again next round
                        ok, what = False, f"error {type(err).__name__}"
                    now = time.monotonic() - t0
                    print(f"{now:7.1f} s  {key:<14} {'shown' if ok else what}", flush=True)
                    if ok:
                        first[key] = now
                if proc.poll() is not None and len(first) < len(keys):
                    pass  # the demo ended (all done or failed): one more round catches the last pages
                time.sleep(args.poll)
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: stops the server and any analysis
        time.sleep(1)
        if proc.poll() is None:
            proc.terminate()  # SIGINT is ignored where this script itself runs in the background
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    plan = DemoPlan.load(runs)
    rows = []
    for key in keys:
        entry = plan.entry(key) if plan else None
        rows.append({"page": key, "first_shown_s": first.get(key), "state": entry.state if entry else None,
                     "analysis_s": entry.seconds if entry else None})
    result = {"profile": args.profile, "served_s": served, "pages": rows, "exit_code": proc.returncode,
              "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "demo_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Demo latency ({args.profile} profile, {result['date']}, {os.cpu_count()} CPUs); server answered after "
             f"{served:.1f} s" if served is not None else "server never answered", "",
             "| page | first shown (s from `demo` start) | analysis time (s) | state |", "|---|---|---|---|"]
    for r in rows:
        shown = f"{r['first_shown_s']:.0f}" if r["first_shown_s"] is not None else "not shown"
        secs = f"{r['analysis_s']:.0f}" if r["analysis_s"] is not None else "-"
        lines.append(f"| {r['page']} | {shown} | {secs} | {r['state']} |")
    (out / "demo_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if len(first) == len(keys) else 1


if __name__ == "__main__":
    raise SystemExit(main())
