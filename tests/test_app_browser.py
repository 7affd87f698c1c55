"""The results browser in a real browser: `streamlit run` headless, Debian's Chromium driven by Playwright.

Screenshots of every page go to the test's tmp directory and, when BVIT_SCREENSHOTS is set, to
that directory too. Skipped where /usr/bin/chromium or the playwright package is missing
(`.ci/run` installs Chromium with apt; Playwright's own browser download is never used).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
APP_DIR = Path(__file__).resolve().parents[1] / "app"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium is not installed at /usr/bin/chromium "
           "(apt-get install chromium; .ci/run installs it); the browser test needs it",
)
pytest.importorskip("playwright.sync_api", reason="the playwright python package is not installed (pip install -e '.[dev]')")

from test_app import build_roots  # noqa: E402


def _screenshots_module():
    spec = importlib.util.spec_from_file_location("bvit_app_screenshots", APP_DIR / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


shots = _screenshots_module()

# page -> (at least this many images, at least this many Vega charts), in the app's order (the registry's)
EXPECTED = {
    "overview": (0, 0),
    "rank": (1, 3),
    "lens": (1, 1),
    "pointing": (8 + 2 + 4 + 3, 3),  # sample maps, any image (2 steps + 4 heads), 3 figures; heatmap, curves, per class
    "ablation": (1, 2),
    "trajectories": (1, 3),
    "early_exit": (1, 3),
    "featviz": (4, 2),
    "pruning": (1, 3),
    "causal": (0, 1),
    "transfer": (0, 0),
}


def test_every_page_in_chromium(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    roots = build_roots(tmp_path_factory.mktemp("browser"))
    out_dirs = [tmp_path / "screenshots"]
    if os.environ.get("BVIT_SCREENSHOTS"):
        out_dirs.append(Path(os.environ["BVIT_SCREENSHOTS"]))
    with shots.serve(roots.runs, roots.models) as url, shots.browser() as page:
        results = shots.capture(url, out_dirs, page=page)
        # real interactions: the step slider and a heatmap click
        page.goto(f"{url}/pointing")
        shots.wait_done(page)
        assert page.get_by_text("Attention maps at step 1, head 0").count() == 1
        page.locator("[data-testid=stSidebar] [data-testid=stSlider] input[type=range]").first.focus()
        page.keyboard.press("ArrowRight")
        page.get_by_text("Attention maps at step 2, head 0").wait_for(timeout=120_000)
        shots.wait_done(page)
        assert page.locator("[data-testid=stException]").count() == 0
        assert page.get_by_text("Hit rate, step 2 head 0").count() >= 1
        # clicking a heatmap cell picks its (step, head): the last cell is step 2, head 3
        cells = page.locator("[data-testid=stVegaLiteChart]").first.locator("g.mark-rect").first.locator("path")
        cells.nth(cells.count() - 1).click(force=True)
        page.get_by_text("Attention maps at step 2, head 3").wait_for(timeout=120_000)
        shots.wait_done(page)
        assert page.locator("[data-testid=stException]").count() == 0
    titles = {name: title for name, _, title in shots.PAGES}
    from bvit_interp.registry import analyses

    assert [r.name for r in results] == ["overview", *(s.key for s in analyses())]  # the registry's order
    assert set(EXPECTED) == {r.name for r in results}
    for r in results:
        assert r.exceptions == 0, f"{r.name}: an exception box is shown"
        assert r.dialogs == 0, f"{r.name}: a dialog is shown (page not found?)"
        assert r.headings[:1] == [titles[r.name]], (r.name, r.headings)
        min_images, min_charts = EXPECTED[r.name]
        assert r.images >= min_images, (r.name, r.images)
        assert r.charts >= min_charts, (r.name, r.charts)
        for shot in r.screenshots:
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot
