"""Golden values: one quick, real-model case per back-end, each with a tolerance.

These run the shipped path (``run_analysis`` on the built-in models, through the activation store)
and compare a number against a value measured on the repaired code. A failure names the back-end and
the value. The inversion case would have caught the broken KV-cache path: on it the proposer wrote
"When the use- was is that to can) ..." and the cosine fell to about 0.3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.analysis import run_analysis
from workbench.models import load_model

pytestmark = [pytest.mark.slow, pytest.mark.golden]


def golden(backend: str, quantity: str, value: float, *, expected: float | None = None, rtol: float = 0.0,
           atol: float = 0.0, low: float | None = None, high: float | None = None) -> None:
    """Assert one golden value; the message names the back-end, the quantity and the numbers."""
    value = float(value)
    where = f"golden[{backend}] {quantity} = {value:.6g}"
    assert np.isfinite(value), f"{where}: not finite"
    if expected is not None:
        tol = atol + rtol * abs(expected)
        assert abs(value - expected) <= tol, f"{where}, expected {expected:.6g} ± {tol:.3g}"
    if low is not None:
        assert value >= low, f"{where}, expected at least {low:.6g}"
    if high is not None:
        assert value <= high, f"{where}, expected at most {high:.6g}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from workbench.store import ActivationStore

    return ActivationStore(root=tmp_path_factory.mktemp("golden_store"))


def test_golden_logit_lens_last_layer(store):
    res = run_analysis("logit_lens", model="smollm2-135m", data="prompts", store=store,
                       params={"max_texts": 4, "max_length": 32, "target": "final_top1"})
    t = res.table
    last = t[t["layer"] == t["layer"].max()]
    golden("logit_lens", "max KL at the last layer (nats)", last["kl"].max(), expected=0.0, atol=1e-5)
    golden("logit_lens", "max target rank at the last layer", last["rank"].max(), expected=1)
    paris = run_analysis("logit_lens", model="smollm2-135m", data="prompts", store=store,
                         params={"max_texts": 1, "target": " Paris"}).table
    first = paris[(paris["text"] == 0) & (paris["layer"] == paris["layer"].max())]
    golden("logit_lens", "p(' Paris') after 'The capital of France is'", first["p_target"].iloc[-1],
           expected=0.771, atol=0.01)


def test_golden_tuned_lens_below_logit_lens_on_held_out_prompts(store):
    res = run_analysis("tuned_lens", model="smollm2-135m", data="abstracts[380:384]", store=store,
                       params={"max_texts": 4, "max_length": 32})
    t = res.table
    kl = t[t["site"] == "resid_post"].groupby(["lens", "layer"])["kl"].mean().unstack(0)
    below = kl.iloc[:-1]
    golden("tuned_lens", "layers below the last where tuned KL < logit KL (held out)",
           (below["tuned"] < below["logit"]).sum(), expected=len(below))
    golden("tuned_lens", "mean held-out KL ratio tuned / logit", (below["tuned"] / below["logit"]).mean(), high=0.8)


def test_golden_geometry_minilm_layer_3(store):
    res = run_analysis("geometry", model="minilm-l6", data="abstracts", store=store,
                       params={"max_texts": 16, "estimators": "svd,twonn", "n_boot": 0, "n_boot_spectrum": 0,
                               "layers": "3"})
    v = res.table.set_index("estimator")["value"]
    golden("geometry", "SVD anisotropy, minilm-l6 layer 3, 16 abstracts", v["svd"], expected=0.085092, rtol=1e-3)
    golden("geometry", "TwoNN, minilm-l6 layer 3, 16 abstracts", v["twonn"], expected=7.1834, rtol=1e-3)


def test_golden_decoder_lens_last_layer_equals_generate(store):
    res = run_analysis("decoder_lens", model="t5-tasks", data="seq2seq-tasks", store=store,
                       params={"max_examples": 200, "layers": [6]})
    t = res.table
    m = load_model("t5-tasks")
    sources = t["source"].tolist()
    enc = m.tokenizer(sources, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = m.hf_model.generate(**enc, max_new_tokens=32, num_beams=1, do_sample=False)
    plain = [s.strip() for s in m.tokenizer.batch_decode(out, skip_special_tokens=True)]
    same = np.mean([a.strip() == b for a, b in zip(t["output"], plain)])
    golden("decoder_lens", "share of outputs at the last layer equal to generate", same, expected=1.0)
    golden("decoder_lens", "exact match at the last layer (200 examples)", t["exact_match"].mean(), low=0.9)


def test_golden_circuits_auc_on_attn_only_induction():
    res = run_analysis("circuits", model="attn-only-induction",
                       params={"task": "induction", "n_examples": 60, "seeds": 1})
    golden("circuits", "SAE node ROC-AUC vs the ablation circuit (60 + 60 prompts, seed 0)",
           res.summary["vs_ablation"]["node_roc_auc_mean"], low=0.85)


def test_golden_inversion_two_sentences_fluent(store):
    res = run_analysis("inversion", model="minilm-l6", data="sample_data/inversion_general.txt", store=store,
                       params={"max_items": 2, "beam_width": 5, "top_k": 5, "max_steps": 12, "refine_steps": 12})
    t = res.table
    golden("inversion", "mean cosine, 2 sentences, B = K = 5, 12 + 12 steps", t["cosine"].mean(), low=0.55)
    proposer = load_model("smollm2-135m")
    for text in t["reconstruction"]:
        ids = proposer.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():  # a full forward through the bridge: independent of the KV-cache path
            logp = proposer.bridge(ids)[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).mean()
        # fluent text scores about -5 to -6.5 nats a token here; the broken proposer's output scored -8.4
        golden("inversion", f"proposer mean token log-prob of {text[:40]!r}", logp, low=-7.5)
