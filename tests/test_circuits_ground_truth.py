"""Ground-truth circuits: the shipped files, matching, and the GPT-2-small path end to end.

A random GPT-2-small-shaped model (``GPT2Config()`` defaults: 12 layers x 12 heads, d 768; tiny
WordLevel vocabulary) is matched to the IOI ground truth by architecture; the SAE method then runs
and is scored against the 26 heads (shapes and scoring only: the model is random).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from analyses.circuits.ground_truth import load_ground_truths, match_ground_truth


pytestmark = pytest.mark.usefixtures("one_torch_thread")


GPT2 = {"model_type": "gpt2", "n_layers": 12, "n_heads": 12, "d_model": 768, "attention_only": False}


def test_shipped_ground_truths_are_the_published_lists():
    by_task = {g["task"]: g for g in load_ground_truths()}
    assert set(by_task) >= {"ioi", "greater_than", "docstring", "induction"}
    ioi = {tuple(h) for h in by_task["ioi"]["heads"]}
    assert len(ioi) == 26 and {(9, 9), (10, 0), (9, 6), (9, 0), (2, 2), (4, 11), (0, 1), (11, 10)} <= ioi
    assert sum(len(v) for v in by_task["ioi"]["classes"].values()) == 26
    assert {tuple(h) for h in by_task["greater_than"]["heads"]} == \
        {(0, 1), (0, 3), (0, 5), (5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1)}
    assert {tuple(h) for h in by_task["docstring"]["heads"]} == {(0, 5), (1, 0), (1, 4), (2, 0), (3, 0), (3, 6)}


def test_matching_by_name_and_architecture():
    hit = match_ground_truth("ioi", "some-folder", GPT2)
    assert hit is not None and hit["matched_by"] == "architecture" and hit["mask"].sum() == 26
    assert hit["mask"][9 * 12 + 9] and not hit["mask"][0]
    assert match_ground_truth("greater_than", "gpt2", GPT2)["matched_by"] == "name"
    assert match_ground_truth("docstring", "gpt2", GPT2) is None  # other task's model
    assert match_ground_truth("ioi", "smollm2-135m", {**GPT2, "model_type": "llama", "n_layers": 30,
                                                      "n_heads": 9, "d_model": 576}) is None
    ds = {"model_type": "whatever", "n_layers": 4, "n_heads": 8, "d_model": 512, "attention_only": True}
    assert match_ground_truth("docstring", None, ds)["mask"].sum() == 6
    assert match_ground_truth("docstring", None, {**ds, "attention_only": False}) is None
    # the project model's circuit applies by name only
    aoi = {"model_type": "llama", "n_layers": 4, "n_heads": 8, "d_model": 64, "attention_only": True}
    assert match_ground_truth("induction", "attn-only-induction", aoi)["mask"].sum() == 6
    assert match_ground_truth("induction", "sample_data/models/attn-only-induction", aoi) is not None
    assert match_ground_truth("induction", "other-model", aoi) is None
    # a name match still needs the right shape
    assert match_ground_truth("ioi", "gpt2", {**GPT2, "n_layers": 2}) is None


def _gpt2_random(folder):
    """GPT2Config() shape, random init, a WordLevel vocabulary with the IOI template words, saved
    (float16 on disk, half the bytes) and loaded as every model is (workbench.models.load_model)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from test_circuits import IOI_WORDS, _word_tokenizer
    from workbench.models import load_model

    _word_tokenizer(IOI_WORDS + ["Michael", "David", "Daniel", "Ryan", "Adam", "Eric", "Paul", "Mark"]) \
        .save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = GPT2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (12, 12, 768)
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # fast random init (GPT-2's: N(0, 0.02), LayerNorm weights 1)
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    model.tie_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.half().save_pretrained(folder)
        return load_model(str(folder), device="cpu", dtype="float32")


def test_gpt2_small_shaped_ground_truth_path(tmp_path, store):
    from analyses.circuits import find_circuit

    model = _gpt2_random(tmp_path / "random-gpt2-shape")
    table, summary = find_circuit(model, store=store, task="ioi", n_examples=6, seeds=2, n_epochs=5, n_features=50,
                                  ablation="none")
    assert table.shape[0] == 144
    assert list(table["layer"][:13]) == [0] * 12 + [1] and list(table["head"][:13]) == list(range(12)) + [0]
    assert table["ground_truth"].sum() == 26 and bool(table.loc[9 * 12 + 9, "ground_truth"])
    gt = summary["ground_truth"]
    assert gt["matched_by"] == "architecture" and gt["n_heads"] == 26
    block = summary["vs_ground_truth"]
    assert len(block["node_roc_auc_per_seed"]) == 2 and block["n_reference_heads"] == 26
    assert all(a is None or 0.0 <= a <= 1.0 for a in block["node_roc_auc_per_seed"])
    assert {"node_tpr_tnr_hmean_mean", "node_precision_mean", "node_recall_mean", "edge_roc_auc_mean"} <= set(block)
    np.testing.assert_allclose(table["sae_score"].sum(), 1.0)
    assert "vs_ablation" not in summary and summary["runtimes_s"]["ablation"] is None
    assert summary["architecture"]["model_type"] == "gpt2"
    assert summary["runtimes_s"]["sae_extraction_cache_hit"] is False
