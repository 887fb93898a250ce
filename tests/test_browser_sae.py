"""A real browser on the SAE page: train a small SAE on minilm-l6 through the page, open one feature, check
its examples and histogram are drawn."""

import pytest

from conftest import browser_page, settle

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _spin(page, name: str, value: int) -> None:
    box = page.get_by_role("spinbutton", name=name, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(700)


def test_real_browser_opens_one_sae_feature(served_app):
    url, _ = served_app
    with browser_page() as page:
        page.goto(url + "/SAE_features", timeout=300_000, wait_until="commit")  # the page then says when it is drawn
        page.get_by_text("SAE features").first.wait_for(timeout=300_000)
        page.get_by_text("SAE settings").first.click()
        _spin(page, "Training steps", 40)
        _spin(page, "Texts (first N, 0 = all)", 24)
        _spin(page, "Tokens per text (0 = default)", 64)
        page.get_by_text("Features", exact=True).first.click()
        page.get_by_role("button", name="Run").click()
        page.get_by_text("Top-activating examples").first.wait_for(timeout=600_000)
        _spin(page, "Feature", 5)
        page.get_by_text("Feature 5:").first.wait_for(timeout=120_000)
        # the rerun for the new feature redraws its figures: wait for it to end, not a fixed time (on a
        # loaded machine 1.5 s after the caption, the figures were not drawn yet)
        settle(page, seconds=300)
        page.locator(".js-plotly-plot").nth(1).wait_for(timeout=120_000)
        assert page.locator(".js-plotly-plot").count() >= 2  # the feature map and the feature's histogram
        errors = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']").all_inner_texts()
        assert not errors, errors
        assert page.get_by_text("workbench run sae_features").count() >= 1
        png = page.screenshot(full_page=True)
    assert len(png) > 50_000, "the screenshot is (nearly) blank"
