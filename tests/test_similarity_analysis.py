"""The registered ``outliers`` and ``layer_similarity`` analyses: vectors input, tiny models (one, two with
the same tokenizer, two with different ones), figures, errors, and the page."""

from pathlib import Path

import numpy as np
import pytest

from workbench.analysis import get_analysis, run_analysis
from workbench.errors import WorkbenchError
from workbench.stats import linear_cka, linearity_score, procrustes_similarity

from test_geometry_analysis import _texts, tiny_llama  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    from workbench.data import TextDataset

    return TextDataset.from_texts(_texts(n=12), name="tiny-texts")


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory):
    """A tiny BERT whose word tokenizer has one extra token, so every word gets a different id."""
    import torch
    from transformers import BertConfig, BertModel

    from conftest import make_word_tokenizer

    folder = tmp_path_factory.mktemp("tiny_bert_other_vocab")
    tok = make_word_tokenizer(folder, bos="[CLS]", eos="[SEP]", extra=("[MASK]",))
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=24, intermediate_size=48, num_hidden_layers=3,
                     num_attention_heads=4, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(folder)
    return folder


def test_registered():
    for name in ("outliers", "layer_similarity"):
        spec = get_analysis(name)
        assert spec.page == "app_pages/10_Similarity.py" and set(spec.inputs) == {"model", "vectors"}
    assert {t.name for t in get_analysis("outliers").readme_tables} == {"outlier_clipping"}
    assert {t.name for t in get_analysis("layer_similarity").readme_tables} == {"layer_similarity"}


def test_outliers_on_vectors_find_the_planted_dimension():
    from test_transforms import planted

    X, _ = planted(n=800, d=24, dim=5)
    res = run_analysis("outliers", vectors=X.astype(np.float32))
    t = res.table
    assert len(t) == 24 and t.loc[t["is_outlier"], "dim"].tolist() == [5]
    assert res.summary["outliers_by_layer"] == {0: [5]} and res.summary["persistent_dims"][0]["dim"] == 5
    assert t["position_r2"].isna().all()  # no positions for a user matrix
    assert res.figure() is not None
    with pytest.raises(WorkbenchError, match="no per-position detail"):
        get_analysis("outliers").figures["dimension"](res)
    share = run_analysis("outliers", vectors=X, params={"outlier_rule": "extreme_share", "outlier_threshold": 0.9})
    assert share.table.loc[share.table["is_outlier"], "dim"].tolist() == [5] and share.summary["threshold"] == 0.9


def test_outliers_on_a_tiny_model(tiny_llama, data, store):
    res = run_analysis("outliers", model=tiny_llama, data=data, store=store, params={"outlier_threshold": 2.0})
    t = res.table
    L, d = tiny_llama.n_layers + 1, tiny_llama.d_model
    assert len(t) == L * d and sorted(t["layer"].unique()) == list(range(L))
    assert t["position_r2"].between(0, 1).all()
    per = t.groupby("dim")["is_outlier"].mean()
    np.testing.assert_allclose(t["persistence"], t["dim"].map(per))
    s = res.summary
    entry = store.get_or_extract(tiny_llama, data, tiny_llama.resid_hooks(), max_length=128)
    assert s["n_tokens"] == entry.n_tokens and s["n_texts"] == len(data)
    if s["detail"]:
        fig = get_analysis("outliers").figures["dimension"](res)
        assert len(fig.data) == L
    skip = run_analysis("outliers", model=tiny_llama, data=data, store=store, params={"skip_first": True})
    assert skip.summary["n_tokens"] == s["n_tokens"] - len(data) and skip.summary["skip_first"]


def test_layer_similarity_one_model_equals_the_pairwise_functions(tiny_llama, data, store):
    res = run_analysis("layer_similarity", model=tiny_llama, data=data, store=store,
                       params={"precision": "float64", "metrics": "cka,cka_debiased,procrustes,linearity"})
    t = res.table
    entry = store.get_or_extract(tiny_llama, data, tiny_llama.resid_hooks(), max_length=128)
    layers = [entry.layer(h) for h in tiny_llama.resid_hooks()]
    cka = t[t["metric"] == "cka"].pivot_table(index="layer", columns="other_layer", values="value")
    for i in range(len(layers)):
        for j in range(len(layers)):
            assert cka.loc[i, j] == pytest.approx(linear_cka(layers[i], layers[j]), abs=1e-9)
    pro = t[(t["metric"] == "procrustes") & (t["layer"] == 0) & (t["other_layer"] == 2)]["value"].iloc[0]
    assert pro == pytest.approx(procrustes_similarity(layers[0], layers[2]), abs=1e-9)
    lin = t[t["metric"] == "linearity"].sort_values("layer")
    assert list(lin["other_layer"]) == [1, 2]
    assert lin["value"].iloc[0] == pytest.approx(linearity_score(layers[0], layers[1]), abs=1e-9)
    s = res.summary
    assert s["representation"] == "token" and s["n_rows"] == entry.n_tokens and "linearity" in s
    fig = res.figure()
    assert len(fig.data) == 6  # 3 heatmaps + 3 diagonals
    assert len(get_analysis("layer_similarity").figures["linearity"](res).data) == 1


def test_two_models_with_the_same_tokenizer_are_token_aligned(tiny_llama, tiny_llama_dir, data, store):
    res = run_analysis("layer_similarity", model=tiny_llama, data=data, store=store,
                       params={"other_model": str(tiny_llama_dir), "metrics": "cka,linearity", "max_tokens": 50})
    s = res.summary
    assert s["representation"] == "token" and s["n_rows"] == 50 and s["subsampled"]
    assert s["other_model"]["fingerprint"] == tiny_llama.fingerprint
    cka = res.table.pivot_table(index="layer", columns="other_layer", values="value")
    np.testing.assert_allclose(np.diag(cka.to_numpy()), 1.0, atol=1e-5)  # the same model: the diagonal is 1
    assert [a for a, b in s["best_match"]["path"]] == [0, 1, 2] == [b for a, b in s["best_match"]["path"]]
    assert any("consecutive layers of one model" in w for w in res.manifest["warnings"])
    assert "other_model=" in res.manifest["cli"]


def test_two_models_with_different_tokenizers_use_mean_pooled_texts(tiny_llama, other_tokenizer_dir, data, store):
    res = run_analysis("layer_similarity", model=tiny_llama, data=data, store=store,
                       params={"other_model": str(other_tokenizer_dir), "metrics": "cka,procrustes"})
    s = res.summary
    assert s["representation"] == "mean_pooled" and s["n_rows"] == len(data)
    assert "tokenizers differ" in s["representation_reason"]
    assert res.table["other_model"].iloc[0] != res.table["model"].iloc[0]
    cka = res.table.pivot_table(index="layer", columns="other_layer", values="value", aggfunc="first")
    assert cka.shape == (3, 4) and s["other_model"]["n_layers"] == 3  # 2 + 1 layers against 3 + 1
    assert len(res.figure().data) == 4  # 2 heatmaps + 2 best-match paths
    with pytest.raises(WorkbenchError, match="representation=mean_pooled"):
        run_analysis("layer_similarity", model=tiny_llama, data=data, store=store,
                     params={"other_model": str(other_tokenizer_dir), "representation": "token"})


def test_vectors_input():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(WorkbenchError, match="a single layer"):
        run_analysis("layer_similarity", vectors=X)
    stack = np.stack([X, X @ rng.standard_normal((8, 8)), X + 0.1 * rng.standard_normal((50, 8))]).astype(np.float32)
    res = run_analysis("layer_similarity", vectors=stack, params={"metrics": "cka,linearity"})
    cka = res.table[res.table["metric"] == "cka"].pivot_table(index="layer", columns="other_layer", values="value")
    assert cka.shape == (3, 3) and cka.loc[0, 2] == pytest.approx(linear_cka(stack[0], stack[2]), rel=1e-5)
    with pytest.raises(WorkbenchError, match="at least 2 layers"):
        run_analysis("layer_similarity", vectors=stack[:1])


def test_page_renders():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app_pages" / "10_Similarity.py"), default_timeout=300).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("layer similarity" in t.value.lower() for t in at.title)
    assert len(at.tabs) == 3


def test_page_views_on_a_tiny_model(tiny_llama_dir, tmp_path, monkeypatch):
    """Each view of the page, driven through its widgets: outliers (the layers x dimensions view and one
    dimension by position), a transform before / after, and the layer-similarity heatmaps with linearity."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app_pages" / "10_Similarity.py"), default_timeout=300)
    at.session_state["model"] = at.session_state["model_other"] = str(tiny_llama_dir)
    for key in ("out_texts", "tr_texts", "sim_texts"):
        at.session_state[key] = 6
    at.session_state["out_len"] = at.session_state["sim_len"] = 16
    at.session_state["out_thr"] = 1.5
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.button(key="run_outliers").click().run()
    assert not at.exception, [e.value for e in at.exception]
    charts = len(at.get("plotly_chart"))
    assert charts >= 1 and any("workbench run outliers" in c.value for c in at.code)
    if at.selectbox(key="out_dim").options:
        assert charts == 2  # the layers x dimensions view and the dimension by position
    at.button(key="run_geometry").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("transform=clip_outliers" in c.value for c in at.code)
    at.button(key="run_layer_similarity").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("plotly_chart")) == charts + 3  # + transform, + heatmaps, + linearity
    assert any("workbench run layer_similarity" in c.value for c in at.code)


# ---- the real built-in models (slow: they load real weights) -------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from workbench.data import load_dataset
    from workbench.store import ActivationStore

    return load_dataset("abstracts").subset(24), ActivationStore(root=tmp_path_factory.mktemp("similarity_real"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm-l6", "smollm2-135m", "gemma3-270m"])
def test_builtin_model_outliers_and_layer_similarity(name, real):
    """On each built-in model: every layer and dimension scored, CKA a similarity matrix (diagonal 1, symmetric,
    in [0, 1]) that equals the pairwise function, consecutive layers scored for linearity; on the decoders the
    first position's massive activation shows as an outlier dimension that persists across layers."""
    data, store = real
    from workbench.models import load_model

    model = load_model(name, lazy=True)
    out = run_analysis("outliers", model=name, data=data, store=store, params={"max_length": 48})
    t = out.table
    assert len(t) == (model.n_layers + 1) * model.d_model and t["position_r2"].between(0, 1).all()
    sim = run_analysis("layer_similarity", model=name, data=data, store=store,
                       params={"max_length": 48, "metrics": "cka,linearity", "max_tokens": 1000})
    cka = sim.table[sim.table["metric"] == "cka"].pivot_table(index="layer", columns="other_layer", values="value")
    M = cka.to_numpy()
    assert M.shape == (model.n_layers + 1,) * 2
    np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-5)
    np.testing.assert_allclose(M, M.T, atol=1e-7)
    assert np.all((M > -1e-6) & (M < 1 + 1e-5))
    entry = store.get_or_extract(model, data, model.resid_hooks(), max_length=48)
    from workbench.stats import subsample_rows

    rows = subsample_rows(entry.n_tokens, 1000, sim.manifest["seed"])
    a, b = (entry.layer(model.resid_hooks()[k])[rows] for k in (1, model.n_layers))
    assert M[1, -1] == pytest.approx(linear_cka(a, b), abs=1e-5)
    lin = sim.summary["linearity"]
    assert sim.summary["n_rows"] == 1000 > model.d_model  # more rows than dimensions: the fit is not exact
    assert not any("by construction" in w for w in sim.manifest["warnings"])
    assert 0 < lin["min"] <= lin["mean"] <= lin["max"] <= 1 + 1e-9
    if model.kind == "decoder":
        persistent = out.summary["persistent_dims"]
        assert persistent and persistent[0]["persistence"] >= 0.5


@pytest.mark.slow
def test_two_builtin_decoders_with_different_tokenizers(real):
    """smollm2-135m against gemma3-270m on the same texts: different tokenizers, so one mean vector per text."""
    data, store = real
    res = run_analysis("layer_similarity", model="smollm2-135m", data=data, store=store,
                       params={"other_model": "gemma3-270m", "max_length": 48, "metrics": "cka,procrustes"})
    s = res.summary
    assert s["representation"] == "mean_pooled" and s["n_rows"] == len(data)
    cka = res.table[res.table["metric"] == "cka"].pivot_table(index="layer", columns="other_layer", values="value")
    assert cka.shape == (31, s["other_model"]["n_layers"] + 1)
    assert len(s["best_match"]["path"]) == 31 and np.isfinite(cka.to_numpy()).all()
