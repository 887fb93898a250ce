"""The project's attention-only induction model and the acceptance checks of the circuits back-end.

``sample_data/models/attn-only-induction`` (trained by ``scripts/train_attn_only.py``) must be a
plain Hugging Face causal-LM folder, truly attention-only, wrappable by TransformerBridge, and must
contain a previous-token head feeding induction heads. The SAE method must recover the circuit that
the ablation baseline establishes (node ROC-AUC >= 0.9, mean over 5 seeds) for a fraction of its time.

The full acceptance run at the paper's size (250 + 250 prompts, ratio >= 10) takes minutes on a
shared CPU: it runs with ``WORKBENCH_SLOW_TESTS=1``; the default suite runs 60 + 60 prompts (ablation
on 30) and checks a looser AUC bound (0.85; measured 0.906 on 60 + 60). Runs use a fresh store, so
the SAE path's time includes its extraction; a second identical run must read every clean
activation from the store.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.paths import SAMPLE_DATA

FOLDER = SAMPLE_DATA / "models" / "attn-only-induction"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    from workbench.models import load_model

    return load_model("attn-only-induction")


def test_folder_is_a_plain_hf_causal_lm():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((FOLDER / "workbench_model.json").read_text())
    assert meta["name"] == "attn-only-induction" and meta["kind"] == "decoder"
    assert meta["trained_by"] == "scripts/train_attn_only.py"
    assert (FOLDER / "model.safetensors").stat().st_size < 2_000_000  # small weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(FOLDER, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(FOLDER, local_files_only=True)
    assert hf.config.intermediate_size == 0 and hf.config.num_hidden_layers == 4
    assert tok("t0 t5 t252", add_special_tokens=False)["input_ids"] == [3, 8, 255]
    # every MLP outputs exactly zero: the model is attention-only
    x = torch.randn(2, 5, hf.config.hidden_size)
    for layer in hf.model.layers:
        assert layer.mlp(x).abs().max() == 0


def test_registry_and_bridge(model):
    from workbench.models import builtin_models

    assert builtin_models()["attn-only-induction"].kind == "decoder"
    b = model.bridge
    ids = torch.tensor([[1, 10, 11, 12, 10, 11]])
    _, cache = b.run_with_cache(ids)
    assert cache["blocks.3.attn.hook_z"].shape == (1, 6, 8, 8)
    assert b.W_O.shape == (4, 8, 8, 64)
    assert float(cache["blocks.0.hook_mlp_out"].abs().max()) == 0.0
    assert model.load_report["logprob_max_abs_diff"] < 1e-4


def test_it_does_induction(model):
    """Repeated half: loss far below the uniform log(253); first half: near uniform."""
    from analyses.circuits.ablation import task_metric
    from analyses.circuits.tasks import make_induction
    from workbench.hooked import forward_logits_at

    task = make_induction(model.tokenizer, 40, seed=7, period=30)
    logits = forward_logits_at(model.bridge, task.positive, [[t[0] for t in tg] for tg in task.targets])
    rep_loss = -task_metric(task, logits).mean()
    assert rep_loss < 1.0 < np.log(253) - 1


def test_attention_pattern_scores(model, store):
    from analyses.circuits import attention_scores

    s = attention_scores(model, n_examples=30, period=30, store=store).set_index(["layer", "head"])
    prev = s["prev_token_score"]
    ind = s["induction_score"]
    assert prev.idxmax() == (0, 2) and prev[(0, 2)] > 0.5  # the previous-token head
    strong = ind[ind > 0.5].index.tolist()
    assert len(strong) >= 3 and all(layer == 1 for layer, _ in strong)  # induction heads after it
    assert ind[[(l, h) for l, h in ind.index if l == 0]].max() < 0.05
    cur = s["current_token_score"]
    assert cur[(0, 3)] > 0.9 and cur[(0, 7)] > 0.9  # current-token heads (also in the ablation circuit)


def _check(result, min_auc):
    s = result.summary
    block = s["vs_ablation"]
    assert len(block["node_roc_auc_per_seed"]) == 5
    assert block["node_roc_auc_mean"] >= min_auc, block
    # the ablation-established circuit contains the previous-token head and an induction head
    assert "L0H2" in block["reference_heads"] and "L1H2" in block["reference_heads"]
    assert s["top_heads_ablation"][0] == "L0H2"
    # the agreement with the baseline per seed, and the seed-to-seed stability over the 10 seed pairs
    assert len(s["spearman_sae_vs_ablation_per_seed"]) == 5 and s["seed_stability"]["n_pairs"] == 10
    return s


def test_sae_recovers_ablation_circuit(model, store):
    from workbench.analysis import run_analysis

    # smaller than the paper (60 + 60 prompts, ablation on 30): a looser bound than the full run's 0.9
    result = run_analysis("circuits", model=model, params={"task": "induction", "n_examples": 60, "seeds": 5,
                                                           "ablation_examples": 30}, store=store)
    s = _check(result, 0.85)
    assert {"sae_score", "sae_score_sd", "ablation_effect", "in_ablation_circuit", "ground_truth",
            "prev_token_score", "induction_score"} <= set(result.table.columns)
    assert result.manifest["summary"]["runtimes_s"]["ablation"] > s["runtimes_s"]["sae_run"]
    # the shipped ground truth (ablation + attention scores on 250 sequences) applies by name
    assert s["ground_truth"]["matched_by"] == "name" and result.table["ground_truth"].sum() == 6
    assert s["vs_ground_truth"]["node_roc_auc_mean"] >= 0.85
    fig = result.figure()
    assert len(fig.data) >= 3


@torch.no_grad()
def _direct_head_outputs(bridge, seqs, position="mean", batch_size=32):
    """The head outputs as computed before they were read from the store (hooks on right-padded
    batches, masked float32 mean of z, then z @ W_O): the reference the store path must equal."""
    n_layers, n_heads, d_model = int(bridge.cfg.n_layers), int(bridge.cfg.n_heads), int(bridge.cfg.d_model)
    W_O = bridge.W_O.detach().float()
    out = torch.empty(len(seqs), n_layers * n_heads, d_model)
    pooled, state = {}, {}

    def make_hook(layer):
        def hook(z, hook=None):
            lengths, zf = state["lengths"], z.detach().float()
            if position == "mean":
                mask = (torch.arange(zf.shape[1])[None, :] < lengths[:, None]).to(zf.dtype)
                pooled[layer] = (zf * mask[:, :, None, None]).sum(1) / lengths[:, None, None].to(zf.dtype)
            else:
                pooled[layer] = zf[torch.arange(zf.shape[0]), lengths - 1]
            return z
        return hook

    hooks = [(f"blocks.{l}.attn.hook_z", make_hook(l)) for l in range(n_layers)]
    for start in range(0, len(seqs), batch_size):
        sl = slice(start, min(len(seqs), start + batch_size))
        lengths = torch.tensor([len(s) for s in seqs[sl]])
        ids = torch.zeros(len(lengths), int(lengths.max()), dtype=torch.long)
        for i, s in enumerate(seqs[sl]):
            ids[i, :len(s)] = torch.tensor(s)
        state["lengths"] = lengths
        bridge.run_with_hooks(ids, fwd_hooks=hooks)
        for l in range(n_layers):
            out[sl, l * n_heads:(l + 1) * n_heads] = torch.einsum("bhe,hed->bhd", pooled[l], W_O[l])
    return out


def test_store_head_outputs_equal_direct_forward(model, store):
    """The SAE's inputs read from the store equal a direct hooked forward (to 1e-6)."""
    from analyses.circuits.heads import read_head_outputs, store_reader
    from analyses.circuits.tasks import make_induction

    task = make_induction(model.tokenizer, 12, seed=3, period=20)
    for position in ("mean", "final"):
        X, _ = read_head_outputs(model, task, store_reader(model, store), position=position)
        direct = _direct_head_outputs(model.bridge, task.positive + task.negative, position=position)
        assert float((X - direct).abs().max()) <= 1e-6


def test_second_run_is_a_cache_hit(store):
    """Clean activations come from the store: an identical second run reads them all from the cache
    (every cache event a hit) and gives the same table."""
    from workbench.analysis import run_analysis

    params = {"task": "induction", "n_examples": 20, "seeds": 1}
    first = run_analysis("circuits", model="attn-only-induction", params=params, store=store)
    second = run_analysis("circuits", model="attn-only-induction", params=params, store=store)
    assert first.manifest["cache"] and not any(e["hit"] for e in first.manifest["cache"])
    assert len(second.manifest["cache"]) == len(first.manifest["cache"]) == 2  # prompts, repeated sequences
    assert all(e["hit"] for e in second.manifest["cache"]), second.manifest["cache"]
    assert [e["key"] for e in second.manifest["cache"]] == [e["key"] for e in first.manifest["cache"]]
    pd.testing.assert_frame_equal(first.table, second.table)
    rt1, rt2 = first.summary["runtimes_s"], second.summary["runtimes_s"]
    assert rt1["sae_extraction_cache_hit"] is False and rt2["sae_extraction_cache_hit"] is True
    assert rt2["attention_scores_cache_hit"] is True


@pytest.mark.skipif(os.environ.get("WORKBENCH_SLOW_TESTS") != "1",
                    reason="full-size acceptance run (250 + 250 prompts) takes minutes; set WORKBENCH_SLOW_TESTS=1")
def test_acceptance_full_size(model, store):
    from workbench.analysis import run_analysis

    # a fresh store: the SAE path's time includes its extraction (a cold read), as the ratio needs
    result = run_analysis("circuits", model=model, params={"task": "induction", "n_examples": 250, "seeds": 5},
                          store=store)
    s = _check(result, 0.9)
    assert s["runtimes_s"]["sae_extraction_cache_hit"] is False
    # the speed target (ablation / SAE CPU time >= 10) lives in benchmarks/bench_circuits.py, not in a test:
    # here only that the ratio is recorded and meaningful
    assert s["runtimes_s"]["cpu"]["ablation_over_sae"] > 1, s["runtimes_s"]


def test_page_renders():
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file("../app_pages/6_Circuits.py", default_timeout=120).run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Run"]
