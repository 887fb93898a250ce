"""Every page in a real browser, as a new user meets it: open it, press its first Run button with the
page's defaults (the quick look where a page has one), wait for the figure, and keep a screenshot.

Each page gets its own served app (see ``served_app``) and must finish its run before the screenshot,
so no script run outlives its page. The screenshots go to ``out/pages/`` (CI artefacts); the README's
are copied from there by ``scripts/readme_screenshots.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import browser_page, settle

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "out" / "pages"
pytestmark = [pytest.mark.slow, pytest.mark.browser]

#: (URL path, a text the page shows once drawn, whether a run ends in a plotly figure)
PAGES = [
    ("", "Interpretability workbench", False),
    ("Layer_stats", "Layer statistics", True),
    ("Lenses", "Logit lens", True),
    ("DecoderLens", "DecoderLens", True),
    ("Geometry", "Geometry: anisotropy", True),
    ("Layer_quality", "Layer-wise representation quality", True),
    ("Circuits", "Circuits (SAE circuit finding)", True),
    ("Inversion", "Embedding inversion", True),
    ("Attribution", "Attention, attribution and patching", True),
    ("SAE_features", "SAE features", True),
    ("Similarity", "Outliers, transforms and layer similarity", True),
    ("Cache", "Activation cache", False),
]
RUN_SECONDS = 600  # per page: a run, or waiting for one to finish


@pytest.mark.parametrize("path,title,draws", PAGES, ids=[p[0] or "Home" for p in PAGES])
def test_every_page_runs_its_defaults_in_a_browser(served_app, tmp_path, path, title, draws):
    url, _ = served_app
    name = path or "Home"
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{name}.png"
    # tall: Streamlit scrolls inside its own container, so a "full page" screenshot is the viewport
    with browser_page(width=1400, height=2200) as page:
        try:
            page.goto(f"{url}/{path}", timeout=300_000, wait_until="commit")
            page.get_by_text(title).first.wait_for(timeout=300_000)
            settle(page)
            if draws:
                # the page's first primary button (Run, Invert, Train / evaluate); pages that run on load have none
                # (a visible one: a button in a tab that is not shown, such as Geometry's 2-D map, does not count)
                run = page.locator("[data-testid='stBaseButton-primary']:visible")
                if page.locator("[data-testid='stBaseButton-primary']").count():
                    _press(page, run.first)
                page.locator(".js-plotly-plot").first.wait_for(timeout=RUN_SECONDS * 1000)
                # the figure is drawn; give the rest of the run two minutes to end, then take the screenshot
                settle(page, seconds=120, required=False)
                if page.get_by_text("Resuming the run you started").count():
                    print(f"{name}: a rerun interrupted the run and it resumed (a dropped connection?)")
        except Exception as exc:
            page.screenshot(path=str(SHOTS / f"{name}_failed.png"), full_page=True)
            raise AssertionError(f"{name}: {type(exc).__name__}\n{_diagnosis(page, tmp_path)}") from exc
        page.screenshot(path=str(shot), full_page=True)
        errors = [t.strip()[:300] for t in page.locator(
            "[data-testid='stException'], [data-testid='stAlertContentError']").all_inner_texts()]
    assert not errors, f"{name} shows an error: {errors}"
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10, f"the {name} screenshot is blank"


def _diagnosis(page, tmp_path) -> str:
    """What a failed page showed and what its server printed (``served_app`` logs to ``tmp_path``)."""
    try:
        state = page.locator("[data-testid='stApp']").get_attribute("data-test-script-state", timeout=5_000)
        shown = page.locator("[data-testid='stException'], [data-testid='stAlertContainer'], "
                             "[data-testid='stCaptionContainer']").all_inner_texts()
    except Exception as exc:  # the page itself is gone
        state, shown = f"unreadable ({exc.__class__.__name__})", []
    log = tmp_path / "streamlit.log"
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else "(no server log)"
    return (f"script state: {state}\nshown: {[t.strip()[:200] for t in shown]}\n"
            f"server log (tail):\n{tail}")


def _press(page, button) -> None:
    """Click ``button`` until a script run starts. Clicks that started no run were seen while the
    server's output went to a pipe nobody read (a server blocked on a write; see ``served_app``);
    the retry stays as a guard."""
    started = "[data-testid='stApp'][data-test-script-state='running'], .js-plotly-plot"
    for attempt in range(3):
        button.click(timeout=120_000)
        try:
            page.locator(started).first.wait_for(state="attached", timeout=20_000)
            return
        except Exception:
            if attempt == 2:
                raise


def test_readme_screenshots_are_from_the_browser_test():
    """The README shows screenshots this test takes (copied by scripts/readme_screenshots.py)."""
    readme = (ROOT / "README.md").read_text()
    shown = [line for line in readme.splitlines() if "docs/screenshots/" in line and line.startswith("![")]
    assert len(shown) >= 3, "the README should show a few page screenshots"
    for line in shown:
        file = line.split("(", 1)[1].rstrip(")")
        assert (ROOT / file).is_file(), file
