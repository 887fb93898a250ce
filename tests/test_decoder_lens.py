"""DecoderLens (analyses/decoder_lens): last layer == plain generate, final-norm switch, logprob."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analyses.decoder_lens import decoder_lens, encoder_final_norm, summarize
from workbench.errors import WorkbenchError

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "sample_data" / "models" / "t5-tasks"
EVAL_SET = ROOT / "sample_data" / "seq2seq_tasks.jsonl"
GEN = {"max_new_tokens": 6, "do_sample": False, "num_beams": 1}


def _train_module():
    spec = importlib.util.spec_from_file_location("train_seq2seq", ROOT / "scripts" / "train_seq2seq.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


T = _train_module()


@pytest.fixture(scope="module")
def tok():
    return T.build_tokenizer()


@pytest.fixture(scope="module")
def data():
    import random

    rng = random.Random(7)
    rows = [T.make_example(t, rng) for t in T.TASKS for _ in range(2)]
    return [s for s, _ in rows], [r for _, r in rows], [t for t in T.TASKS for _ in range(2)]


def _t5(tok, seed=0, randomize_norm=True):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=2,
        num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    m = T5ForConditionalGeneration(cfg).eval()
    if randomize_norm:  # RMSNorm with unit weight is ~idempotent; random weights expose a double norm
        with torch.no_grad():
            m.get_encoder().final_layer_norm.weight.uniform_(0.3, 3.0)
    return m


@pytest.fixture(scope="module")
def t5_both(tok, data):
    """A random T5 and its DecoderLens table with both intermediate variants (computed once)."""
    srcs, refs, tasks = data
    model = _t5(tok)
    return model, decoder_lens(model, tok, srcs, refs, tasks=tasks, generation=GEN, apply_final_norm="both")


def _bart(tok, seed=0):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    cfg = BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        dropout=0.0, pad_token_id=0, eos_token_id=1, bos_token_id=1, decoder_start_token_id=1,
        forced_bos_token_id=None, forced_eos_token_id=None,
    )
    return BartForConditionalGeneration(cfg).eval()


def _plain_generate(model, tok, sources, gen=GEN):
    enc = tok(list(sources), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **gen)
    return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]


def _own_logprob(model, tok, source, reference):
    """Sum log p(reference | source) from the model's own mean cross-entropy loss (unpadded)."""
    enc = tok([source], return_tensors="pt")
    labels = tok(text_target=[reference], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(**enc, labels=labels).loss
    return -loss.item() * labels.shape[1]


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_last_layer_equals_plain_generate_random_init(arch, tok, data):
    srcs, refs, tasks = data
    model = _t5(tok) if arch == "t5" else _bart(tok)
    df = decoder_lens(model, tok, srcs, refs, tasks=tasks, generation=GEN, batch_size=len(srcs))
    L = model.config.num_layers if arch == "t5" else model.config.encoder_layers
    assert sorted(df["layer"].unique()) == list(range(L + 1))
    last = df[df["layer"] == L].sort_values("example")
    assert (last["variant"] == "encoder_output").all()
    assert last["output"].tolist() == _plain_generate(model, tok, srcs)
    assert np.allclose(last["depth"], 1.0) and np.allclose(df[df["layer"] == 0]["depth"], 0.0)
    # a random model is not uniform over layers: the lens must actually change the decoder input
    assert df[df["layer"] == 0]["logprob"].tolist() != last["logprob"].tolist()
    # one row per (example, layer)
    assert len(df) == len(srcs) * (L + 1)


def test_batching_does_not_change_rows(tok, data):
    srcs, refs, tasks = data
    model = _t5(tok)
    a = decoder_lens(model, tok, srcs, refs, tasks=tasks, generation=GEN, batch_size=len(srcs), layers=[1, 3])
    b = decoder_lens(model, tok, srcs, refs, tasks=tasks, generation=GEN, batch_size=4, layers=[3, 1])
    assert a["example"].tolist() == b["example"].tolist()
    assert np.allclose(a["logprob"], b["logprob"], atol=1e-4)


def test_final_norm_switch_t5(tok, data, t5_both):
    from transformers.modeling_outputs import BaseModelOutput

    srcs, refs, tasks = data
    model, df = t5_both
    norm = encoder_final_norm(model)
    assert norm is model.get_encoder().final_layer_norm
    L = model.config.num_layers
    auto = decoder_lens(model, tok, srcs, refs, tasks=tasks, generation=GEN)  # default: on for T5
    off = decoder_lens(model, tok, srcs, refs, tasks=tasks, generation=GEN, apply_final_norm=False,
                       layers=[0, L])
    assert set(auto[auto["layer"] < L]["variant"]) == {"final_norm"}
    assert set(off[off["layer"] < L]["variant"]) == {"raw"}
    # at L_e one row per example whatever the switch, the encoder's own output: norm not applied twice
    own = [_own_logprob(model, tok, s, r) for s, r in zip(srcs, refs)]
    for d in (df, auto, off):
        last = d[d["layer"] == L].sort_values("example")
        assert len(last) == len(srcs) and (last["variant"] == "encoder_output").all()
        assert np.allclose(last["logprob"], own, atol=1e-4)
    enc = tok(srcs, return_tensors="pt", padding=True)
    with torch.no_grad():
        hs = model.get_encoder()(**enc, output_hidden_states=True).hidden_states
        # the test can fail: norm applied twice at L_e would give a different decoder input
        assert not torch.allclose(norm(hs[L]), hs[L], atol=1e-3)

        def lp(h):
            lab = tok(text_target=refs, return_tensors="pt", padding=True)
            labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
            logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=h),
                           attention_mask=enc["attention_mask"], labels=labels).logits
            g = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
            return (g * (labels != -100)).sum(-1).numpy()

        for layer in range(L):
            normed = df[(df["layer"] == layer) & (df["variant"] == "final_norm")].sort_values("example")
            raw = df[(df["layer"] == layer) & (df["variant"] == "raw")].sort_values("example")
            assert np.allclose(normed["logprob"], lp(norm(hs[layer])), atol=1e-4)
            assert np.allclose(raw["logprob"], lp(hs[layer]), atol=1e-4)
            assert not np.allclose(normed["logprob"], raw["logprob"], atol=1e-3)
            # auto == the final_norm variant of "both"
            a = auto[auto["layer"] == layer].sort_values("example")
            assert a["output"].tolist() == normed["output"].tolist()
        # a generated output at an intermediate layer matches generate on the normed state
        out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=norm(hs[1])),
                             attention_mask=enc["attention_mask"], **GEN)
    texts = [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    normed1 = df[(df["layer"] == 1) & (df["variant"] == "final_norm")].sort_values("example")
    assert normed1["output"].tolist() == texts


def test_final_norm_not_applicable_to_post_ln_bart(tok, data):
    srcs, refs, _ = data
    model = _bart(tok)
    assert encoder_final_norm(model) is None
    df = decoder_lens(model, tok, srcs[:3], refs[:3], generation=GEN)
    L = model.config.encoder_layers
    assert set(df[df["layer"] < L]["variant"]) == {"raw"}
    for bad in (True, "both"):
        with pytest.raises(WorkbenchError, match="post-LN"):
            decoder_lens(model, tok, srcs[:3], refs[:3], generation=GEN, apply_final_norm=bad)


def test_logprob_equals_model_loss_bart(tok, data):
    srcs, refs, _ = data
    model = _bart(tok)
    L = model.config.encoder_layers
    df = decoder_lens(model, tok, srcs, refs, generation=GEN, layers=[L])
    own = [_own_logprob(model, tok, s, r) for s, r in zip(srcs, refs)]
    assert np.allclose(df.sort_values("example")["logprob"], own, atol=1e-4)
    n_tok = [len(tok(text_target=r)["input_ids"]) for r in refs]
    assert df.sort_values("example")["n_ref_tokens"].tolist() == n_tok


def test_scores_against_sacrebleu(tok):
    import sacrebleu

    from analyses.decoder_lens.lens import _score

    assert _score(" 1 2 3 ", "1 2 3") == (1.0, 100.0)
    em, chrf = _score("1 2 4", "1 2 3")
    assert em == 0.0
    assert chrf == pytest.approx(sacrebleu.sentence_chrf("1 2 4", ["1 2 3"]).score)
    assert 0 < chrf < 100


def test_user_errors(tok, data):
    from transformers import GPT2Config, GPT2LMHeadModel

    srcs, refs, _ = data
    gpt = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok))).eval()
    with pytest.raises(WorkbenchError, match="encoder-decoder"):
        decoder_lens(gpt, tok, srcs, refs)
    model = _t5(tok, randomize_norm=False)
    with pytest.raises(WorkbenchError, match="references"):
        decoder_lens(model, tok, srcs, refs[:-1])
    with pytest.raises(WorkbenchError, match="out of range"):
        decoder_lens(model, tok, srcs, refs, layers=[0, 9])
    with pytest.raises(WorkbenchError, match="empty"):
        decoder_lens(model, tok, [], [])
    with pytest.raises(WorkbenchError, match="apply_final_norm"):
        decoder_lens(model, tok, srcs, refs, apply_final_norm="sometimes")


def test_summarize_repeats_last_layer_per_variant(data, t5_both):
    srcs, refs, tasks = data
    model, df = t5_both
    s = summarize(df)
    L = model.config.num_layers
    assert set(s["variant"]) == {"final_norm", "raw"}
    assert len(s) == len(set(tasks)) * 2 * (L + 1)
    sub = df[(df["task"] == "copy") & (df["layer"] == 0) & (df["variant"] == "raw")]
    row = s[(s["task"] == "copy") & (s["layer"] == 0) & (s["variant"] == "raw")].iloc[0]
    assert row["chrf"] == pytest.approx(sub["chrf"].mean())


def test_whisper_style_non_text_encoder(tok):
    """Whisper: sources are dicts of encoder inputs; its final encoder layer_norm is auto-applied."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
        max_source_positions=16, max_target_positions=32, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1, bos_token_id=0, suppress_tokens=None, begin_suppress_tokens=None, init_std=0.2,
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    assert encoder_final_norm(model) is model.get_encoder().layer_norm
    feats = torch.randn(3, 8, 32)
    refs = ["1 2 3", "T", "4 5"]
    df = decoder_lens(model, tok, [{"input_features": f} for f in feats], refs, generation=GEN)
    with torch.no_grad():
        plain = model.generate(input_features=feats, **GEN)
    texts = [t.strip() for t in tok.batch_decode(plain, skip_special_tokens=True)]
    last = df[df["layer"] == 2].sort_values("example")
    assert last["output"].tolist() == texts
    assert set(df[df["layer"] < 2]["variant"]) == {"final_norm"}
    assert np.isfinite(df["logprob"]).all()


# ------------------------------------------------------------------ the trained built-in model
# the trained model ships with the repo; its absence is a failure of the checkout, not a reason to skip
assert (MODEL_DIR / "model.safetensors").exists(), "t5-tasks weights missing: run scripts/train_seq2seq.py"
needs_model = pytest.mark.usefixtures()


@needs_model
def test_trained_model_files():
    meta = json.loads((MODEL_DIR / "workbench_model.json").read_text())
    assert meta["name"] == "t5-tasks" and meta["kind"] == "seq2seq"
    assert meta["trained_by"] == "scripts/train_seq2seq.py"
    assert (MODEL_DIR / "model.safetensors").stat().st_size < 20 * 2**20
    rows = [json.loads(x) for x in EVAL_SET.read_text().splitlines()]
    assert {r["task"] for r in rows} == set(T.TASKS)
    assert all(set(r) == {"task", "source", "reference"} for r in rows)


@needs_model
def test_trained_model_last_layer_equals_generate():
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = T5ForConditionalGeneration.from_pretrained(MODEL_DIR).eval()
    rows = [json.loads(x) for x in EVAL_SET.read_text().splitlines()][::8]
    srcs, refs = [r["source"] for r in rows], [r["reference"] for r in rows]
    gen = {"max_new_tokens": 12, "do_sample": False, "num_beams": 1}
    L = model.config.num_layers
    df = decoder_lens(model, tok, srcs, refs, tasks=[r["task"] for r in rows], generation=gen,
                      layers=[0, L])
    last = df[df["layer"] == L].sort_values("example")
    assert last["output"].tolist() == _plain_generate(model, tok, srcs, gen)
    own = [_own_logprob(model, tok, s, r) for s, r in zip(srcs, refs)]
    assert np.allclose(last["logprob"], own, atol=1e-3)
    assert last["exact_match"].mean() > 0.5  # the trained model solves most of its tasks
    assert df[df["layer"] == 0]["variant"].unique().tolist() == ["final_norm"]


@needs_model
def test_registered_analysis_on_builtin_pair():
    from workbench.analysis import get_analysis, run_analysis

    spec = get_analysis("decoder_lens")
    assert spec.inputs == ("model",)
    res = run_analysis("decoder_lens", model="t5-tasks", data="seq2seq-tasks",
                       params={"max_examples": 10, "max_new_tokens": 12, "layers": [0, 6]})
    assert set(res.table["layer"]) <= {0, 6} and res.table["example"].nunique() == 10
    assert res.summary["variants"] == ["encoder_output", "final_norm"]
    fig = spec.figure(res)
    assert len(fig.data) > 0
    with pytest.raises(WorkbenchError, match="source column"):
        run_analysis("decoder_lens", model="t5-tasks", data="seq2seq-tasks",
                     params={"max_examples": 2, "source_column": "nope"})


# ------------------------------------------------------------------ encoder states from the store
def test_store_tokenisation_equals_the_lens_tokenisation(store):
    """The store's token ids are what the lens tokenised itself: T5's closing </s> kept, and a source
    longer than the model's max_length cut by the tokenizer's own truncation (still ending in </s>)."""
    from analyses.decoder_lens.states import encode_sources, store_states
    from workbench.analysis import RunContext
    from workbench.models import load_model

    m = load_model("t5-tasks")
    rows = [json.loads(x) for x in EVAL_SET.read_text().splitlines()][::20]
    long_source = "copy: " + " ".join(str(k % 10) for k in range(3 * m.max_length))
    sources = [r["source"] for r in rows] + [long_source]
    ctx = RunContext("decoder_lens", {}, model=m, store=store)
    with pytest.warns(UserWarning, match="truncated"):
        states = store_states(ctx, m, sources, [0, m.n_layers], batch_size=4)
    eos = m.tokenizer.eos_token_id
    for i, src in enumerate(sources):
        before = encode_sources(m.tokenizer, [src], m.max_length)["input_ids"][0].tolist()
        assert states.entry.token_ids(i).tolist() == before
        assert before[-1] == eos
    assert len(states.entry.token_ids(len(sources) - 1)) == m.max_length
    assert states.entry.token_ids(0).tolist() == m.tokenizer(sources[0])["input_ids"]  # short: nothing cut


def test_store_states_equal_the_encoder_forward(store):
    """Right-padded stored states and their mask equal the encoder's own padded batch (real tokens),
    and the lens reading them gives the table of the lens running the encoder itself."""
    from analyses.decoder_lens.states import ForwardStates, store_states
    from workbench.analysis import RunContext
    from workbench.models import load_model

    m = load_model("t5-tasks")
    rows = [json.loads(x) for x in EVAL_SET.read_text().splitlines()][3::16]
    srcs, refs = [r["source"] for r in rows], [r["reference"] for r in rows]
    L = m.n_layers
    stored = store_states(RunContext("decoder_lens", {}, model=m, store=store), m, srcs, [0, 3, L], batch_size=5)
    forward = ForwardStates(m.hf_model, m.tokenizer, srcs)
    assert stored.n_layers == forward.n_layers == L
    (a, mask_a), (b, mask_b) = stored.batch(0, len(srcs), [0, 3, L]), forward.batch(0, len(srcs), [0, 3, L])
    assert torch.equal(mask_a, mask_b)
    real = mask_b.bool()
    for layer in (0, 3, L):
        assert torch.allclose(a[layer][real], b[layer][real], atol=1e-5)
    gen = {"max_new_tokens": 12, "do_sample": False, "num_beams": 1}
    kw = dict(layers=[0, 3, L], generation=gen, batch_size=4, apply_final_norm="both")
    via_store = decoder_lens(m.hf_model, m.tokenizer, srcs, refs, states=stored, **kw)
    direct = decoder_lens(m.hf_model, m.tokenizer, srcs, refs, **kw)
    assert via_store["output"].tolist() == direct["output"].tolist()
    assert np.allclose(via_store["logprob"], direct["logprob"], atol=1e-4)
    assert via_store[via_store["layer"] == L]["output"].tolist() == _plain_generate(m.hf_model, m.tokenizer, srcs, gen)


def test_second_identical_run_is_a_store_cache_hit(store):
    from workbench.analysis import run_analysis

    runs = [run_analysis("decoder_lens", model="t5-tasks", data="seq2seq-tasks", params={"max_examples": 20},
                         store=store) for _ in range(2)]
    first, second = (r.manifest["cache"] for r in runs)
    assert first and not any(e["hit"] for e in first)
    assert second and all(e["hit"] for e in second)
    assert [e["key"] for e in first] == [e["key"] for e in second]
    pd.testing.assert_frame_equal(runs[0].table, runs[1].table)
