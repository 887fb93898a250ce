"""geometry and projection with a representation transform: the transformed result beside the untransformed
one (which does not move), fit on the same data or on a named fit set."""

import numpy as np
import pytest

from workbench.analysis import run_analysis
from workbench.data import TextDataset
from workbench.errors import WorkbenchError

from test_geometry_analysis import _texts, tiny_llama  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = {"estimators": "svd,cosine,participation_ratio", "n_boot": 0, "n_boot_spectrum": 0}


def test_geometry_transform_beside_the_untransformed_result(tiny_llama, store):
    data = TextDataset.from_texts(_texts(), name="tiny")
    plain = run_analysis("geometry", model=tiny_llama, data=data, store=store, params=FAST)
    assert set(plain.table["transform"]) == {"none"} and plain.summary["transform"] == {"transform": "none"}
    res = run_analysis("geometry", model=tiny_llama, data=data, store=store,
                       params={**FAST, "transform": "remove_top_pcs", "transform_k": 1})
    t = res.table
    before = t[t["transform"] == "none"].reset_index(drop=True)
    np.testing.assert_allclose(before["value"], plain.table["value"])  # the untransformed numbers do not move
    after = t[t["transform"] == "remove_top_pcs"].set_index(["layer", "estimator"])["value"]
    svd_before = before.set_index(["layer", "estimator"])["value"]
    for layer in range(tiny_llama.n_layers + 1):
        assert after[(layer, "svd")] < svd_before[(layer, "svd")]  # the top PC is gone
    assert len(res.summary["transform"]["per_layer"]) == tiny_llama.n_layers + 1
    assert len(res.figure().data) == 2 * len(plain.figure().data)
    assert "transform=remove_top_pcs" in res.manifest["cli"]


def test_geometry_transform_fit_on_a_named_set(tiny_llama, store, tmp_path):
    data = TextDataset.from_texts(_texts(), name="tiny")
    fit = tmp_path / "fit.txt"
    fit.write_text("\n".join(_texts(n=40, seed=3)))
    res = run_analysis("geometry", model=tiny_llama, data=data, store=store,
                       params={**FAST, "transform": "whiten", "transform_fit": str(fit), "max_texts": 0})
    s = res.summary["transform"]
    assert s["fit_on"].startswith("fit") and "40 texts" in s["fit_on"]
    n_fit = {d["n_fit"] for d in s["per_layer"]}
    assert len(n_fit) == 1 and n_fit.pop() > sum(len(t.split()) for t in data.texts)  # the fit set's tokens
    pr = res.table[(res.table["estimator"] == "participation_ratio") & (res.table["transform"] == "whiten")]
    assert (pr["value"] > 5).all()
    with pytest.raises(WorkbenchError, match="transform_fit names a dataset"):
        run_analysis("geometry", vectors=np.random.default_rng(0).standard_normal((60, 5)),
                     params={**FAST, "transform": "whiten", "transform_fit": str(fit)})


def test_projection_transform_two_panels(tiny_llama, store):
    data = TextDataset.from_texts(_texts(), name="tiny")
    plain = run_analysis("projection", model=tiny_llama, data=data, store=store, params={"max_length": 32})
    res = run_analysis("projection", model=tiny_llama, data=data, store=store,
                       params={"max_length": 32, "transform": "clip_outliers", "outlier_threshold": 2.0})
    t = res.table
    assert set(t["transform"]) == {"none", "clip_outliers"}
    np.testing.assert_allclose(t[t["transform"] == "none"]["x"].to_numpy(), plain.table["x"].to_numpy())
    assert len(res.summary["explained_variance_ratio_transformed"]) == 2
    fig = res.figure()
    assert fig.layout.annotations[1].text == "transform: clip_outliers"


@pytest.mark.slow
def test_geometry_page_transform_projection_and_difference_views(tiny_llama_dir, tmp_path, monkeypatch):
    """The Geometry page's new views: the curves before / after a transform, the transformed 2-D map beside the
    untransformed one, and a second (built-in) model as a difference."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    page = Path(__file__).resolve().parent.parent / "app_pages" / "4_Geometry.py"
    at = AppTest.from_file(str(page), default_timeout=600)
    at.session_state["model"] = at.session_state["model_other"] = str(tiny_llama_dir)
    at.session_state["geo_est"] = ["svd", "cosine"]
    at.session_state["geo_texts"] = at.session_state["proj_texts"] = 6
    at.session_state["geo_len"] = 16
    at.session_state["geo_boot"] = at.session_state["geo_bootspec"] = 0
    at.session_state["geo_transform"] = "clip_outliers"
    at.session_state["geo_outlier_threshold"] = 2.0
    at.session_state["proj_tr"] = "remove_top_pcs"  # (the abstracts are mostly <unk> to the tiny tokenizer: rank-deficient)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.button(key="run_geometry").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("transform=clip_outliers" in c.value for c in at.code)
    table = at.dataframe[0].value
    assert set(table["transform"]) == {"none", "clip_outliers"}
    at.button(key="run_projection").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("transform=remove_top_pcs" in c.value and "workbench run projection" in c.value for c in at.code), [c.value for c in at.code] + [e.value for e in at.error]
    at.multiselect(key="geo_overlay").select("minilm-l6").run()
    at.button(key="run_geometry").click().run()
    assert not at.exception, [e.value for e in at.exception]
    at.radio(key="geo_mode").set_value("difference").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = at.dataframe[0].value
    assert shown["model"].str.startswith("minilm-l6 − ").all()
    assert set(shown["transform"]) == {"none", "clip_outliers"}  # the difference keeps the transform apart
