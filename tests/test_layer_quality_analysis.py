"""The layer_quality analysis end to end: registry, vectors input, a small real run, errors."""

import math

import numpy as np
import pytest

from analyses.layer_quality import DEFAULTS, METRIC_COLUMNS
from analyses.layer_quality import metrics as M
from analyses.layer_quality.core import layer_row
from analyses.layer_quality.downstream import claim_sentence
from workbench.analysis import get_analysis, run_analysis
from workbench.data import TextDataset
from workbench.errors import WorkbenchError
from workbench.store import ActivationStore


def test_registered():
    spec = get_analysis("layer_quality")
    assert set(spec.inputs) == {"model", "vectors"} and spec.page == "app_pages/5_Layer_quality.py"
    assert set(spec.param_help) == set(DEFAULTS)


def test_layer_row_equals_the_metric_functions():
    rng = np.random.default_rng(0)
    prompts = [rng.standard_normal((n, 12)) for n in (6, 9, 4, 7, 8)]
    views = rng.standard_normal((5, 4, 12))
    timings = {}
    row = layer_row(prompts, None, views, timings=timings)
    pooled = np.stack([Z.mean(0) for Z in prompts])
    V = views / np.linalg.norm(views, axis=-1, keepdims=True)
    assert row["prompt_entropy"] == pytest.approx(M.prompt_entropy(prompts))
    assert row["curvature"] == pytest.approx(M.prompt_curvature(prompts))
    assert row["dataset_entropy"] == pytest.approx(M.dataset_entropy(pooled))
    assert row["effective_rank"] == pytest.approx(M.effective_rank(pooled))
    assert row["infonce"] == pytest.approx(M.infonce(V[:, 0], V[:, 1])[0])
    assert row["lidar"] == pytest.approx(M.lidar(V))
    assert row["dime"] == pytest.approx(M.dime(V[:, 0], V[:, 1]))
    assert row["n_prompts"] == 5
    assert {"prompt_entropy", "curvature", "lidar", "dime", "twonn"} <= set(timings)


def test_runs_on_user_vectors():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 40))  # 5-d data in R^40
    result = run_analysis("layer_quality", vectors=X.astype(np.float32))
    row = result.table.iloc[0]
    assert row["dataset_entropy"] == pytest.approx(M.dataset_entropy(X), rel=1e-5)
    assert row["effective_rank"] == pytest.approx(M.effective_rank(X), rel=1e-5)
    assert 4.0 < row["twonn"] < 6.0
    assert "prompt_entropy" not in result.table and "lidar" not in result.table  # need tokens / texts
    assert result.summary["metrics"] == ["dataset_entropy", "effective_rank", "twonn"]
    assert result.figure() is not None


def test_bad_parameters_are_user_errors():
    X = np.random.default_rng(2).standard_normal((20, 4)).astype(np.float32)
    with pytest.raises(WorkbenchError, match="normalization"):
        run_analysis("layer_quality", vectors=X, params={"normalization": "bits"})
    with pytest.raises(WorkbenchError, match="curvature"):
        run_analysis("layer_quality", vectors=X, params={"curvature": "menger"})


WORD_TEXTS = {
    "animals": ["the cat sat on the mat", "a dog sat on a big mat", "the small cat and the dog",
                "a red cat sat in the city", "the dog was on the blue mat"],
    "places": ["paris is the capital of france", "the river in paris is big", "a city on a river",
               "the capital city of france is paris", "one big city and one small river"],
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_bert_dir):
    """A tiny random BERT (2 layers, word tokenizer) on 10 labelled texts, 4 x 3 augmented copies,
    8 retrieval pairs from a small table: every code path of the analysis in seconds."""
    import json

    from workbench.models import load_model

    model = load_model(str(tiny_bert_dir))
    texts = [t for label in WORD_TEXTS for t in WORD_TEXTS[label]]
    labels = [label for label in WORD_TEXTS for _ in WORD_TEXTS[label]]
    data = TextDataset.from_texts(texts, name="tiny-topics", labels=labels)
    pairs = tmp_path_factory.mktemp("retr") / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"title": " ".join(t.split()[:3]), "abstract": t}) for t in texts))
    store = ActivationStore(root=tmp_path_factory.mktemp("store"))
    params = {"max_texts": 10, "max_length": 16, "aug_texts": 4, "n_augmentations": 3, "probe_folds": 3,
              "retrieval_data": str(pairs), "retrieval_pairs": 8}
    return run_analysis("layer_quality", model=model, data=data, params=params, store=store), store, model, data, params


def test_small_real_run(small_run):
    result, store, model, data, params = small_run
    t = result.table
    assert list(t["layer"]) == list(range(model.n_layers + 1))
    for col in METRIC_COLUMNS:
        assert t[col].notna().all(), col
    assert t["probe_accuracy"].between(0, 1).all() and t["retrieval_mrr"].between(0, 1).all()
    assert (t["prompt_entropy"] <= 1 + 1e-9).all() and (t["curvature"] <= math.pi).all()
    s = result.summary
    assert s["augmentation"]["n_augmentations"] == 3 and s["augmentation"]["settings"]["word_p"] == 0.3
    assert s["probe"]["dataset"] == "tiny-topics"  # 'auto' uses the run's labelled data
    assert s["retrieval"]["n_pairs"] == 8
    assert set(s["spearman_with_probe_accuracy"]) >= {"prompt_entropy", "dime"}
    assert t["retrieval_mrr_se"].between(0, 1).all()
    claim = s["intermediate_vs_last"]
    assert claim["probe"]["best_layer"] == s["recommendation"]["best_layer"]
    assert claim["retrieval"]["best"] == pytest.approx(t["retrieval_mrr"].max())
    best_row = t.loc[t["layer"] == claim["retrieval"]["best_layer"]].iloc[0]
    assert claim["retrieval"]["se"] == pytest.approx(best_row["retrieval_mrr_se"])
    sentence = claim_sentence(claim)
    assert sentence.startswith("Intermediate vs last layer. topic probe: layer ") and "retrieval MRR: layer" in sentence
    rec = s["recommendation"]
    assert rec["criterion"] == "probe_accuracy" and rec["best_layer"] in t["layer"].tolist()
    assert rec["last_layer"] == model.n_layers
    # the summary's numbers come from the same per-layer rows as the pure function
    assert t["probe_accuracy"].max() == pytest.approx(
        t.loc[t["layer"] == rec["best_layer"], "probe_accuracy"].iloc[0])
    assert result.figure() is not None


def test_small_run_is_cached_and_seeded(small_run):
    result, store, model, data, params = small_run
    again = run_analysis("layer_quality", model=model, data=data, params=params, store=store)
    assert all(e["hit"] for e in again.manifest["cache"])
    cols = [c for c in METRIC_COLUMNS + ("probe_accuracy",)]
    assert np.allclose(again.table[cols].to_numpy(float), result.table[cols].to_numpy(float), equal_nan=True)


def test_page_renders():
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file("../app_pages/5_Layer_quality.py", default_timeout=120).run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Run"]
