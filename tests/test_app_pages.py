"""Every page renders under Streamlit's AppTest; the core pages are driven through their widgets."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
# Home links to the other pages, which only resolves under the app's navigation: it is tested through app.py
PAGES = [p for p in sorted((ROOT / "app_pages").glob("*.py")) if p.stem != "0_Home"]


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_page_renders_without_exception(page):
    at = AppTest.from_file(str(page), default_timeout=600)
    # keep pages that run on load small
    at.session_state["ls_max_texts"] = 4
    at.session_state["ls_max_length"] = 16
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title or at.header or at.markdown, "the page shows nothing"


def test_app_shell_navigation_starts():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert any("workbench" in t.value.lower() for t in at.title)


def test_home_lists_every_analysis():
    from workbench.analysis import list_analyses

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(m.value for m in at.markdown)
    for spec in list_analyses():
        assert spec.title in text
    # every card whose analysis has a page links to it, also where pages are shared (2-D map, tuned lens)
    with_page = [s for s in list_analyses() if s.page and (ROOT / s.page).exists()]
    assert len(at.get("page_link")) == len(with_page)


@pytest.mark.slow
def test_layer_stats_page_shows_figure_export_and_cli():
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Layer_stats.py"), default_timeout=600)
    at.session_state["ls_max_texts"] = 4
    at.session_state["ls_max_length"] = 16
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox[0].value == "smollm2-135m"  # the default model
    assert at.sidebar.selectbox[1].value == "abstracts"     # the default dataset
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    assert any("workbench run layer_stats --model smollm2-135m --data abstracts" in c.value for c in at.code)
    # change a widget: the figure is recomputed for the new setting
    at.checkbox(key="ls_skip").check().run()
    assert not at.exception and len(at.get("plotly_chart")) == 1
    assert any("skip_first=true" in c.value for c in at.code)


def test_cache_page_lists_and_deletes(tmp_path, monkeypatch, tiny_llama_dir):
    from workbench.data import TextDataset
    from workbench.models import load_model
    from workbench.store import ActivationStore

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    store = ActivationStore()
    entry = store.get_or_extract(load_model(str(tiny_llama_dir)), TextDataset.from_texts(["the cat sat"]))
    entry.close()  # an entry open in this process could not be deleted
    at = AppTest.from_file(str(ROOT / "app_pages" / "99_Cache.py"), default_timeout=120).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert entry.key[:12] in table["key"].tolist()
    # by model, dataset and settings, not by hash alone
    assert any(str(tiny_llama_dir.name) in h.value or "tiny" in h.value for h in at.subheader)
    assert table["texts"].tolist() == [1] and "resid" in table["hooks"].iloc[0]
    assert "texts" in at.selectbox(key="cache_key").value
    at.button(key="cache_verify").click().run()
    assert any("intact" in s.value for s in at.success)
    at.button(key="cache_delete").click().run()
    assert ActivationStore().entries() == []


def test_cache_page_asks_before_clearing(tmp_path, monkeypatch, tiny_llama_dir):
    from workbench.data import TextDataset
    from workbench.models import load_model
    from workbench.store import ActivationStore

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    ActivationStore().get_or_extract(load_model(str(tiny_llama_dir)), TextDataset.from_texts(["the cat sat"])).close()
    at = AppTest.from_file(str(ROOT / "app_pages" / "99_Cache.py"), default_timeout=120).run()
    at.button(key="cache_clear").click().run()
    assert len(ActivationStore().entries()) == 1 and any("Delete all 1" in w.value for w in at.warning)
    at.button(key="cache_clear_no").click().run()
    assert len(ActivationStore().entries()) == 1
    at.button(key="cache_clear").click().run()
    at.button(key="cache_clear_yes").click().run()
    assert ActivationStore().entries() == []


def test_quick_look_and_paper_size_are_one_click_apart():
    from workbench.analysis import get_analysis
    from workbench.ui import PAPER_SIZE, QUICK_LOOK

    declared = get_analysis("layer_quality").all_params
    at = AppTest.from_file(str(ROOT / "app_pages" / "5_Layer_quality.py"), default_timeout=120).run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    assert at.number_input(key="lq_texts").value == 40  # the quick look starts small
    at.radio(key="lq_size").set_value(PAPER_SIZE).run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    assert at.number_input(key="lq_texts").value == declared["max_texts"].default
    assert at.number_input(key="lq_aug").value == declared["aug_texts"].default
    at.radio(key="lq_size").set_value(QUICK_LOOK).run()
    assert at.number_input(key="lq_texts").value == 40

