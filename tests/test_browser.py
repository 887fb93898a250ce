"""A real browser: serve the app, open it in headless Chromium, change a widget, check the figure."""

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import browser_page

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_app_binds_to_localhost_only(served_app):
    _, port = served_app
    out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
    listening = [line for line in out.splitlines() if f":{port} " in line]
    if listening:
        assert all("127.0.0.1" in line for line in listening), listening


def test_real_browser_layer_stats(served_app, tmp_path):
    url, _ = served_app
    with browser_page() as page:
        page.goto(url + "/Layer_stats", timeout=300_000, wait_until="commit")  # the page then says when it is drawn
        page.get_by_text("Layer statistics").first.wait_for(timeout=300_000)
        # pick something in a widget: fewer texts and shorter texts
        box = page.get_by_role("spinbutton", name="Texts (first N)")
        box.fill("4")
        box.press("Enter")
        length = page.get_by_role("spinbutton", name="Tokens per text")
        length.fill("16")
        length.press("Enter")
        page.locator(".js-plotly-plot").first.wait_for(timeout=300_000)
        page.wait_for_timeout(1500)
        assert page.get_by_text("Cosine to previous layer").count() >= 1
        shot = tmp_path / "layer_stats.png"
        page.screenshot(path=str(shot), full_page=True)
    from PIL import Image
    import numpy as np

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the screenshot is blank"
    # keep a copy for people looking at CI artefacts
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    shutil.copy(shot, out / "browser_layer_stats.png")
