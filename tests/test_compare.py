"""Comparing two models as a mode of the per-layer analyses (workbench.compare): the difference view of a
run_many result, combining separate runs, and refusing two models on different datasets."""

from pathlib import Path

import numpy as np
import pytest

from workbench import compare
from workbench.analysis import run_analysis, run_many
from workbench.data import TextDataset
from workbench.errors import WorkbenchError

from test_geometry_analysis import _texts

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return TextDataset.from_texts(_texts(n=8), name="tiny-texts")


def _tiny_llama(folder: Path, seed: int, n_layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import make_word_tokenizer

    tok = make_word_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg.architectures = ["LlamaForCausalLM"]
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tiny_llama_dir, tmp_path_factory):
    """Three tiny decoders: A, B (same depth, other weights), C (four layers)."""
    from workbench.models import load_model

    b = _tiny_llama(tmp_path_factory.mktemp("tiny_llama_b"), seed=1)
    c = _tiny_llama(tmp_path_factory.mktemp("tiny_llama_c"), seed=2, n_layers=4)
    return [load_model(str(p)) for p in (tiny_llama_dir, b, c)]


def test_difference_by_layer_number(models, data, store):
    a, b, _ = models
    both = run_many("layer_stats", [a, b], data=data, store=store, params={"max_texts": 8})
    diff = compare.difference(both)
    ta, tb = (both.table[both.table["model"] == m.name].set_index("layer") for m in (a, b))
    d = diff.table.set_index("layer")
    for col in ("mean_norm", "cos_prev", "top_pc_variance"):
        np.testing.assert_allclose(d[col], tb[col] - ta[col], equal_nan=True)
    assert set(diff.table["model"]) == {f"{b.name} − {a.name}"}
    assert diff.summary["comparison"]["alignment"] == "by layer number"
    assert diff.manifest["cli"] == both.manifest["cli"] and diff.manifest["cli"].count("--model") == 2
    assert diff.figure() is not None  # the analysis's own figure draws the difference
    assert compare.view(both, "side_by_side") is both and compare.view(both, "difference").table.equals(diff.table)


def test_difference_by_depth_interpolates_the_other_model(models, data, store):
    a, _, c = models
    both = run_many("layer_stats", [a, c], data=data, store=store, params={"max_texts": 8})
    diff = compare.difference(both)
    assert diff.summary["comparison"]["alignment"].startswith("by depth")
    tc = both.table[both.table["model"] == c.name]
    ta = both.table[both.table["model"] == a.name].set_index("layer")
    # a's layer 1 of 2 sits at depth 0.5 = c's layer 2 of 4: no interpolation needed there
    expected = float(tc.loc[tc["layer"] == 2, "mean_norm"].iloc[0] - ta.loc[1, "mean_norm"])
    assert diff.table.set_index("layer").loc[1, "mean_norm"] == pytest.approx(expected)


def test_difference_of_geometry_keeps_estimators_apart(models, data, store):
    a, b, _ = models
    both = run_many("geometry", [a, b], data=data, store=store,
                    params={"estimators": "svd,cosine", "n_boot": 0, "n_boot_spectrum": 0})
    diff = compare.difference(both)
    assert {"estimator", "representation", "transform", "metric"} <= set(diff.summary["comparison"]["keys"])
    assert diff.table["ci_low"].isna().all()
    va = both.table[(both.table["model"] == a.name) & (both.table["estimator"] == "svd")].set_index("layer")
    vb = both.table[(both.table["model"] == b.name) & (both.table["estimator"] == "svd")].set_index("layer")
    got = diff.table[diff.table["estimator"] == "svd"].set_index("layer")["value"]
    np.testing.assert_allclose(got, vb["value"] - va["value"])


def test_two_models_on_different_datasets_are_refused(models, data, store):
    a, b, _ = models
    other = TextDataset.from_texts(_texts(n=8, seed=5), name="other-texts")
    ra = run_analysis("layer_stats", model=a, data=data, store=store, params={"max_texts": 8})
    rb = run_analysis("layer_stats", model=b, data=other, store=store, params={"max_texts": 8})
    with pytest.raises(WorkbenchError, match="Cannot compare the models on different datasets"):
        compare.combine([ra, rb])
    with pytest.raises(WorkbenchError, match="different datasets"):
        compare.run_compare("layer_stats", [a, b], data=[data, other], store=store)
    same = compare.combine([ra, run_analysis("layer_stats", model=b, data=data, store=store,
                                             params={"max_texts": 8})])
    assert same.table["model"].nunique() == 2 and len(same.manifest["models"]) == 2
    assert compare.difference(same).table["model"].nunique() == 1
    with pytest.raises(WorkbenchError, match="different parameters"):
        compare.combine([ra, run_analysis("layer_stats", model=b, data=data, store=store, params={"max_texts": 4})])
    with pytest.raises(WorkbenchError, match="two models"):
        compare.difference(ra)
    ok = compare.run_compare("layer_stats", [a, b], data=[data, TextDataset.from_texts(list(data.texts))],
                             store=store, params={"max_texts": 8})
    assert ok.table["model"].nunique() == 2


@pytest.mark.slow
def test_layer_stats_page_difference_mode(tiny_llama_dir, tmp_path, monkeypatch):
    """The comparison controls on a per-layer page: a second (built-in) model, then the difference view."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Layer_stats.py"), default_timeout=600)
    at.session_state["model"] = at.session_state["model_other"] = str(tiny_llama_dir)
    at.session_state["ls_max_texts"] = 4
    at.session_state["ls_max_length"] = 16
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.multiselect(key="ls_overlay").select("minilm-l6").run()
    assert not at.exception, [e.value for e in at.exception]
    side = at.dataframe[0].value if at.dataframe else None
    assert any(c.value.count("--model") == 2 for c in at.code)
    at.radio(key="ls_mode").set_value("difference").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("plotly_chart")) == 1
    shown = at.dataframe[0].value
    assert shown["model"].str.contains("minilm-l6 − ").all() and (side is None or len(shown) < len(side))


def test_compare_cli_one_line_side_by_side_and_difference(models, tmp_path, monkeypatch, capsys):
    """`workbench compare`: both modes from one CLI line, the manifest's line reproduces the view, and two
    --data that are not the same texts are one error line."""
    import json

    from workbench.cli import main

    a, b = (str(m.folder) for m in models[:2])
    names = [m.name for m in models[:2]]
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(_texts(n=6)))
    other = tmp_path / "other.txt"
    other.write_text("\n".join(_texts(n=6, seed=5)))
    base = ["compare", "layer_stats", "--model", a, "--model", b, "--data", str(texts), "--no-static"]
    main(base + ["--out", str(tmp_path / "side")])
    side = json.loads((tmp_path / "side" / "manifest.json").read_text())
    assert side["cli"].startswith("workbench compare layer_stats") and side["cli"].count("--model") == 2
    assert len(side["models"]) == 2
    main(base + ["--out", str(tmp_path / "diff"), "--mode", "difference", "--baseline", b])
    diff = json.loads((tmp_path / "diff" / "manifest.json").read_text())
    assert diff["cli"].endswith(f"--mode difference --baseline {b}")
    assert diff["comparison"]["baseline"] == names[1] and diff["comparison"]["alignment"] == "by layer number"
    import pandas as pd

    table = pd.read_parquet(tmp_path / "diff" / "result.parquet")
    assert set(table["model"]) == {f"{names[0]} − {names[1]}"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(base[:-1] + ["--data", str(other), "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different datasets" in err[0]
    with pytest.raises(SystemExit):
        main(["compare", "layer_stats", "--model", a, "--data", str(texts), "--out", str(tmp_path / "one")])
    assert "at least two models" in capsys.readouterr().err
