"""A real browser: serve the app, open it in headless Chromium, change a widget, check the figure."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the app did not start: " + proc.stdout.read().decode()[-2000:])
    yield url, port
    proc.terminate()
    proc.wait(timeout=30)


def test_app_binds_to_localhost_only(served_app):
    _, port = served_app
    out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
    listening = [line for line in out.splitlines() if f":{port} " in line]
    if listening:
        assert all("127.0.0.1" in line for line in listening), listening


def test_real_browser_layer_stats(served_app, tmp_path):
    if CHROMIUM is None:
        pytest.fail("headless Chromium is required for the browser test: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    url, _ = served_app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url + "/Layer_stats", timeout=120_000)
        page.get_by_text("Layer statistics").first.wait_for(timeout=120_000)
        # pick something in a widget: fewer texts and shorter texts
        box = page.get_by_label("Texts (first N)")
        box.fill("4")
        box.press("Enter")
        length = page.get_by_label("Tokens per text")
        length.fill("16")
        length.press("Enter")
        page.locator(".js-plotly-plot").first.wait_for(timeout=300_000)
        page.wait_for_timeout(1500)
        assert page.get_by_text("Cosine to previous layer").count() >= 1
        shot = tmp_path / "layer_stats.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    from PIL import Image
    import numpy as np

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the screenshot is blank"
    # keep a copy for people looking at CI artefacts
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    shutil.copy(shot, out / "browser_layer_stats.png")
