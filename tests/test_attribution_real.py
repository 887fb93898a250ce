"""attribution back-end on the real built-ins: smollm2-135m and gemma3-270m against TransformerLens-4
references written here, attribution patching against exact patching on smollm2-135m, and the trained
attn-only-induction model's induction heads. The full 270-head comparison runs with
``WORKBENCH_SLOW_TESTS=1``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from test_attribution import _answer_ids, _ids, _ld, reference_gradient, reference_patching, reference_runs
from workbench.analysis import run_analysis

pytestmark = pytest.mark.slow

IOI = dict(task="prompts", clean="When John and Mary went to the shops, John gave the bag to",
           corrupted="When John and Mary went to the shops, Mary gave the bag to", answer=" Mary", wrong=" John")


@pytest.fixture(scope="module")
def smollm2():
    from workbench.models import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.mark.parametrize("point,positions,layers", [("resid_pre", "each", "17,29"), ("z", "all", "9,29")])
def test_smollm2_patching_equals_transformer_lens(smollm2, store, point, positions, layers):
    result = run_analysis("activation_patching", model=smollm2, store=store,
                          params=dict(IOI, patch=point, positions=positions, layers=layers))
    a, b = _answer_ids(smollm2, " Mary", " John")
    clean, corrupted = _ids(smollm2, IOI["clean"]), _ids(smollm2, IOI["corrupted"])
    hook = {"resid_pre": "hook_resid_pre", "z": "attn.hook_z"}[point]
    runs = reference_runs(smollm2.bridge, clean, corrupted)
    for row in result.table.itertuples():
        ref = reference_patching(smollm2.bridge, clean, corrupted, a, b, f"blocks.{row.layer}.{hook}",
                                 None if row.position < 0 else row.position, None if row.head < 0 else row.head, runs)
        assert row.effect == pytest.approx(ref, abs=1e-5), row.label


def test_smollm2_whole_clean_residual_at_the_last_block_gives_one(smollm2, store):
    result = run_analysis("activation_patching", model=smollm2, store=store,
                          params=dict(IOI, patch="resid_pre", positions="all", layers="0,-1"))
    assert np.allclose(result.table["effect"], 1.0, atol=1e-5) and result.table["layer"].tolist() == [0, 29]


def test_smollm2_attribution_patching_equals_gradient_reference(smollm2, store):
    result = run_analysis("attribution_patching", model=smollm2, store=store,
                          params=dict(IOI, patch="z", layers="29", compare_exact=False))
    a, b = _answer_ids(smollm2, " Mary", " John")
    bridge = smollm2.bridge
    clean, corrupted = _ids(smollm2, IOI["clean"]), _ids(smollm2, IOI["corrupted"])
    lc, lk = _ld(bridge(clean), a, b), _ld(bridge(corrupted), a, b)
    _, cache = bridge.run_with_cache(clean)
    x_corr, grad = reference_gradient(bridge, corrupted, "blocks.29.attn.hook_z", a, b)
    per_head = ((cache["blocks.29.attn.hook_z"] - x_corr) * grad)[0].sum((0, 2)) / (lc - lk)
    assert np.allclose(result.table["attribution"], per_head.numpy(), atol=1e-5)


def test_smollm2_dla_is_complete_and_equals_transformer_lens(smollm2, store):
    params = {k: v for k, v in IOI.items() if k != "corrupted"}
    result = run_analysis("logit_attribution", model=smollm2, store=store, params=params)
    a, b = _answer_ids(smollm2, " Mary", " John")
    bridge = smollm2.bridge
    logits, cache = bridge.run_with_cache(_ids(smollm2, IOI["clean"]))
    table = result.table
    parts = table[table["kind"] != "accumulated"]
    assert parts["attribution"].sum() == pytest.approx(_ld(logits, a, b), abs=1e-4)
    direction = bridge.ln_final.original_component.weight * (bridge.W_U[:, a] - bridge.W_U[:, b])
    heads, labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    ref = (cache.apply_ln_to_stack(heads, layer=-1, pos_slice=-1) * direction).sum(-1)[:, 0]
    got = table.set_index("label")["attribution"].reindex(labels).to_numpy()
    assert np.allclose(got, ref.detach().double().numpy(), atol=1e-5)
    assert result.summary["remainder_max_abs"] < 1e-3 and result.summary["sum_error"] < 1e-4


def test_attn_only_induction_heads_stand_out(store):
    result = run_analysis("attention_patterns", model="attn-only-induction", store=store,
                          params={"source": "repeats", "max_texts": 16, "period": 20})
    top3 = result.table.nlargest(3, "induction_score")["label"].tolist()
    assert len(result.table) == 32 and set(top3) == {"L1H2", "L1H4", "L1H5"}
    assert result.summary["row_sum_max_error"] < 1e-5
    assert result.summary["head"] in top3 and result.summary["pattern"]["tokens"][0] == "<bos>"
    assert result.table.nlargest(3, "induction_score")["induction_score"].min() > 0.5


def test_smollm2_attribution_patching_tracks_exact_patching(smollm2, store):
    """First-order estimate against exact patching on the IOI pair, head z of the layers that carry it."""
    result = run_analysis("attribution_patching", model=smollm2, store=store,
                          params=dict(IOI, patch="z", layers="17,20,23,29"))
    comp = result.summary["comparison"]
    assert comp["pearson"] > 0.8 and comp["spearman"] > 0.6, comp
    assert result.table.nlargest(1, "exact")["label"].item() == result.table.nlargest(1, "attribution")["label"].item()


@pytest.mark.skipif(os.environ.get("WORKBENCH_SLOW_TESTS") != "1",
                    reason="270-head exact patching (272 forwards); set WORKBENCH_SLOW_TESTS=1")
def test_smollm2_attribution_patching_on_all_270_heads(smollm2, store):
    result = run_analysis("attribution_patching", model=smollm2, store=store, params=dict(IOI, patch="z"))
    comp = result.summary["comparison"]
    assert result.summary["n_cells"] == 270
    assert comp["pearson"] > 0.8 and comp["spearman"] > 0.8, comp  # measured 0.89 and 0.97
    assert len(set(result.summary["top_cells"][:5]) & set(result.summary["top_cells_exact"][:5])) >= 3


# ---- gemma3-270m: a norm after attention (ln1_post), grouped-query attention, a 1 + w norm gain -------
@pytest.fixture(scope="module")
def gemma3():
    from workbench.models import load_model

    return load_model("gemma3-270m", device="cpu", dtype="float32")


def test_gemma3_dla_heads_go_through_the_frozen_post_attention_norm(gemma3, store):
    params = {k: v for k, v in IOI.items() if k != "corrupted"}
    result = run_analysis("logit_attribution", model=gemma3, store=store, params=params)
    bridge, table = gemma3.bridge, result.table
    a, b = _answer_ids(gemma3, " Mary", " John")
    logits, cache = bridge.run_with_cache(_ids(gemma3, IOI["clean"]))
    parts = table[table["kind"] != "accumulated"]
    assert parts["attribution"].sum() == pytest.approx(_ld(logits, a, b), abs=1e-4)
    assert result.summary["remainder_max_abs"] < 1e-4
    # Gemma's heads are normalised (ln1_post) before they join the residual: with that norm's scale
    # frozen too, the heads sum to each layer's attention output and no "attn bias" is left
    assert table[table["kind"] == "attn_bias"]["attribution"].abs().max() < 1e-4

    def rms_scale(x):
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + bridge.cfg.eps)

    x = cache[f"blocks.{gemma3.n_layers - 1}.hook_resid_post"][0, -1]
    final_gain = bridge.ln_final(x[None, None])[0, 0] / (x * rms_scale(x))
    direction = rms_scale(x) * final_gain * (bridge.W_U[:, a] - bridge.W_U[:, b])
    got = table[table["kind"] == "head"].set_index("label")["attribution"]
    for layer in (0, 5, gemma3.n_layers - 1):
        raw = cache[f"blocks.{layer}.ln1_post.hook_in"][0, -1]  # the attention output before its norm
        post_gain = cache[f"blocks.{layer}.hook_attn_out"][0, -1] / (raw * rms_scale(raw))
        heads = torch.einsum("he,hed->hd", cache[f"blocks.{layer}.attn.hook_z"][0, -1], bridge.W_O[layer])
        ref = (rms_scale(raw) * post_gain * heads * direction).sum(-1)
        assert np.allclose(got[[f"L{layer}H{h}" for h in range(gemma3.n_heads)]], ref.detach().numpy(), atol=1e-5)


def test_gemma3_patching_equals_transformer_lens(gemma3, store):
    result = run_analysis("activation_patching", model=gemma3, store=store,
                          params=dict(IOI, patch="z", positions="all", layers="6,17"))
    a, b = _answer_ids(gemma3, " Mary", " John")
    clean, corrupted = _ids(gemma3, IOI["clean"]), _ids(gemma3, IOI["corrupted"])
    runs = reference_runs(gemma3.bridge, clean, corrupted)
    assert len(result.table) == 2 * gemma3.n_heads  # query heads (4), though keys and values have one
    for row in result.table.itertuples():
        ref = reference_patching(gemma3.bridge, clean, corrupted, a, b, f"blocks.{row.layer}.attn.hook_z",
                                 None, row.head, runs)
        assert row.effect == pytest.approx(ref, abs=1e-5), row.label
