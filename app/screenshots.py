"""Serve the browser headless and capture every page with Debian's Chromium (Playwright, no browser download).

``python app/screenshots.py --runs runs --out docs/screenshots`` writes one PNG per page; the
browser test (tests/test_app_browser.py) uses the same helpers to check every page.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent
MAIN = APP_DIR / "main.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
if str(APP_DIR.parent) not in sys.path:
    sys.path.insert(0, str(APP_DIR.parent))

from bvit_interp.registry import analyses  # noqa: E402

# (name, url path, page heading); the overview is the default page, served at the root URL
PAGES: list[tuple[str, str, str]] = [("overview", "", "bvit-interp results")] + [(a.key, a.key, a.title) for a in analyses()]


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(runs: str | Path, models: str | Path | None = None, port: int | None = None,
          timeout: float = 180.0) -> Iterator[str]:
    """Run ``streamlit run app/main.py`` headless on localhost; yields its URL, stops it afterwards."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(MAIN), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--", "--runs", str(runs)]
    if models is not None:
        cmd += ["--models", str(models)]
    log = tempfile.NamedTemporaryFile("w+", prefix="streamlit-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=APP_DIR.parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer within {timeout:.0f} s:\n{Path(log.name).read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A Playwright page in Debian's Chromium (never Playwright's own browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = b.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            b.close()


def wait_done(page: Any, timeout: float = 180.0, settle_ms: int = 2000) -> None:
    """Wait until the page shows its heading and the script has stayed finished for ``settle_ms``.

    Right after navigation the app reports ``notRunning`` before its script starts; on a busy
    machine the start can lag by seconds, so one check (or one check after a fixed pause) is
    not enough: the state must hold over consecutive polls.
    """
    page.wait_for_selector("h1", timeout=timeout * 1000)
    polls = max(1, settle_ms // 250)
    page.wait_for_function(
        "n => { const a = document.querySelector('[data-testid=stApp]');"
        " const done = a && a.getAttribute('data-test-script-state') === 'notRunning'"
        "  && [...document.querySelectorAll('img')].every(i => i.complete);"
        " window.__bvitSettled = done ? (window.__bvitSettled || 0) + 1 : 0;"
        " return window.__bvitSettled >= n; }",
        arg=polls, polling=250, timeout=timeout * 1000)


@dataclass
class PageResult:
    """What a page showed in the browser."""

    name: str
    headings: list[str]
    exceptions: int
    dialogs: int
    images: int
    charts: int
    seconds: float
    screenshots: list[Path]


def full_screenshot(page: Any, paths: Sequence[Path], width: int = 1400) -> None:
    """A screenshot of the whole page (Streamlit scrolls inside its main block, not the document)."""
    height = page.evaluate(
        "() => Math.max(1000, ...[...document.querySelectorAll("
        "'[data-testid=stMain], [data-testid=stMainBlockContainer], [data-testid=stSidebarContent]')]"
        ".map(e => e.scrollHeight))")
    page.set_viewport_size({"width": width, "height": min(int(height) + 80, 9000)})
    page.wait_for_timeout(500)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
    page.set_viewport_size({"width": width, "height": 1000})


def capture(url: str, out_dirs: Sequence[Path], pages: Sequence[tuple[str, str, str]] = PAGES,
            timeout: float = 180.0, width: int = 1400, page: Any = None) -> list[PageResult]:
    """Load every page, wait for it to finish, count what it shows, save a screenshot in each out dir."""
    if page is None:
        with browser(width) as own:
            return capture(url, out_dirs, pages, timeout, width, own)
    results = []
    for name, path, _ in pages:
        start = time.monotonic()
        page.goto(f"{url}/{path}", timeout=timeout * 1000)
        wait_done(page, timeout)
        shots = [Path(d) / f"{name}.png" for d in out_dirs]
        results.append(PageResult(
            name=name,
            headings=page.locator("h1").all_inner_texts(),
            exceptions=page.locator("[data-testid=stException]").count(),
            dialogs=page.locator("[role=dialog]").count(),
            images=page.locator("[data-testid=stImage] img").count(),
            charts=page.locator("[data-testid=stVegaLiteChart]").count(),
            seconds=time.monotonic() - start,
            screenshots=shots,
        ))
        full_screenshot(page, shots, width)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Screenshots of every page of the browser on a runs root."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", default="runs", help="runs root to browse")
    p.add_argument("--models", help="models directory (default: the bundled one)")
    p.add_argument("--out", default="docs/screenshots", help="directory for the PNGs")
    p.add_argument("--pages", nargs="+", help="pages to capture: overview, pointing, featviz, ... (default: all)")
    args = p.parse_args(argv)
    pages = [pg for pg in PAGES if not args.pages or pg[0] in args.pages]
    with serve(args.runs, args.models) as url:
        for r in capture(url, [Path(args.out)], pages):
            status = "ok" if r.exceptions == r.dialogs == 0 else f"{r.exceptions} exception(s), {r.dialogs} dialog(s)"
            print(f"{r.name:>14}: {status}, {r.images} images, {r.charts} charts, {r.seconds:.1f} s -> {r.screenshots[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
