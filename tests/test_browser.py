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


# Every WebSocket the page opens, kept where the test can close it: a dropped connection, as on a loaded machine
_RECORD_SOCKETS = """(() => { const Native = window.WebSocket; window.__sockets = [];
  window.WebSocket = function (...args) { const s = new Native(...args); window.__sockets.push(s); return s; };
  window.WebSocket.prototype = Native.prototype; Object.assign(window.WebSocket, Native); })();"""


def test_a_dropped_connection_during_a_run_resumes_it(served_app):
    """The connection drops mid-run (seen on loaded 2-core CI machines: the browser test's page went idle
    after its Run press). Streamlit reconnects and reruns the page, which stops the script run that held
    the press. The press is kept in the session, so the rerun resumes the analysis and draws it, instead
    of an idle page that says "press Run"."""
    from conftest import settle

    url, _ = served_app
    with browser_page(width=1400, height=1600) as page:
        page.add_init_script(_RECORD_SOCKETS)
        page.goto(url + "/Geometry", timeout=300_000, wait_until="commit")
        page.get_by_text("Geometry: anisotropy").first.wait_for(timeout=300_000)
        settle(page)
        page.locator("[data-testid='stBaseButton-primary']").first.click(timeout=120_000)
        # the run has started and shows its progress; then the connection drops
        page.locator("[data-testid='stProgress']").first.wait_for(timeout=120_000)
        assert page.evaluate("window.__sockets.length") >= 1
        page.evaluate("window.__sockets.forEach(s => s.close())")
        page.get_by_text("Resuming the run you started").first.wait_for(timeout=120_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=600_000)
        settle(page, seconds=120, required=False)
        # the curves tab drew its figure; the only idle prompt left is the 2-D map tab's own
        assert page.get_by_text("Set the parameters, then press").count() == 1
