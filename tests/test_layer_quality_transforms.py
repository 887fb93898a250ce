"""layer_quality with a representation transform (probe and retrieval beside the untransformed scores)
and WhiteningBERT's first + last layer pooling, on a tiny model."""

import json

import numpy as np
import pytest

from workbench.analysis import run_analysis
from workbench.data import TextDataset
from workbench.errors import WorkbenchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = {
    "animals": ["the cat sat on the mat", "a dog sat on a big mat", "the small cat and the dog",
                "a red cat sat in the city", "the dog was on the blue mat", "one cat and two dogs"],
    "places": ["paris is the capital of france", "the river in paris is big", "a city on a river",
               "the capital city of france is paris", "one big city and one small river", "france has a river"],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert_dir):
    from workbench.models import load_model
    from workbench.store import ActivationStore

    texts = [t for label in TEXTS for t in TEXTS[label]]
    labels = [label for label in TEXTS for _ in TEXTS[label]]
    data = TextDataset.from_texts(texts, name="tiny-topics", labels=labels)
    pairs = tmp_path_factory.mktemp("retr") / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"title": " ".join(t.split()[:3]), "abstract": t}) for t in texts))
    params = {"max_texts": 12, "max_length": 16, "aug_texts": 0, "probe_folds": 3, "retrieval_data": str(pairs),
              "retrieval_pairs": 12}
    store = ActivationStore(root=tmp_path_factory.mktemp("store"))
    return load_model(str(tiny_bert_dir)), data, params, store


def test_transform_adds_the_transformed_scores_beside_the_untransformed(setup):
    model, data, params, store = setup
    plain = run_analysis("layer_quality", model=model, data=data, params=params, store=store)
    assert not [c for c in plain.table if c.endswith("_transformed")]
    assert plain.summary["transform"] == {"transform": "none"}
    res = run_analysis("layer_quality", model=model, data=data, store=store,
                       params={**params, "transform": "whiten_k", "transform_k": 4})
    t = res.table
    for col in ("probe_accuracy", "retrieval_mrr", "retrieval_recall_at_1"):
        np.testing.assert_allclose(t[col], plain.table[col])  # the untransformed scores do not move
        assert t[f"{col}_transformed"].between(0, 1).all()
    tr = res.summary["transform"]
    assert tr["transform"] == "whiten_k" and tr["fit_on"] == "the data it is applied to"
    assert {d["set"] for d in tr["per_layer"]} == {"probe", "retrieval"}
    assert {d["n_fit"] for d in tr["per_layer"] if d["set"] == "retrieval"} == {24}  # queries and documents
    assert set(tr["scores"]) == {"probe_accuracy", "retrieval_recall_at_1", "retrieval_mrr"}
    fig = res.figure()
    assert any("whiten_k" in (tr_.name or "") for tr_ in fig.data)


def test_whitening_too_few_points_is_one_clear_error_or_shrunk(setup):
    model, data, params, store = setup
    with pytest.raises(WorkbenchError, match=r"whiten needs a covariance of rank 32, but 12 points in 32 dimensions"):
        run_analysis("layer_quality", model=model, data=data, store=store, params={**params, "transform": "whiten"})
    res = run_analysis("layer_quality", model=model, data=data, store=store,
                       params={**params, "transform": "whiten", "transform_shrinkage": 0.2})
    assert res.table["probe_accuracy_transformed"].notna().all()


def test_first_last_pooling(setup):
    model, data, params, store = setup
    mean = run_analysis("layer_quality", model=model, data=data, params=params, store=store).table
    fl = run_analysis("layer_quality", model=model, data=data, store=store,
                      params={**params, "pooling": "first_last", "combine_layer": 1}).table
    # averaging layer 1 with itself is layer 1: the same scores there
    row_m, row_f = mean[mean["layer"] == 1].iloc[0], fl[fl["layer"] == 1].iloc[0]
    for col in ("probe_accuracy", "retrieval_mrr", "dataset_entropy", "prompt_entropy"):
        assert row_f[col] == pytest.approx(row_m[col], rel=1e-6)
    entry = store.get_or_extract(model, data, model.resid_hooks(), max_length=16)
    h = model.resid_hooks()
    from analyses.layer_quality import metrics as M

    pooled = (entry.mean_pooled(h[1]) + entry.mean_pooled(h[-1])) / 2
    assert fl["dataset_entropy"].iloc[-1] == pytest.approx(M.dataset_entropy(pooled), rel=1e-5)
    with pytest.raises(WorkbenchError, match="combine_layer 9 is out of range"):
        run_analysis("layer_quality", model=model, data=data, store=store,
                     params={**params, "pooling": "first_last", "combine_layer": 9})


@pytest.mark.slow
def test_layer_quality_page_shows_the_scores_before_and_after(setup, tiny_bert_dir, tmp_path, monkeypatch):
    """The Layer quality page with a transform: the transformed probe / retrieval beside the untransformed
    (a before / after table and dashed curves), with WhiteningBERT's first + last pooling."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    _, _, params, _ = setup
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    probe = tmp_path / "probe.jsonl"
    probe.write_text("\n".join(json.dumps({"text": t, "label": label}) for label in TEXTS for t in TEXTS[label]))
    page = Path(__file__).resolve().parent.parent / "app_pages" / "5_Layer_quality.py"
    at = AppTest.from_file(str(page), default_timeout=600)
    at.session_state["model"] = at.session_state["model_other"] = str(tiny_bert_dir)
    for key, value in {"lq_texts": 6, "lq_len": 16, "lq_aug": 0, "lq_probe": str(probe), "lq_folds": 3,
                       "lq_retr": params["retrieval_data"], "lq_pairs": 12, "lq_pool": "first_last",
                       "lq_transform": "whiten_k", "lq_transform_k": 4}.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.button(key="run_layer_quality").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert any("Before and after whiten_k" in h.value for h in at.subheader)
    before_after = next(d.value for d in at.dataframe if "last_layer_after" in d.value.columns)
    assert set(before_after.index) == {"probe_accuracy", "retrieval_recall_at_1", "retrieval_mrr"}
    assert any("transform=whiten_k" in c.value and "pooling=first_last" in c.value for c in at.code)
