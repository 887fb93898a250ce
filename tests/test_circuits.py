"""Unit tests of the circuits back-end: SAE, scoring, tasks, head outputs from the store, ablation.

The SAE and the node/edge scores are checked against transcriptions of the official code
(charlieoneill11/sae-circuits @10fd2e7: src/sae.py, src/train.py, src/node.py, src/edge.py,
src/common_utils.py); head outputs read from the store against the closed form
sum_h z_h W_O^h + b_O = attn_out (and, in test_circuits_induction.py, against a direct hooked forward).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from analyses.circuits.sae import CircuitSAE, sae_loss, train_sae, train_sae_autograd
from analyses.circuits.scoring import (agreement, circuit_scores, edge_node_scores, node_scores, seed_stability,
                                       softmax, top_k, unique_cooccurrences, unique_positive_codes)
from workbench.errors import WorkbenchError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------
# reference transcription of the official SAE (src/sae.py + src/train.py)
# ------------------------------------------------------------------------------------------------
class _RefUnitNormLinear(torch.nn.Module):
    def __init__(self, in_f, out_f, bias=True):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(out_f, in_f))
        self.bias = torch.nn.Parameter(torch.empty(out_f)) if bias else None
        self.weight.register_hook(self._hook)

    def _hook(self, grad):
        dot = torch.einsum("oi,oi->o", grad, self.weight)
        normed = self.weight / torch.norm(self.weight, dim=-1, keepdim=True)
        return grad - torch.einsum("o,oi->oi", dot, normed)

    def forward(self, x):
        with torch.no_grad():
            torch.nn.functional.normalize(self.weight, dim=-1, out=self.weight)
        return torch.nn.functional.linear(x, self.weight, self.bias)


class _RefSAE(torch.nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.tied_bias = torch.nn.Parameter(torch.zeros(d))
        self.enc = _RefUnitNormLinear(d, f)
        self.dec = _RefUnitNormLinear(f, d, bias=False)

    def forward(self, x):
        learned = torch.relu(self.enc(x - self.tied_bias))
        return learned, self.dec(learned) + self.tied_bias


def _ref_loss(decoded, learned, x, lam):
    recon = torch.nn.functional.mse_loss(decoded, x)
    flat = learned.reshape(-1, learned.shape[-1])  # einops "b s n -> (b s) n"
    return recon + lam * torch.mean(torch.norm(flat, p=1, dim=1))


def test_sae_matches_official_training():
    torch.manual_seed(0)
    x = torch.randn(10, 6, 16)
    ours = CircuitSAE(16, 12, generator=torch.Generator().manual_seed(1))
    ref = _RefSAE(16, 12)
    with torch.no_grad():
        ref.enc.weight.copy_(ours.W_e); ref.enc.bias.copy_(ours.b_e)
        ref.dec.weight.copy_(ours.W_d); ref.tied_bias.copy_(ours.b_d)
    opt_o = torch.optim.Adam(ours.parameters(), lr=1e-2)
    opt_r = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for _ in range(40):
        for model, opt, loss_fn in ((ours, opt_o, None), (ref, opt_r, _ref_loss)):
            opt.zero_grad()
            f, xh = model(x)
            loss = sae_loss(f, xh, x, 0.05) if loss_fn is None else loss_fn(xh, f, x, 0.05)
            loss.backward()
            opt.step()
    f_o, xh_o = ours(x)
    f_r, xh_r = ref(x)
    assert torch.allclose(f_o, f_r, atol=1e-5)
    assert torch.allclose(xh_o, xh_r, atol=1e-5)
    assert torch.equal(ours.codes(x), f_r.argmax(-1))


def test_sae_init_and_constraints():
    sae = CircuitSAE(32, 200, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sae.W_e.norm(dim=-1), torch.ones(200), atol=1e-5)  # per feature
    assert torch.allclose(sae.W_d.norm(dim=-1), torch.ones(32), atol=1e-5)  # per output dim (quirk)
    assert torch.equal(sae.b_d, torch.zeros(32))
    assert sae.b_e.abs().max() <= 1 / math.sqrt(32)
    x = torch.randn(4, 3, 32)
    f, xh = sae(x)
    loss = sae_loss(f, xh, x, 0.02)
    loss.backward()
    # the hook leaves only the gradient component orthogonal to each row
    assert (sae.W_e.grad * sae.W_e).sum(-1).abs().max() < 1e-5
    assert (sae.W_d.grad * sae.W_d).sum(-1).abs().max() < 1e-5
    manual = ((xh - x) ** 2).mean() + 0.02 * f.abs().sum(-1).mean()
    assert torch.allclose(loss, manual)


def test_train_sae_seeded_and_reduces_loss():
    x = torch.randn(10, 4, 8, generator=torch.Generator().manual_seed(3))
    a, loss_a = train_sae(x, n_features=20, n_epochs=60, seed=5)
    b, loss_b = train_sae(x, n_features=20, n_epochs=60, seed=5)
    assert loss_a == loss_b and torch.equal(a.codes(x), b.codes(x))
    sae0 = CircuitSAE(8, 20, generator=torch.Generator().manual_seed(5))
    f, xh = sae0(x)
    assert loss_a < float(sae_loss(f, xh, x, 0.02).detach())


def test_hand_written_gradients_match_autograd():
    x = torch.randn(10, 5, 12, generator=torch.Generator().manual_seed(4))
    a, loss_a = train_sae(x, n_features=30, lam=0.05, n_epochs=80, seed=2)
    b, loss_b = train_sae_autograd(x, n_features=30, lam=0.05, n_epochs=80, seed=2)
    for name in ("W_e", "b_e", "W_d", "b_d"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-4)
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    assert torch.equal(a.codes(x), b.codes(x))


def test_codes_all_zero_row_is_code_zero():
    sae = CircuitSAE(4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_e.fill_(-100.0)  # every feature dead
    assert sae.codes(torch.randn(3, 4)).tolist() == [0, 0, 0]


# ------------------------------------------------------------------------------------------------
# node / edge scores vs the official loops
# ------------------------------------------------------------------------------------------------
def test_node_scores_closed_form():
    codes = np.array([[1, 5], [2, 5], [3, 5],    # positives
                      [1, 5], [4, 6], [4, 7]])   # negatives
    pos = np.array([1, 1, 1, 0, 0, 0], bool)
    up, un = unique_positive_codes(codes, pos)
    assert up.tolist() == [2, 0]  # head 0: {1,2,3} - {1,4}; head 1: {5} - {5,6,7}
    assert un.tolist() == [1, 2]
    score, raw = node_scores(codes, pos)
    assert raw.tolist() == [2, 0]
    np.testing.assert_allclose(score, np.exp([2, 0]) / np.exp([2, 0]).sum())


def _official_cooccurrence(codes, n_feat):
    n_heads = codes.shape[1]
    half = codes.shape[0] // 2

    def build(idx):
        m = np.zeros((n_heads, n_heads, n_feat, n_feat))
        for e in range(idx.shape[0]):
            for h1 in range(n_heads):
                for h2 in range(n_heads):
                    if h1 != h2:
                        m[h1, h2, idx[e, h1], idx[e, h2]] += 1
        return m

    p, n = build(codes[:half]), build(codes[half:])
    out = np.zeros((n_heads, n_heads))
    for h1 in range(n_heads):
        for h2 in range(n_heads):
            if h1 != h2:
                out[h1, h2] = np.sum((p[h1, h2] > 0) & ~(n[h1, h2] > 0))
    return out


def _official_edge_pred(counts, n_layers, n_heads_per_layer, k):
    order = np.argsort(counts.flatten())[::-1]
    idx = np.unravel_index(order, counts.shape)
    comps = []
    for h1, h2 in zip(idx[0], idx[1]):
        comps.append(divmod(int(h1), n_heads_per_layer))
        comps.append(divmod(int(h2), n_heads_per_layer))
    y = np.zeros((n_layers, n_heads_per_layer))
    for l, h in comps[:k]:
        y[l, h] += 1
    y = y.flatten()
    return np.exp(y) / np.sum(np.exp(y), axis=0)


def test_edge_scores_match_official():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 7, size=(16, 6))
    pos = np.r_[np.ones(8, bool), np.zeros(8, bool)]
    ours = unique_cooccurrences(codes, pos, 7)
    ref = _official_cooccurrence(codes, 7)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(edge_node_scores(ours, 3), _official_edge_pred(ref, 2, 3, 3 ** 2 // 2))


def test_circuit_scores_against_hand_values():
    y_true = np.array([1, 1, 0, 0, 0, 0], bool)
    y_score = np.array([0.9, 0.4, 0.5, 0.1, 0.2, 0.3])
    s = circuit_scores(y_true, y_score)
    assert s["roc_auc"] == pytest.approx(7 / 8)  # positive 0.9 beats all 4, 0.4 beats 3 of 4
    # paper "F1" = best harmonic mean of TPR and TNR: threshold 0.4 -> TPR 1, TNR 3/4 -> 6/7
    assert s["tpr_tnr_hmean"] == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == 1.0
    assert s["precision_at_k"] == 0.5
    assert circuit_scores(np.zeros(4, bool), np.arange(4.0))["roc_auc"] is None


def test_agreement_and_seed_stability_against_hand_values():
    scores = np.array([0.5, 0.4, 0.3, 0.3, 0.1, 0.0])
    reference = np.array([1.0, -1.0, 3.0, 2.0, 0.0, 0.5])
    # ties go to the lower index, as DataFrame.nlargest(keep="first")
    assert top_k(scores, 3).tolist() == [0, 1, 2]
    assert pd.Series(scores).nlargest(3).index.tolist() == [0, 1, 2]
    a = agreement(scores, reference, k=3)
    assert a["top_k_shared"] == 2 and a["k"] == 3  # {0, 1, 2} & {2, 3, 0}
    # Spearman with average ranks for the tie: ranks (6, 5, 3.5, 3.5, 2, 1) vs (4, 1, 6, 5, 2, 3)
    ra, rb = np.array([6, 5, 3.5, 3.5, 2, 1]), np.array([4, 1, 6, 5, 2, 3.0])
    expected = np.corrcoef(ra, rb)[0, 1]
    assert a["spearman"] == pytest.approx(expected)
    assert agreement(np.ones(6), reference)["spearman"] is None  # constant scores: no correlation
    assert seed_stability(scores[None]) is None  # one seed: nothing to compare
    per_seed = np.stack([scores, scores, reference])
    st = seed_stability(per_seed, k=3)
    # pairs (0,1): 3 shared, rho 1; (0,2) and (1,2): 2 shared, rho = expected
    assert st["n_pairs"] == 3 and st["top_k_shared_min"] == 2
    assert st["top_k_shared_mean"] == pytest.approx(7 / 3)
    assert st["spearman_mean"] == pytest.approx((1 + 2 * expected) / 3)


def test_softmax_is_shift_invariant():
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(softmax(x), softmax(x + 100))
    assert softmax(x).sum() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# tasks
# ------------------------------------------------------------------------------------------------
def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1, "<pad>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<bos>", pad_token="<pad>")


IOI_WORDS = ["Then", ",", "and", "went", "to", "the", ".", "gave", "a", "store", "ring", "John", "Mary", "Tom",
             "Sarah", "James", "had", "lot", "of", "fun", "at", "drink"]


def test_ioi_task_structure():
    from analyses.circuits.tasks import make_ioi

    tok = _word_tokenizer(IOI_WORDS)
    task = make_ioi(tok, 12, seed=0)
    assert len(task.positive) == len(task.negative) == 12 and task.paired_same_length
    names = {tok.convert_tokens_to_ids(n) for n in ["John", "Mary", "Sarah", "James"]}
    for p, n, tgt, text in zip(task.positive, task.negative, task.targets, task.texts_positive):
        assert p[0] == tok.bos_token_id
        (pos_idx, correct, wrong), = tgt
        assert pos_idx == len(p) - 1
        io, s = correct[0], wrong[0]
        assert io in names and s in names and io != s
        assert p.count(s) == 2 and p.count(io) == 1  # S repeated, IO once
        neg_names = [t for t in n if t in names]
        assert len(neg_names) == len(set(neg_names)) == 3  # three distinct names, none repeated
    assert task.metric == "logit_diff"


def test_greater_than_needs_two_digit_tokens():
    from analyses.circuits.tasks import make_greater_than

    with pytest.raises(WorkbenchError, match="two-digit"):
        make_greater_than(_word_tokenizer(IOI_WORDS), 4)


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_greater_than_digit_level_on_tokenizers_that_split_numbers(name):
    from analyses.circuits.tasks import make_greater_than
    from workbench.models.loading import load_tokenizer

    tok = load_tokenizer(name)
    task = make_greater_than(tok, 30, seed=1)
    digit = {tok.convert_tokens_to_ids(str(d)): d for d in range(10)}
    assert task.paired_same_length and task.metric == "prob_diff" and "digit-level" in task.notes[0]
    for text, ids, ((position, correct, wrong),) in zip(task.texts_positive, task.positive, task.targets):
        tens = int(text.split("from the year ")[1][2])  # the start year's YY tens digit
        assert position == len(ids) - 1 and 1 <= tens <= 8
        assert sorted(digit[c] for c in correct) == list(range(tens + 1, 10))
        assert sorted(digit[w] for w in wrong) == list(range(tens))
    # the YY values run in turn from 10, as the paper's generator balances them
    assert [t.split("from the year ")[1][2:4] for t in task.texts_positive[:3]] == ["10", "11", "12"]


def test_induction_task_structure():
    from analyses.circuits.tasks import make_induction

    tok = _word_tokenizer([f"w{i}" for i in range(40)])
    task = make_induction(tok, 5, period=7, seed=1)
    for p, n, tgt in zip(task.positive, task.negative, task.targets):
        assert len(p) == len(n) == 15 and p[0] == n[0] == tok.bos_token_id
        assert p[1:8] == p[8:15] and n[1:8] == p[1:8]
        assert [t[0] for t in tgt] == list(range(8, 14))
        assert all(c == [p[t + 1]] and w == [] for t, c, w in tgt)
        assert all(x not in tok.all_special_ids for x in p[1:])


def test_csv_task(tmp_path):
    from analyses.circuits.tasks import load_csv_task

    tok = _word_tokenizer(IOI_WORDS)
    path = tmp_path / "t.csv"
    path.write_text("positive,negative,answer,wrong\n"
                    "Then John and Mary went to the store . John gave a ring to,Then Tom and Sarah went to "
                    "the store . James gave a ring to, Mary, John\n"
                    "Then Mary and John went to the store . Mary gave a ring to,Then Tom and Sarah went to "
                    "the store . James gave a ring to, John, Mary\n")
    task = load_csv_task(path, tok)
    assert len(task.positive) == 2 and task.metric == "logit_diff"
    assert task.targets[0][0][1] == [tok.convert_tokens_to_ids("Mary")]
    from workbench.paths import SAMPLE_DATA

    example = load_csv_task(SAMPLE_DATA / "circuits" / "example_task_capitals.csv", tok)
    assert len(example.positive) == 12 and example.metric == "logit_diff"
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,answer\nx,y\nz,w\n")
    with pytest.raises(WorkbenchError, match="positive, negative, answer"):
        load_csv_task(bad, tok)


# ------------------------------------------------------------------------------------------------
# head outputs from the store, ablation, find_circuit on a tiny random Llama (attention-only:
# intermediate_size 0), loaded as every model is (workbench.models.load_model)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.models import load_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=43, hidden_size=32, intermediate_size=0, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=1, pad_token_id=2)
    folder = tmp_path_factory.mktemp("tiny")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LlamaForCausalLM(cfg).save_pretrained(folder)
        _word_tokenizer([f"w{i}" for i in range(40)]).save_pretrained(folder)
        return load_model(str(folder), device="cpu", dtype="float32")


def test_head_outputs_sum_to_attention_output(tiny_model, store):
    from analyses.circuits.heads import read_head_outputs, store_reader
    from analyses.circuits.tasks import Task

    seqs = [[1, 5, 6, 7, 8], [1, 9, 10], [1, 11, 12, 13]]
    task, read = Task("t", seqs, [], [[] for _ in seqs], "logprob"), store_reader(tiny_model, store)
    X, hit = read_head_outputs(tiny_model, task, read, position="mean", batch_size=2)
    assert X.shape == (3, 8, 32) and not hit
    final, hit = read_head_outputs(tiny_model, task, read, position="final", batch_size=2)
    assert hit  # the same prompts and hooks: the same store entry
    for i, s in enumerate(seqs):
        _, cache = tiny_model.bridge.run_with_cache(torch.tensor([s]))
        for l in range(2):
            attn_out = cache[f"blocks.{l}.hook_attn_out"][0]  # [T, d] = sum_h z_h W_O^h + b_O
            b_o = 0.0  # Llama's o_proj has no bias (the bridge exposes no b_O)
            torch.testing.assert_close(X[i, 4 * l:4 * l + 4].sum(0) + b_o, attn_out.mean(0), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(final[i, 4 * l:4 * l + 4].sum(0) + b_o, attn_out[-1], atol=1e-5, rtol=1e-4)


def test_model_is_attention_only(tiny_model):
    _, cache = tiny_model.bridge.run_with_cache(torch.tensor([[1, 5, 6, 7]]))
    assert cache["blocks.0.hook_mlp_out"].abs().max() == 0


def test_ablation_zero_when_nothing_changes(tiny_model):
    from analyses.circuits.ablation import ablation_effects
    from analyses.circuits.tasks import Task

    tiny_bridge = tiny_model.bridge
    p = [[1, 5, 6, 7, 5, 6], [1, 9, 10, 11, 9, 10]]
    targets = [[(len(s) - 1, [s[2]], [s[3]])] for s in p]
    # patching from identical prompts changes nothing
    res = ablation_effects(tiny_bridge, Task("t", p, [list(s) for s in p], targets, "logit_diff"), mode="patch")
    np.testing.assert_allclose(res.effect, 0.0, atol=1e-5)
    # mean ablation over one prompt replaces z by itself
    one = Task("t", p[:1], p[:1], targets[:1], "logit_diff")
    np.testing.assert_allclose(ablation_effects(tiny_bridge, one, mode="mean").effect, 0.0, atol=1e-5)
    # on two different prompts some head matters
    two = ablation_effects(tiny_bridge, Task("t", p, p[::-1], targets, "logit_diff"), mode="mean")
    assert np.abs(two.effect).max() > 1e-4 and two.n_forwards == 8 + 3


def test_task_metric_closed_forms():
    from analyses.circuits.ablation import task_metric
    from analyses.circuits.tasks import Task

    logits = [torch.tensor([[1.0, 3.0, 0.0, 2.0]])]
    tgt = [[(0, [1], [3, 0])]]
    assert task_metric(Task("t", [[0]], [[0]], tgt, "logit_diff"), logits)[0] == pytest.approx(3 - 1.5)
    p = torch.softmax(logits[0][0].double(), 0)
    assert task_metric(Task("t", [[0]], [[0]], tgt, "prob_diff"), logits)[0] == pytest.approx(float(p[1] - p[3] - p[0]))
    assert task_metric(Task("t", [[0]], [[0]], tgt, "logprob"), logits)[0] == \
        pytest.approx(float(torch.log_softmax(logits[0][0].double(), 0)[1]))


def test_find_circuit_parameter_errors(tiny_model):
    from analyses.circuits import find_circuit

    with pytest.raises(WorkbenchError, match="no parameter"):
        find_circuit(tiny_model, task="induction", bogus=1)
    with pytest.raises(WorkbenchError, match="parameter task must be one of"):
        find_circuit(tiny_model, task="nope", n_examples=6)
    with pytest.raises(WorkbenchError, match="position"):
        find_circuit(tiny_model, task="induction", position="first")


def test_find_circuit_runs_on_tiny_model(tiny_model, store):
    from analyses.circuits import find_circuit

    params = dict(task="induction", n_examples=6, period=5, seeds=2, n_epochs=20, n_features=16)
    table, summary = find_circuit(tiny_model, store=store, **params)
    assert len(table) == 8 and {"sae_score", "sae_score_sd", "ablation_effect", "in_ablation_circuit",
                                "prev_token_score", "induction_score", "edge_score"} <= set(table.columns)
    np.testing.assert_allclose(table["sae_score"].sum(), 1.0)  # mean of softmaxes
    assert summary["ground_truth"] is None and summary["seeds"] == [0, 1]
    assert summary["runtimes_s"]["ablation"] > 0
    # agreement with the baseline for the mean score and each seed, and seed-to-seed stability
    assert len(summary["spearman_sae_vs_ablation_per_seed"]) == 2
    assert len(summary["top10_shared_sae_vs_ablation_per_seed"]) == 2
    assert 0 <= summary["top10_shared_sae_vs_ablation"] <= 8
    assert summary["seed_stability"]["n_pairs"] == 1
    from analyses.circuits import agreement_sentence

    line = agreement_sentence(summary)  # the Circuits page's caption
    assert f"{summary['top10_shared_sae_vs_ablation']}/10 heads shared" in line
    assert "(least " in line and "1 pair)" in line
    # clean activations come from the store: a second run reads them back (both reads hits), same table
    again, summary2 = find_circuit(tiny_model, store=store, **params)
    hits = [(s["runtimes_s"]["sae_extraction_cache_hit"], s["runtimes_s"]["attention_scores_cache_hit"])
            for s in (summary, summary2)]
    assert hits == [(False, False), (True, True)]
    pd.testing.assert_frame_equal(table, again)


def test_paper_size_table_renders_each_run_and_its_verdict():
    from analyses.circuits.results_tables import finds_circuit, render_paper_size
    from workbench.results import Result

    def run(model, mode, auc, sd):
        summary = {"task_description": "IOI: logit(IO) - logit(S).", "task_notes": ["names are single tokens"],
                   "n_positive": 100, "seeds": [0, 1, 2, 3, 4], "model_shape": {"n_layers": 30, "n_heads": 9, "d_model": 576},
                   "ablation": {"mode": mode, "clean_metric": 4.1, "negative_metric": 2.0, "circuit_threshold": 0.02,
                                "n_examples": 100},
                   "vs_ablation": {"n_reference_heads": 40, "node_roc_auc_mean": auc, "node_roc_auc_sd": sd},
                   "spearman_sae_vs_ablation": 0.1, "spearman_sae_vs_ablation_per_seed": [0.05, 0.1, 0.2],
                   "top10_shared_sae_vs_ablation": 2, "top10_shared_sae_vs_ablation_per_seed": [1, 2, 3],
                   "seed_stability": {"top_k_shared_mean": 2.5, "top_k_shared_min": 1, "spearman_mean": 0.7}}
        return Result("circuits", None, {}, summary, {"model": {"name": model}})

    text = render_paper_size({"a": run("smollm2-135m", "mean", 0.55, 0.02), "b": run("gemma3-270m", "patch", 0.8, 0.05)})
    lines = [l for l in text.splitlines() if l.startswith("| `")]
    assert len(lines) == 2 and "mean ablation" in lines[0] and "activation patching" in lines[1]
    assert lines[0].rstrip(" |").endswith("no: poor") and lines[1].rstrip(" |").endswith("yes: excellent")
    assert "100 prompts a side, 5 SAE seeds" in text and "Names are single tokens." in text
    assert finds_circuit({"node_roc_auc_mean": 0.72}) == "partly: acceptable"
    assert finds_circuit({"node_roc_auc_mean": 0.9}) == "yes: outstanding"
    assert finds_circuit({"node_roc_auc_mean": 0.6999}) == "no: poor"
    assert finds_circuit({"node_roc_auc_mean": None}) == "n/a"


def test_figure_names_the_baseline_that_made_the_effects():
    """The middle heatmap holds mean-ablation effects or patching effects; its title says which."""
    from analyses.circuits import figure
    from workbench.results import Result

    table = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "sae_score": [0.1, 0.9, 0.2, 0.4],
                          "ablation_effect": [0.0, 0.5, 0.1, 0.3], "in_ablation_circuit": [False, True, False, True]})
    titles = {}
    for mode in ("mean", "patch"):
        fig = figure(Result("circuits", table, {}, {"task": "ioi", "ablation": {"mode": mode}}))
        titles[mode] = [a.text for a in fig.layout.annotations]
    assert "ablation effect (metric drop)" in titles["mean"] and "patching effect (metric drop)" in titles["patch"]
    assert not any("ablation effect" in t for t in titles["patch"])
    assert any("activation-patching circuit" in t for t in titles["patch"])
