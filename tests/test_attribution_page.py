"""The attribution page under Streamlit's AppTest, on the trained attn-only-induction model: it runs an
analysis from its widgets, draws the figures with their CLI lines, and opens a chosen head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

PAGE = Path(__file__).resolve().parent.parent / "app_pages" / "8_Attribution.py"
pytestmark = pytest.mark.slow


def _titles(at) -> list[str]:
    titles = []
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        titles.append(str(spec.get("layout", {}).get("title", {}).get("text", "")))
    return titles


def test_page_runs_attention_patterns_and_opens_a_head():
    at = AppTest.from_file(str(PAGE), default_timeout=600)
    at.session_state["model"] = "attn-only-induction"
    at.run()
    at.selectbox(key="ap_source").select("repeats").run()
    at.number_input(key="ap_max_texts").set_value(8).run()
    at.button(key="run_attention_patterns").click().run()
    assert not at.exception, [e.value for e in at.exception]
    titles = _titles(at)
    assert len(titles) == 3 and titles[0].startswith("Attention patterns of prompt 0")
    assert any(t.startswith("L1H") for t in titles)  # the top induction head opened large
    assert any("workbench run attention_patterns --model attn-only-induction" in c.value and "source=repeats" in c.value
               for c in at.code)
    at.selectbox(key="ap_head").select("L0H3").run()
    assert not at.exception
    assert any(t.startswith("L0H3") for t in _titles(at))
    assert any("--set head=L0H3" in c.value for c in at.code)


def test_page_runs_logit_attribution_on_typed_prompts():
    at = AppTest.from_file(str(PAGE), default_timeout=600)
    at.session_state["model"] = "attn-only-induction"
    at.run()
    at.text_input(key="dla_clean").input("t1 t2 t3 t4 t5 t1 t2 t3 t4").run()
    at.text_input(key="dla_answer").input(" t5").run()
    at.text_input(key="dla_wrong").input(" t1").run()
    at.button(key="run_logit_attribution").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(t.startswith("Direct logit attribution") for t in _titles(at))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Logit difference"] == metrics["Sum of the parts"]
