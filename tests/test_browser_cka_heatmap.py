"""A real browser on the Similarity page: open the layer-similarity tab, run it small, see the CKA heatmap."""

import shutil
from pathlib import Path

import pytest

from conftest import browser_page

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_real_browser_cka_heatmap(served_app, tmp_path):
    url, _ = served_app
    with browser_page() as page:
        page.goto(url + "/Similarity", timeout=300_000, wait_until="commit")  # the page then says when it is drawn
        page.get_by_text("Outliers, transforms and layer similarity").first.wait_for(timeout=300_000)
        page.get_by_role("tab", name="Layer similarity").click()
        panel = page.locator('[role="tabpanel"]:visible')
        for label, value in (("Texts to compare (first N)", "4"), ("Tokens per text to compare", "16")):
            box = panel.get_by_role("spinbutton", name=label)
            box.fill(value)
            box.press("Enter")
            page.wait_for_timeout(500)
        panel.get_by_role("button", name="Run").click()
        panel.locator(".js-plotly-plot").first.wait_for(timeout=300_000)
        page.wait_for_timeout(1500)
        heatmap = panel.locator(".js-plotly-plot").first
        assert heatmap.locator(".hm, .heatmaplayer, image").count() >= 1  # a heatmap trace is drawn
        titles = heatmap.locator(".annotation-text").all_text_contents()  # SVG text: no innerText
        assert "cka" in titles and "cka_debiased" in titles
        assert panel.get_by_text("workbench run layer_similarity").count() >= 1
        shot = tmp_path / "similarity.png"
        heatmap.screenshot(path=str(shot))
        page.screenshot(path=str(tmp_path / "similarity_page.png"), full_page=True)
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the heatmap screenshot is blank"
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    shutil.copy(shot, out / "browser_similarity_cka.png")
    shutil.copy(tmp_path / "similarity_page.png", out / "browser_similarity_page.png")
