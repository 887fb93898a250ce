"""attribution back-end on a tiny random Llama: closed forms, TransformerLens-4 references, bad input.

References are written here from ``bridge.run_with_hooks`` / ``bridge.run_with_cache`` directly, so
that the back-end (packed batches, padding, the store, the frozen-norm algebra) is checked against
the plain TransformerLens computation of the same quantity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.analysis import run_analysis
from workbench.errors import WorkbenchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TYPED = dict(task="prompts", clean="the cat sat on the mat", corrupted="the dog sat on the mat", answer="mat",
             wrong="dog")
CSV_ROWS = [("the cat sat on the", "the dog sat on the", "mat", "city"),
            ("a red cat is big and", "a blue dog is big and", "small", "red"),
            ("one two three", "one two four", "four", "five"),
            ("the river in paris is", "the city in france is", "big", "small")]


@pytest.fixture(scope="module")
def model(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with random norm weights (initialised to 1, a norm gain left out would go unseen);
    a folder of its own, so that no other test module shares the changed weights."""
    import shutil

    from safetensors.torch import load_file, save_file

    from workbench.models import load_model

    folder = tmp_path_factory.mktemp("tiny_llama_norms")
    shutil.copytree(tiny_llama_dir, folder, dirs_exist_ok=True)
    weights = load_file(folder / "model.safetensors")
    gen = torch.Generator().manual_seed(1)
    for name, value in weights.items():
        if name.endswith("norm.weight"):
            weights[name] = 0.5 + torch.rand(value.shape, generator=gen)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return load_model(str(folder), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def csv_task(tmp_path_factory):
    import pandas as pd

    path = tmp_path_factory.mktemp("task") / "pairs.csv"
    pd.DataFrame(CSV_ROWS, columns=["positive", "negative", "answer", "wrong"]).to_csv(path, index=False)
    return str(path)


def _run(name, model, store, **params):
    return run_analysis(name, model=model, params=params, store=store)


def _ids(model, text):
    from workbench.tasks import encode

    return torch.tensor([encode(model.tokenizer, text)])


def _ld(logits, a, b):
    return float((logits[0, -1, a] - logits[0, -1, b]).detach())


def _answer_ids(model, answer="mat", wrong="dog"):
    from workbench.tasks import single_token

    return single_token(model.tokenizer, answer), single_token(model.tokenizer, wrong)


# ---- activation patching ------------------------------------------------------------------------
def reference_runs(bridge, clean, corrupted):
    """The clean run (logits and cache) and the corrupted logits, once per prompt pair."""
    clean_logits, cache = bridge.run_with_cache(clean)
    return clean_logits, cache, bridge(corrupted)


def reference_patching(bridge, clean, corrupted, a, b, hook, position=None, head=None, runs=None):
    """The same hook patch written directly with TransformerLens: run_with_cache + run_with_hooks
    (``runs``: :func:`reference_runs` of the pair, computed here when not given)."""
    clean_logits, cache, corrupted_logits = runs or reference_runs(bridge, clean, corrupted)

    def patch(value, hook):
        index = (slice(None), slice(None) if position is None else position) + (() if head is None else (head,))
        value[index] = cache[hook.name][index]
        return value

    patched = bridge.run_with_hooks(corrupted, fwd_hooks=[(hook, patch)])
    lc, lk = _ld(clean_logits, a, b), _ld(corrupted_logits, a, b)
    return (_ld(patched, a, b) - lk) / (lc - lk)


@pytest.mark.parametrize("point,positions", [("resid_pre", "each"), ("attn_out", "each"), ("mlp_out", "all"),
                                             ("z", "all"), ("z", "each")])
def test_patching_equals_transformer_lens(model, store, point, positions):
    result = _run("activation_patching", model, store, patch=point, positions=positions, batch_size=5, **TYPED)
    a, b = _answer_ids(model)
    clean, corrupted = _ids(model, TYPED["clean"]), _ids(model, TYPED["corrupted"])
    hook_of = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
               "z": "attn.hook_z"}
    runs = reference_runs(model.bridge, clean, corrupted)
    for row in result.table.itertuples():
        ref = reference_patching(model.bridge, clean, corrupted, a, b, f"blocks.{row.layer}.{hook_of[point]}",
                                 None if row.position < 0 else row.position, None if row.head < 0 else row.head, runs)
        assert row.effect == pytest.approx(ref, abs=1e-5), row.label


@pytest.mark.parametrize("point,positions,reference", [
    ("resid_pre", "each", "get_act_patch_resid_pre"), ("attn_out", "each", "get_act_patch_attn_out"),
    ("mlp_out", "each", "get_act_patch_mlp_out"), ("z", "all", "get_act_patch_attn_head_out_all_pos"),
    ("z", "each", "get_act_patch_attn_head_out_by_pos")])
def test_patching_equals_transformer_lens_patching_module(model, store, point, positions, reference):
    """TransformerLens 4's own ``transformer_lens.patching`` grids on the bridge, same normalised metric."""
    from transformer_lens import patching

    result = _run("activation_patching", model, store, patch=point, positions=positions, **TYPED)
    a, b = _answer_ids(model)
    clean, corrupted = _ids(model, TYPED["clean"]), _ids(model, TYPED["corrupted"])
    clean_logits, cache, corrupted_logits = reference_runs(model.bridge, clean, corrupted)
    lc, lk = _ld(clean_logits, a, b), _ld(corrupted_logits, a, b)

    def metric(logits):
        return (logits[0, -1, a] - logits[0, -1, b] - lk) / (lc - lk)

    grid = getattr(patching, reference)(model.bridge, corrupted, cache, metric).detach().numpy()
    for row in result.table.itertuples():  # TL grids: [layer, pos], [layer, head] or [layer, pos, head]
        index = (row.layer,) + ((row.position,) if row.position >= 0 else ()) + ((row.head,) if row.head >= 0 else ())
        assert row.effect == pytest.approx(float(grid[index]), abs=1e-5), row.label


def test_closed_forms_whole_residual_gives_one_and_nothing_gives_zero(model, store):
    from analyses.attribution import build_task, logit_diff_metric
    from workbench.hooked import Patch, collect_and_score, patch_sweep

    whole = _run("activation_patching", model, store, patch="resid_pre", positions="all", **TYPED)
    assert np.allclose(whole.table["effect"], 1.0, atol=1e-6)  # the whole clean residual at any block, last included
    per_position = _run("activation_patching", model, store, patch="resid_pre", positions="each", **TYPED)
    bos = per_position.table[per_position.table["position"] == 0]
    assert np.all(bos["effect"] == 0.0)  # clean and corrupted agree at BOS: patching it changes nothing
    task = build_task(model, TYPED, 0, paired=True)
    metric = logit_diff_metric(task)
    hooks = ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"]
    own, corrupted = collect_and_score(model.bridge, task.negative, hooks, metric)
    patched = patch_sweep(model.bridge, task.negative, own, [Patch(hooks[0]), Patch(hooks[1], 3, 2)], metric)
    assert np.allclose(patched, corrupted[None, :], atol=1e-6)  # patching the corrupted run with itself: 0


def test_packed_batches_and_padding_equal_one_prompt_at_a_time(model, store, csv_task):
    params = dict(task="csv", task_file=csv_task, patch="z")
    packed = _run("activation_patching", model, store, batch_size=7, **params)
    single = _run("activation_patching", model, store, batch_size=1, **params)
    assert np.allclose(packed.table["effect"], single.table["effect"], atol=1e-5)
    assert packed.summary["n_prompts"] == len(CSV_ROWS)
    # against TransformerLens prompt by prompt: means of the logit differences before the ratio
    bridge, pairs = model.bridge, [(_ids(model, c), _ids(model, k), *_answer_ids(model, a, w)) for c, k, a, w in CSV_ROWS]
    clean = np.mean([_ld(bridge(c), a, b) for c, _, a, b in pairs])
    corrupted = np.mean([_ld(bridge(k), a, b) for _, k, a, b in pairs])
    for row in packed.table.itertuples():
        hook = f"blocks.{row.layer}.attn.hook_z"
        patched = []
        for c, k, a, b in pairs:
            _, cache = bridge.run_with_cache(c)

            def patch(value, hook, cache=cache, head=row.head):
                value[:, :, head] = cache[hook.name][:, :, head]
                return value

            patched.append(_ld(bridge.run_with_hooks(k, fwd_hooks=[(hook, patch)]), a, b))
        assert row.effect == pytest.approx((np.mean(patched) - corrupted) / (clean - corrupted), abs=1e-5), row.label


# ---- attribution patching -----------------------------------------------------------------------
def reference_gradient(bridge, ids, hook, a, b):
    """d LD / d activation on one prompt, the activation made a leaf (one hook at a time)."""
    store = {}

    def leaf(value, hook):
        store["x"] = value.detach().clone().requires_grad_(True)
        return store["x"]

    with torch.enable_grad():
        logits = bridge.run_with_hooks(ids, fwd_hooks=[(hook, leaf)])
        (grad,) = torch.autograd.grad(logits[0, -1, a] - logits[0, -1, b], [store["x"]])
    return store["x"].detach(), grad


@pytest.mark.parametrize("point,positions", [("resid_pre", "each"), ("z", "all"), ("mlp_out", "all")])
def test_attribution_patching_equals_gradient_reference(model, store, point, positions):
    result = _run("attribution_patching", model, store, patch=point, positions=positions, **TYPED)
    a, b = _answer_ids(model)
    bridge = model.bridge
    clean, corrupted = _ids(model, TYPED["clean"]), _ids(model, TYPED["corrupted"])
    lc, lk = _ld(bridge(clean), a, b), _ld(bridge(corrupted), a, b)
    name = {"resid_pre": "hook_resid_pre", "z": "attn.hook_z", "mlp_out": "hook_mlp_out"}[point]
    for row in result.table.itertuples():
        hook = f"blocks.{row.layer}.{name}"
        _, cache = bridge.run_with_cache(clean)
        x_corr, grad = reference_gradient(bridge, corrupted, hook, a, b)
        delta = (cache[hook] - x_corr) * grad
        part = delta[0] if row.position < 0 else delta[0, row.position][None]
        part = part if row.head < 0 else part[:, row.head]
        assert row.attribution == pytest.approx(float(part.sum()) / (lc - lk), abs=1e-5), row.label
    comp = result.summary["comparison"]
    assert result.table["exact"].notna().all() and comp["pearson"] is not None
    assert result.summary["n_forwards"] == 2 and result.summary["n_backwards"] == 1


def test_activation_gradients_leave_weights_without_grad(model):
    from workbench.hooked import activation_gradients

    bridge = model.bridge
    for p in bridge.parameters():
        p.grad = None
    metric = lambda logits, prompts: logits[:, -1, 5] - logits[:, -1, 6]  # noqa: E731
    acts, grads, values = activation_gradients(bridge, [[2, 5, 6, 7], [2, 8]], ["blocks.0.hook_resid_pre"], metric)
    assert acts["blocks.0.hook_resid_pre"].shape == grads["blocks.0.hook_resid_pre"].shape == (2, 4, 32)
    assert torch.all(grads["blocks.0.hook_resid_pre"][1, 2:] == 0)  # past the short prompt's length
    assert all(p.grad is None for p in bridge.parameters())
    assert values.shape == (2,)


# ---- direct logit attribution -------------------------------------------------------------------
def test_dla_parts_sum_to_the_logit_difference(model, store):
    bridge = model.bridge
    saved = bridge.b_U.clone()
    try:  # an unembedding bias (Llama has none: the bridge's is zero) must be a row of its own
        with torch.no_grad():
            bridge.b_U.add_(torch.randn(saved.shape, generator=torch.Generator().manual_seed(2)))
        result = _run("logit_attribution", model, store, **{k: v for k, v in TYPED.items() if k != "corrupted"})
        a, b = _answer_ids(model)
        logits = bridge(_ids(model, TYPED["clean"]))
        bias = float(bridge.b_U[a] - bridge.b_U[b])
    finally:
        with torch.no_grad():
            bridge.b_U.copy_(saved)
    assert abs(bias) > 0.01
    table = result.table
    parts = table[table["kind"] != "accumulated"]
    assert parts["attribution"].sum() == pytest.approx(_ld(logits, a, b), abs=1e-5)
    assert table[table["kind"] == "unembed_bias"]["attribution"].item() == pytest.approx(bias, abs=1e-6)
    no_bias = parts[~parts["kind"].isin(["norm_bias", "unembed_bias"])]["attribution"].sum()
    assert no_bias == pytest.approx(_ld(logits, a, b) - bias, abs=1e-5)
    final = table[(table["kind"] == "accumulated") & (table["label"] == "final")]["attribution"].item()
    assert final == pytest.approx(no_bias, abs=1e-9)
    assert result.summary["sum_error"] < 1e-6 and abs(table[table["kind"] == "remainder"]["attribution"].item()) < 1e-6
    assert set(table["kind"]) >= {"embed", "head", "attn_bias", "mlp", "remainder", "unembed_bias", "accumulated"}


def test_dla_equals_transformer_lens_cache_accessors(model, store):
    result = _run("logit_attribution", model, store, **{k: v for k, v in TYPED.items() if k != "corrupted"})
    a, b = _answer_ids(model)
    bridge = model.bridge
    _, cache = bridge.run_with_cache(_ids(model, TYPED["clean"]))
    direction = bridge.ln_final.original_component.weight * (bridge.W_U[:, a] - bridge.W_U[:, b])
    heads, labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    ref_heads = (cache.apply_ln_to_stack(heads, layer=-1, pos_slice=-1) * direction).sum(-1)[:, 0]
    parts, part_labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    ref_parts = dict(zip(part_labels, (cache.apply_ln_to_stack(parts, layer=-1, pos_slice=-1) * direction)
                         .sum(-1)[:, 0].tolist()))
    got = result.table.set_index("label")["attribution"]
    for label, value in zip(labels, ref_heads.tolist()):
        assert got[label] == pytest.approx(value, abs=1e-5), label
    assert got["embed"] == pytest.approx(ref_parts["embed"], abs=1e-5)
    for layer in range(model.n_layers):
        assert got[f"L{layer} MLP"] == pytest.approx(ref_parts[f"{layer}_mlp_out"], abs=1e-5)
        attn = sum(got[f"L{layer}H{h}"] for h in range(model.n_heads)) + got[f"L{layer} attn bias"]
        assert attn == pytest.approx(ref_parts[f"{layer}_attn_out"], abs=1e-5)


def test_dla_on_a_task_with_several_prompts(model, store, csv_task):
    result = _run("logit_attribution", model, store, task="csv", task_file=csv_task)
    parts = result.table[result.table["kind"] != "accumulated"]
    sums = parts.groupby("prompt")["attribution"].sum().to_numpy()
    for i, (text, _, answer, wrong) in enumerate(CSV_ROWS):
        a, b = _answer_ids(model, answer, wrong)
        assert sums[i] == pytest.approx(_ld(model.bridge(_ids(model, text)), a, b), abs=1e-5)


# ---- attention patterns -------------------------------------------------------------------------
def test_attention_patterns_rows_sum_to_one_and_scores_closed_form(model, store):
    from analyses.attribution import head_scores

    result = _run("attention_patterns", model, store, prompt="the cat sat on the mat the cat sat", layers="1")
    shown = np.asarray(result.summary["pattern"]["attention"])
    assert shown.shape == (1, 4, 10, 10) and result.summary["layers"] == [1]
    assert np.allclose(shown.sum(-1), 1.0, atol=5e-4) and result.summary["row_sum_max_error"] < 1e-5
    assert np.all(np.triu(shown[0, 0], 1) == 0)  # causal
    assert result.summary["pattern"]["tokens"][0] == "<s>"
    # closed forms on hand-made patterns of the sequence 1 5 6 7 5 6 7 (5, 6, 7 repeat at 4, 5, 6)
    ids = np.array([1, 5, 6, 7, 5, 6, 7])
    prev_head = np.zeros((1, 7, 7))
    prev_head[0, 0, 0] = 1
    prev_head[0, np.arange(1, 7), np.arange(0, 6)] = 1
    assert head_scores(prev_head, ids, None, 1)[0].tolist() == [1.0, 0.0, 0.0, 0.0, pytest.approx(1 / 6)]
    mixed = np.zeros((1, 7, 7))
    mixed[0, :, 0] = 1
    mixed[0, 4] = np.eye(7)[2]  # query 4 (token 5, seen at 1) attends to 2, the token after: induction
    mixed[0, 5] = np.eye(7)[2]  # query 5 (token 6, seen at 2) attends to 2 itself: duplicate-token
    prev, ind, dup, cur, sink = head_scores(mixed, ids, None, 1)[0]
    assert (ind, dup, sink) == (pytest.approx(1 / 3), pytest.approx(1 / 3), pytest.approx(4 / 6))
    # on a repeated sequence (period 3 after a BOS) the spec's forms A[t, t-P+1] and A[t, t-P]
    induction = np.zeros((1, 7, 7))
    induction[0, :4, 0] = 1
    induction[0, [4, 5, 6], [2, 3, 4]] = 1
    assert head_scores(induction, ids, 3, 1)[0, 1:3].tolist() == [1.0, 0.0]
    assert head_scores(induction, ids, None, 1)[0, 1] == pytest.approx(1.0)


def test_attention_patterns_store_only_the_layers_asked(model, store):
    result = _run("attention_patterns", model, store, prompt="the cat sat", layers="0")
    (event,) = result.manifest["cache"]
    entry = store.open(event["key"])
    assert entry.hooks == ["blocks.0.attn.hook_pattern"]
    entry.close()
    assert sorted(result.table["layer"].unique()) == [0]


def test_attention_patterns_of_a_text_dataset_equal_the_bridge_cache(model, store):
    import pandas as pd

    from workbench.data import TextDataset

    texts = ["the cat sat on the mat the cat sat", "a red dog is big", "one two three one two three one"]
    data = TextDataset("attn-texts", texts, pd.DataFrame({"text": texts}), "text")
    result = run_analysis("attention_patterns", model=model, data=data, store=store,
                          params={"source": "dataset", "max_texts": 3, "text": 2, "layers": "0,1"})
    assert result.summary["n_texts"] == 3 and result.summary["pattern"]["tokens"][0] == "<s>"
    _, cache = model.bridge.run_with_cache(_ids(model, texts[2]))
    shown = np.asarray(result.summary["pattern"]["attention"])  # [layers, H, T, T], rounded to 4 decimals
    for k, layer in enumerate((0, 1)):
        assert np.allclose(shown[k], cache[f"blocks.{layer}.attn.hook_pattern"][0].detach().numpy(), atol=1e-4)
    assert result.table["induction_score"].notna().all()  # tokens repeat: scores by token matching


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params,message", [
    ("activation_patching", dict(TYPED, corrupted="the dog sat on the big mat"), "same token length"),
    ("activation_patching", dict(TYPED, answer="Mary"), "not one known token"),
    ("logit_attribution", dict(task="prompts", clean="the cat", answer="cat dog"), "2 token"),
    ("activation_patching", dict(TYPED, layers="5"), "out of range"),
    ("attention_patterns", dict(layers="2"), "out of range"),
    ("attention_patterns", dict(source="dataset"), "needs a dataset"),
    ("attention_patterns", dict(prompt="the cat", text=3), "out of range"),
    ("attention_patterns", dict(head="L9H9"), "not among the heads"),
    ("attention_patterns", dict(source="repeats", max_texts=10, max_pattern_mb=1, period=200), "max_pattern_mb"),
])
def test_bad_input_is_one_clear_line(model, store, name, params, message):
    with pytest.raises(WorkbenchError) as info:
        _run(name, model, store, **params)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_per_position_needs_prompts_of_one_length_and_hooks_must_exist(model, store, csv_task):
    from workbench.hooked import Patch, activation_gradients, patch_sweep

    with pytest.raises(WorkbenchError, match="positions=all"):
        _run("activation_patching", model, store, task="csv", task_file=csv_task, patch="resid_pre")
    metric = lambda logits, prompts: logits[:, -1, 0]  # noqa: E731
    with pytest.raises(WorkbenchError, match="no hook blocks.9.hook_resid_pre"):
        patch_sweep(model.bridge, [[2, 5]], {}, [Patch("blocks.9.hook_resid_pre")], metric)
    with pytest.raises(WorkbenchError, match="no hook"):
        activation_gradients(model.bridge, [[2, 5]], ["blocks.0.hook_nothing"], metric)


def test_cli_reproduces_and_figures_render(model, store):
    from workbench.analysis import get_analysis

    for name, params in [("attention_patterns", {}), ("logit_attribution", {"task": "prompts", "clean": "the cat sat",
                                                                            "answer": "on", "wrong": None}),
                         ("attribution_patching", dict(TYPED, patch="attn_out"))]:
        result = _run(name, model, store, **params)
        spec = get_analysis(name)
        for fig in [result.figure()] + [f(result) for f in spec.figures.values()]:
            assert fig.data, name
        assert result.manifest["cli"].startswith(f"workbench run {name} --model ")
