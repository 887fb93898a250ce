"""A real browser on the attribution page: pick the induction model, run attention patterns on repeated
random tokens, click one head's pattern in the layer x head grid, and check that it opens large with its
reproducing command (then pick another head from the list)."""

from pathlib import Path

import pytest

from conftest import browser_page

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _choose(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label).click()
    page.keyboard.type(option)  # filters the list (a long one renders only its visible options)
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_timeout(1000)  # the rerun that the choice starts


def _click_head(page, index: int) -> None:
    """Click the marker in the middle of the grid's ``index``-th pattern (layer-major order)."""
    grid = page.locator(".js-plotly-plot").first
    grid.scroll_into_view_if_needed()
    marker = grid.locator(".scatterlayer .trace .points path").nth(index)
    box = marker.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_timeout(300)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def test_real_browser_opens_a_heads_pattern(served_app):
    url, _ = served_app
    with browser_page() as page:
        page.goto(url + "/Attribution", timeout=300_000, wait_until="commit")  # the page then says when it is drawn
        page.get_by_text("Attention, attribution and patching").first.wait_for(timeout=300_000)
        page.get_by_role("combobox", name="Model").wait_for(timeout=120_000)
        _choose(page, "Model", "attn-only-induction")
        _choose(page, "Prompt set", "repeats")
        page.get_by_role("button", name="Run").first.click()
        page.locator(".js-plotly-plot").first.wait_for(timeout=300_000)
        try:
            page.get_by_text("Head L1H").first.wait_for(timeout=120_000)  # the top induction head, opened by default
        except Exception:
            (ROOT / "out").mkdir(exist_ok=True)
            page.screenshot(path=str(ROOT / "out" / "browser_attribution_failed.png"), full_page=True)
            raise
        page.wait_for_timeout(1500)
        _click_head(page, 3)  # L0H3: layer 0, fourth head (8 heads per layer)
        page.get_by_text("Head L0H3").first.wait_for(timeout=120_000)
        page.get_by_text("L0H3 — prev-token").first.wait_for(timeout=60_000)  # the large heatmap's title
        page.get_by_text("--set head=L0H3").first.wait_for(timeout=60_000)  # its reproducing command
        _choose(page, "Head to open", "L1H5")  # the list still chooses another head
        page.get_by_text("Head L1H5").first.wait_for(timeout=120_000)
        page.wait_for_timeout(1500)
        assert page.locator(".js-plotly-plot").count() >= 3  # the grid, the head, the scores (stale ones may linger)
        (ROOT / "out").mkdir(exist_ok=True)  # a picture for people looking at CI artefacts
        png = page.screenshot(path=str(ROOT / "out" / "browser_attribution.png"), full_page=True)
    assert len(png) > 50_000, "the screenshot is (nearly) blank"
