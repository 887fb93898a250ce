"""The registered ``geometry`` and ``projection`` analyses: vectors input, a tiny model, figures."""

import numpy as np
import pandas as pd
import pytest

from workbench.stats import mle, svd_anisotropy, twonn
from workbench.analysis import run_analysis
from workbench.errors import WorkbenchError

FAST = {"n_boot": 10, "n_boot_spectrum": 5}


def _vectors(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 4)) @ rng.standard_normal((4, 40))).astype(np.float32)


def _texts(n=24, seed=0):
    from conftest import WORDS

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 12)))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from workbench.models import load_model

    return load_model(str(tiny_llama_dir))


def test_geometry_on_vectors_matches_estimators():
    X = _vectors()
    res = run_analysis("geometry", vectors=X, params=FAST)
    t = res.table
    for col in ("layer", "depth", "metric", "estimator", "value", "ci_low", "ci_high", "n_points",
                "n_duplicates_removed", "definition", "representation"):
        assert col in t.columns
    by = t.set_index("estimator")["value"]
    assert by["twonn"] == pytest.approx(twonn(X), rel=1e-12)
    assert by["mle_mg"] == pytest.approx(mle(X), rel=1e-12)
    assert by["svd"] == pytest.approx(svd_anisotropy(X), rel=1e-12)
    assert set(t["estimator"]) == {"svd", "cosine", "twonn", "twonn_microscope", "mle_mg", "pca_90",
                                   "participation_ratio"}
    assert t["value"].notna().all() and np.isfinite(t["value"]).all()
    assert (t["definition"].str.len() > 10).all()
    knn = t[t["estimator"].isin(["twonn", "mle_mg"])]
    assert (knn["ci_low"] < knn["value"]).all() and (knn["value"] < knn["ci_high"]).all()
    assert res.summary["definitions"]["svd"].startswith("sigma_1^2")
    fig = res.figure()
    assert len(fig.data) == 7


def test_geometry_vectors_duplicates_and_subsample():
    X = _vectors(500)
    Xd = np.vstack([X, X[:50]])
    res = run_analysis("geometry", vectors=Xd, params={**FAST, "estimators": "twonn,mle_mean,svd"})
    row = res.table.set_index("estimator").loc["twonn"]
    assert row["n_duplicates_removed"] == 50 and row["n_points"] == 550
    assert row["value"] == pytest.approx(twonn(X), rel=1e-12)
    res = run_analysis("geometry", vectors=X, params={**FAST, "estimators": "twonn", "max_points": 200})
    assert res.table["n_points"].iloc[0] == 200


def test_geometry_bad_params():
    with pytest.raises(WorkbenchError):
        run_analysis("geometry", vectors=_vectors(), params={"estimators": "twonn,bogus"})
    with pytest.raises(WorkbenchError):
        run_analysis("geometry", vectors=_vectors(), params={"representation": "sentence"})


def test_geometry_tiny_model_layers(tiny_llama, store):
    from workbench.data import TextDataset

    ds = TextDataset.from_texts(_texts(), name="words")
    params = {**FAST, "mle_k": 5, "max_texts": 0, "max_length": 32}
    res = run_analysis("geometry", model=tiny_llama, data=ds, params=params, store=store)
    t = res.table
    L = tiny_llama.n_layers
    assert sorted(t["layer"].unique()) == list(range(L + 1))
    np.testing.assert_allclose(t["depth"], t["layer"] / L)
    assert np.isfinite(t["value"]).all()
    twonn_rows = t[t["estimator"] == "twonn"].set_index("layer")
    # layer 0 = token embeddings: repeated words are exact duplicates, removed and counted
    assert twonn_rows.loc[0, "n_duplicates_removed"] > 0
    n_tok = res.summary["n_tokens"]
    assert (t[t["estimator"] == "svd"]["n_points"] == n_tok).all()

    # skip_first drops one position per text; mean_pooled gives one point per text
    res2 = run_analysis("geometry", model=tiny_llama, data=ds, store=store,
                        params={**params, "skip_first": True, "estimators": "svd", "layers": "0,-1"})
    assert list(res2.table["layer"]) == [0, L]
    assert (res2.table["n_points"] == n_tok - len(ds)).all()
    res3 = run_analysis("geometry", model=tiny_llama, data=ds, store=store,
                        params={**params, "representation": "mean_pooled", "estimators": "svd,twonn"})
    assert (res3.table["n_points"] == len(ds)).all()

    # several models overlay on the depth axis
    other = res.table.assign(model="copy")
    res.table = pd.concat([res.table, other], ignore_index=True)
    fig = res.figure()
    assert len({tr.name.split(" · ")[0] for tr in fig.data}) == 2


def test_projection_vectors_pca_matches_sklearn_and_downsamples():
    from sklearn.decomposition import PCA

    X = _vectors(800)
    res = run_analysis("projection", vectors=X, params={"method": "pca", "max_points": 300})
    t = res.table
    assert len(t) == 300 and res.summary["downsampled"] and res.summary["n_total"] == 800
    ref = PCA(2).fit(X.astype(np.float64)).transform(X.astype(np.float64))[t["index"].to_numpy()]
    for j, c in enumerate("xy"):
        sign = np.sign(ref[:, j] @ t[c].to_numpy())
        np.testing.assert_allclose(t[c].to_numpy(), sign * ref[:, j], rtol=1e-6, atol=1e-8)
    again = run_analysis("projection", vectors=X, params={"method": "pca", "max_points": 300})
    pd.testing.assert_frame_equal(t, again.table)  # seeded
    assert res.figure().data


def test_projection_tiny_model_tokens(tiny_llama, store):
    from workbench.data import TextDataset

    texts = _texts(12)
    ds = TextDataset.from_texts(texts, name="words", labels=[i % 3 for i in range(12)])
    res = run_analysis("projection", model=tiny_llama, data=ds, store=store,
                       params={"layer": 1, "max_length": 32, "color": "token"})
    t = res.table
    assert {"x", "y", "text_id", "position", "token", "label", "hover"} <= set(t.columns)
    assert res.summary["layer"] == 1 and res.summary["color"] == "token"
    assert len(t) == res.summary["n_total"]
    fig = res.figure()
    assert len(fig.data) >= 2  # one trace per token category
    res = run_analysis("projection", model=tiny_llama, data=ds, store=store,
                       params={"layer": -1, "representation": "mean_pooled", "max_length": 32})
    assert len(res.table) == 12 and res.summary["color"] == "label"
    with pytest.raises(WorkbenchError):
        run_analysis("projection", model=tiny_llama, data=ds, store=store,
                     params={"max_length": 32, "color": "nonexistent"})


def test_projection_umap_plumbing(monkeypatch):
    """UMAP gets the subsample, the parameters and the seed (a stand-in module: the real umap-learn
    spends minutes compiling numba code on a loaded 2-core machine; see the test below)."""
    import sys
    import types

    calls = {}

    class FakeUMAP:
        def __init__(self, **kw):
            calls.update(kw)

        def fit_transform(self, X):
            calls["n"] = X.shape[0]
            return X[:, :2] * 2.0

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    X = _vectors(400)
    res = run_analysis("projection", vectors=X, params={"method": "umap", "umap_n_neighbors": 7,
                                                         "umap_min_dist": 0.3, "max_points": 100, "seed": 4})
    assert calls["n"] == 100 and calls["n_neighbors"] == 7 and calls["min_dist"] == 0.3
    assert calls["random_state"] == 4 and calls["n_components"] == 2
    idx = res.table["index"].to_numpy()
    np.testing.assert_allclose(res.table["x"], X[idx, 0] * 2.0)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("WORKBENCH_SLOW_TESTS"),
                    reason="real UMAP (numba compilation) is slow; set WORKBENCH_SLOW_TESTS=1")
def test_projection_umap_real():
    pytest.importorskip("umap")
    X = _vectors(150)
    res = run_analysis("projection", vectors=X, params={"method": "umap", "umap_n_neighbors": 10})
    t = res.table
    assert len(t) == 150 and np.isfinite(t[["x", "y"]].to_numpy()).all()


def test_page_renders():
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file("../app_pages/4_Geometry.py", default_timeout=120).run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Run", "Run"]
