"""Embedding inversion: beam mechanics on tiny random models, metrics, input checks.

Tiny proposer: a 2-layer LlamaConfig with a character-level tokenizer that has a chat template;
tiny embedder: a 2-layer BertConfig. Nothing is downloaded; every test runs in about a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analyses.inversion import check_vectors, parse_layers, run as run_inversion
from analyses.inversion.metrics import (bleu, exact_match, leakage, sensitive_strings, token_set_f1,
                                        word_tokenize)
from analyses.inversion.search import (Embedder, Proposer, SearchConfig, apply_repetition_penalty,
                                       banned_token_mask, invert, propose)
from workbench.analysis import RunContext
from workbench.data import TextDataset
from workbench.errors import WorkbenchError
from workbench.models import LoadedModel

torch.set_num_threads(1)  # the tiny models gain nothing from threads; shared CPUs lose a lot

CHARS = list("abcdefghijklmnopqrstuvwxyz .,'") + ["\n", '"', "@"]


def _char_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>")
    if chat:
        tok.chat_template = ("{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
                             "{% if add_generation_prompt %}<s>{% endif %}")
    return tok


@pytest.fixture(scope="module")
def tiny():
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ptok = _char_tokenizer(chat=True)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(ptok) + 3, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, pad_token_id=0)).eval()
    etok = _char_tokenizer(chat=False)
    bert = BertModel(BertConfig(vocab_size=len(etok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, max_position_embeddings=256)).eval()
    # built by hand from configs: the cached-step test below checks this proposer's KV-cache path itself
    proposer = LoadedModel(name="tiny-llama", kind="decoder", hf_model=lm, tokenizer=ptok, fingerprint="tiny-llama@0",
                           n_layers=2, d_model=32, load_report={"kv_cache_ok": True})
    embedder = LoadedModel(name="tiny-bert", kind="encoder", hf_model=bert, tokenizer=etok, fingerprint="tiny-bert@0",
                           n_layers=2, d_model=32, max_length=256, sentence_pooling="mean", sentence_normalize=True)
    return proposer, embedder


def _cfg(**kw):
    base = dict(beam_width=4, top_k=5, max_steps=6, refine_steps=4, stages=2, threshold=1.01, seed=0)
    base.update(kw)
    return SearchConfig(**base)


# ------------------------------------------------------------------------------------- mechanics
def test_best_cosine_never_decreases_and_is_true_cosine(tiny):
    proposer, embedder = tiny
    emb = Embedder(embedder, precision="fp32")
    target = emb.encode(["the cat sat on a mat."])[0].numpy()
    steps = []
    res = invert(target, Proposer(proposer, precision="fp32"), emb, _cfg(), callback=lambda s: steps.append(s.best_cosine))
    assert len(steps) == res.steps == 6 + 4
    assert all(b >= a for a, b in zip(steps, steps[1:]))
    assert res.history == steps
    assert res.cosine == pytest.approx(max(res.stage_cosines))
    recomputed = torch.nn.functional.cosine_similarity(emb.encode([res.text]), torch.tensor(target)[None])
    assert float(recomputed) == pytest.approx(res.cosine, abs=1e-5)


def test_seeds_reproduce(tiny):
    proposer, embedder = tiny
    emb = Embedder(embedder, precision="fp32")
    target = emb.encode(["hello world, said alice."])[0].numpy()
    runs = [invert(target, Proposer(proposer, precision="fp32"), emb, _cfg(randomness=True, n_keep_top=1, seed=s))
            for s in (3, 3, 4)]
    assert runs[0].text == runs[1].text and runs[0].history == runs[1].history
    assert runs[0].stage_texts == runs[1].stage_texts


def test_banned_tokens_never_appear(tiny):
    proposer, embedder = tiny
    prop = Proposer(proposer, precision="fp32")
    tok = proposer.tokenizer
    bad = [tok.convert_tokens_to_ids(c) for c in ("\n", '"', "@")] + [tok.eos_token_id, len(tok) + 1]
    assert prop.banned[bad].all()
    # make the banned tokens the proposer's favourites, so that only the mask keeps them out
    handle = proposer.hf_model.lm_head.register_forward_hook(
        lambda mod, inp, out: out.index_add(-1, torch.tensor(bad), torch.full((len(bad),), 50.0).expand(*out.shape[:-1], -1)))
    seen: list[str] = []
    emb = Embedder(embedder, precision="fp32")
    original = emb.encode

    def spy(texts, batch_size=None, **kw):
        seen.extend(texts)
        return original(texts, batch_size, **kw)

    try:
        target = original(['say "hi" @ me'])[0].numpy()
        emb.encode = spy
        invert(target, prop, emb, _cfg(stages=1))
    finally:
        handle.remove()
    assert seen, "no candidates were scored"
    assert not any(("\n" in t or '"' in t or "@" in t or "</s>" in t) for t in seen)


def test_kv_cache_matches_full_forward(tiny):
    proposer, _ = tiny
    prop = Proposer(proposer, precision="fp32")
    prompt = prop.prompt_ids("abc")
    logits, cache = prop.start(prompt)
    # step 1: three beams all from the prompt; step 2: reorder (beam 2, 0, 0)
    toks1 = torch.tensor([5, 6, 7])
    logits, cache = prop.step(cache, toks1, torch.zeros(3, dtype=torch.long))
    toks2 = torch.tensor([8, 9, 10])
    logits, cache = prop.step(cache, toks2, torch.tensor([2, 0, 0]))
    seqs = [[7, 8], [5, 9], [5, 10]]
    with torch.no_grad():
        full = proposer.hf_model(input_ids=torch.cat([prompt.expand(3, -1), torch.tensor(seqs)], 1)).logits[:, -1]
    assert torch.allclose(logits, full, atol=1e-5)


def test_repetition_penalty_and_topk_topp_closed_form():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    ids, valid = propose(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), top_k=3, top_p=0.7)
    assert ids.tolist() == [[0, 1, 2]] and valid.tolist() == [[True, True, False]]
    _, valid = propose(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), top_k=3, top_p=1.0)
    assert valid.all()


@pytest.mark.parametrize("penalize_prompt", [True, False])
def test_the_penalty_covers_the_prompt_only_when_asked(tiny, monkeypatch, penalize_prompt):
    """The official code penalises the prompt's tokens too; ``penalize_prompt=False`` penalises only the
    generated ones (none at the first step), so a restart may reuse the words of its prompt's text."""
    import analyses.inversion.search as search

    proposer, embedder = tiny
    prop, emb = Proposer(proposer, precision="fp32"), Embedder(embedder, precision="fp32")
    seen: list[torch.Tensor] = []
    real = search.apply_repetition_penalty
    monkeypatch.setattr(search, "apply_repetition_penalty", lambda lg, ctx, pen: (seen.append(ctx), real(lg, ctx, pen))[1])
    cfg = _cfg(stages=1, max_steps=3, penalize_prompt=penalize_prompt)
    prompt = prop.prompt_ids(cfg.prompt)
    target = emb.encode(["the cat sat on a mat."])[0].numpy()
    invert(target, prop, emb, cfg)
    n_prompt = prompt.shape[1]
    if penalize_prompt:  # every step: the prompt, then the t generated tokens
        assert [c.shape[1] for c in seen] == [n_prompt, n_prompt + 1, n_prompt + 2]
        assert all(torch.equal(c[:, :n_prompt], prompt.expand(len(c), -1)) for c in seen)
    else:  # step 0 has nothing to penalise; then only what the beams generated
        assert [c.shape[1] for c in seen] == [1, 2]


def test_layer_embedder_is_masked_mean(tiny):
    _, embedder = tiny
    emb = Embedder(embedder, precision="fp32", layer=1)
    texts = ["a much longer text", "ab", "abc d"]  # out of length order: encode sorts, then unsorts
    got = emb.encode(texts)
    for i, t in enumerate(texts):
        enc = embedder.tokenizer([t], return_tensors="pt")
        with torch.no_grad():
            hs = embedder.hf_model(**enc, output_hidden_states=True).hidden_states[1][0]
        assert torch.allclose(got[i], hs.mean(0), atol=1e-5)
    with pytest.raises(WorkbenchError):
        Embedder(embedder, precision="fp32", layer=3)


def test_analysis_run_table(tiny, store):
    proposer, embedder = tiny
    params = {"beam_width": 3, "top_k": 3, "top_p": 1.0, "repetition_penalty": 1.5, "max_steps": 3,
              "refine_steps": 2, "stages": 2, "threshold": 0.99, "randomness": False, "prompt": "write",
              "refine_prompt": "like this: {text}", "layers": "0,-1", "max_items": 2, "batch_size": 8,
              "check_norms": True, "proposer": "unused", "embedder": "unused", "seed": 0}
    ctx = RunContext("inversion", params, model=embedder, store=store,
                     dataset=TextDataset.from_texts(["alice met bob.", "x y z", "unused"]))
    table, summary = run_inversion(ctx, proposer_model=proposer)
    assert len(table) == 4 and sorted(table["layer"].unique()) == [-1, 0]
    for col in ("target", "reconstruction", "cosine", "token_f1", "bleu", "exact_match", "leakage", "steps",
                "seconds", "layer"):
        assert col in table
    assert summary["output"]["mean_cosine"] == pytest.approx(table[table.layer == -1]["cosine"].mean())
    # the arithmetic "auto" resolved to on this machine is recorded beside the request
    from analyses.inversion.precision import resolve_precision
    assert summary["arithmetic"] == {"search": resolve_precision("auto"), "requested": "auto"}


# ------------------------------------------------------------------------------------- inputs
def test_vector_checks(tiny):
    _, embedder = tiny
    emb = Embedder(embedder, precision="fp32")
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 32)).astype(np.float32)
    with pytest.raises(WorkbenchError, match="norms"):
        check_vectors(v, emb)
    check_vectors(v, emb, check_norms=False)
    with pytest.raises(WorkbenchError, match="dimensions"):
        check_vectors(v[:, :16], emb)
    check_vectors(v / np.linalg.norm(v, axis=1, keepdims=True), emb)
    check_vectors(v, Embedder(embedder, precision="fp32", layer=2))  # hidden states are not normalised
    assert parse_layers(None, 2) == [None] and parse_layers("all", 2) == [0, 1, 2]
    assert parse_layers("1,-1", 2) == [1, None]
    with pytest.raises(WorkbenchError):
        parse_layers(5, 2)


# ------------------------------------------------------------------------------------- metrics
def test_token_set_f1_closed_form():
    assert word_tokenize("We don't use 3.5 GPUs, e-mail me.") == \
        ["We", "don't", "use", "3.5", "GPUs", ",", "e-mail", "me", "."]
    # sets {a, b, c} vs {a, b, d}: P = R = 2/3
    assert token_set_f1("a b c", "a b d") == pytest.approx(2 / 3)
    assert token_set_f1("a a b", "b a") == pytest.approx(1.0)  # sets, not multisets
    assert token_set_f1("The cat", "the cat") == pytest.approx(0.5)  # case-sensitive, as vec2text
    assert token_set_f1("", "x") == 0.0


def test_bleu_and_exact_match():
    import sacrebleu

    assert bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    ref, hyp = "the quick brown fox jumps over the lazy dog", "the quick brown dog jumps"
    assert bleu(ref, hyp) == pytest.approx(sacrebleu.sentence_bleu(hyp, [ref]).score)
    assert 0 < bleu(ref, hyp) < 100
    assert exact_match(" hi there ", "hi there") and not exact_match("hi", "Hi")


def test_sensitive_strings_and_leakage():
    t = ("The model by Alice Smith was released on March 4, 2021 with 95% accuracy. "
         "Contact alice.smith@uni.edu or see 2021-03-05 and BERT.")
    s = sensitive_strings(t)
    assert s["email"] == ["alice.smith@uni.edu"]
    assert s["date"] == ["March 4, 2021", "2021-03-05"]
    assert s["number"] == ["95%"]
    assert s["name"] == ["Alice Smith", "BERT"]  # "The" and "Contact" start sentences
    frac, n, leaked = leakage(t, "alice smith trained bert")
    assert n == 6 and leaked == ["Alice Smith", "BERT"] and frac == pytest.approx(2 / 6)
    assert math.isnan(leakage("nothing here.", "x")[0])
    assert leakage("We met Bob.", "bobby")[0] == 0.0  # word boundaries


def test_banned_mask_covers_specials(tiny):
    proposer, _ = tiny
    mask = banned_token_mask(proposer.tokenizer, len(proposer.tokenizer) + 3)
    tok = proposer.tokenizer
    assert all(mask[i] for i in tok.all_special_ids)
    assert not mask[tok.convert_tokens_to_ids("a")]


def test_analysis_refuses_foreign_vectors(tiny, store):
    proposer, embedder = tiny
    params = {"beam_width": 2, "top_k": 2, "top_p": 1.0, "repetition_penalty": 1.5, "max_steps": 2,
              "refine_steps": 2, "stages": 1, "threshold": 0.99, "randomness": False, "prompt": "write",
              "refine_prompt": "{text}", "layers": None, "max_items": 2, "batch_size": 8,
              "check_norms": True, "proposer": "unused", "embedder": "unused", "seed": 0}
    v = np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32) * 5
    with pytest.raises(WorkbenchError, match="normalises"):
        run_inversion(RunContext("inversion", params, model=embedder, vectors=v, store=store),
                      proposer_model=proposer)
    ctx = RunContext("inversion", params, model=embedder, vectors=v / np.linalg.norm(v, axis=1, keepdims=True),
                     store=store)
    table, summary = run_inversion(ctx, proposer_model=proposer)
    assert ctx.cache_events == []  # vectors are used as given: nothing is embedded for the targets
    assert len(table) == 2 and table["target"].isna().all() and summary["mode"] == "vectors"
    assert table["token_f1"].isna().all() and (table["cosine"] > -1).all()


# ------------------------------------------------------------------------------------- store
TEXTS = ["alice met bob.", "x y z", "a much longer text, with commas and words", "ab"]


def _params(**kw):
    base = {"beam_width": 3, "top_k": 3, "top_p": 1.0, "repetition_penalty": 1.5, "max_steps": 3,
            "refine_steps": 2, "stages": 2, "threshold": 1.01, "randomness": False, "prompt": "write",
            "refine_prompt": "like this: {text}", "layers": None, "max_items": 2, "batch_size": 8,
            "check_norms": True, "proposer": "unused", "embedder": "unused", "seed": 0}
    base.update(kw)
    return base


def test_store_targets_equal_embed_texts(tiny, store):
    """Targets read from the store (sentence embedding; residual hooks + mean_pooled) equal what
    embed_texts gives the candidates, on the same texts, to 1e-5."""
    from analyses.inversion.targets import store_targets
    from workbench.hooked import embed_texts

    _, embedder = tiny
    layers = [None, 0, 1, 2]
    max_length = Embedder(embedder, precision="fp32").max_length
    targets = store_targets(embedder, TEXTS, layers, max_length, store=store)
    for layer in layers:
        direct = embed_texts(embedder, TEXTS, layer=layer, batch_size=3, max_length=max_length).numpy()
        assert targets[layer].shape == direct.shape == (len(TEXTS), 32)
        np.testing.assert_allclose(targets[layer], direct, atol=1e-5, rtol=0)
        np.testing.assert_allclose(targets[layer], Embedder(embedder, layer, precision="fp32").encode(TEXTS).numpy(), atol=1e-5, rtol=0)
    # truncation is the same on both paths: a short max_length cuts targets and candidates alike
    with pytest.warns(UserWarning, match="truncated"):
        short = store_targets(embedder, TEXTS, [None], 6, store=store)[None]
    np.testing.assert_allclose(short, embed_texts(embedder, TEXTS, max_length=6).numpy(), atol=1e-5, rtol=0)


def test_run_targets_come_from_the_store_and_are_cached(tiny, store):
    proposer, embedder = tiny
    data = TextDataset.from_texts(TEXTS)
    runs = []
    for _ in range(2):
        ctx = RunContext("inversion", _params(layers="1,-1"), model=embedder, dataset=data, store=store)
        runs.append((ctx, run_inversion(ctx, proposer_model=proposer)[0]))
    (first, t1), (second, t2) = runs
    assert len(first.cache_events) == 1 and not first.cache_events[0]["hit"]
    assert len(second.cache_events) == 1 and second.cache_events[0]["hit"]
    assert first.cache_events[0]["key"] == second.cache_events[0]["key"]
    assert t1["reconstruction"].tolist() == t2["reconstruction"].tolist()
    # the reported cosine is the true cosine between the reconstruction and the stored target
    from analyses.inversion.targets import store_targets

    stored = store_targets(embedder, TEXTS[:2], [None, 1], 128, store=store)
    for row in t1.itertuples():
        layer = None if row.layer == -1 else row.layer
        cand = Embedder(embedder, layer, precision="fp32").encode([row.reconstruction])[0]
        cos = torch.nn.functional.cosine_similarity(cand, torch.tensor(stored[layer][row.item]), dim=0)
        assert float(cos) == pytest.approx(row.cosine, abs=1e-5)


def test_structured_step_records(tiny, store):
    """ctx.step (when the context has it) gets one plain-dict record per step; the bar and the
    message of ctx.progress stay as they were."""
    from analyses.inversion.progress import RECORD_KEYS

    proposer, embedder = tiny
    records, bars, legacy = [], [], []
    ctx = RunContext("inversion", _params(layers="0,-1"), model=embedder, store=store,
                     dataset=TextDataset.from_texts(TEXTS), progress_fn=lambda d, t, m="": bars.append((d, t, m)))
    ctx.step = records.append  # whatever RunContext offers, the back-end only looks for a `step` callable
    table, _ = run_inversion(ctx, proposer_model=proposer, step_callback=lambda *a: legacy.append(a))
    per_item, n_items = 3 + 2, 2 * 2
    steps = [b for b in bars if b[2].startswith("item ")]
    assert len(records) == len(steps) == len(legacy) == n_items * per_item
    assert all(set(r) == set(RECORD_KEYS) for r in records)
    assert all(type(v) in (int, float, str) for r in records for v in r.values())
    assert [r["item"] for r in records] == [i for i in range(n_items) for _ in range(per_item)]
    assert [(r["stage"], r["step"]) for r in records[:per_item]] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    assert [r["layer"] for r in records[::per_item]] == [0, 0, -1, -1]
    assert [r["target"] for r in records[::per_item]] == [0, 1, 0, 1]
    assert [r["done"] for r in records] == list(range(1, n_items * per_item + 1))
    assert all(r["total"] == n_items * per_item and r["n_items"] == n_items for r in records)
    last = records[per_item - 1]
    row = table[(table["layer"] == 0) & (table["item"] == 0)].iloc[0]
    assert last["best_text"] == row["reconstruction"] and last["best_cosine"] == pytest.approx(row["cosine"])
    # the message the page reads today: 5 parts separated by " · "
    d, t, message = steps[per_item - 1]
    assert (d, t) == (per_item, n_items * per_item)
    assert message.split(" · ", 4)[:4] == ["item 1/4", "layer 0", "stage 2 step 2/2", f"cos {last['best_cosine']:.4f}"]
    assert legacy[0][:3] == (0, n_items, 0)


# ------------------------------------------------------------------------------------- audit wording
def test_titles_do_not_end_sentences():
    assert sensitive_strings("Dr. Patel told the patient to rest.")["name"] == ["Patel"]
    assert sensitive_strings("We met Mrs. Ann Lee. Then Bob left.")["name"] == ["Ann Lee", "Bob"]
    assert sensitive_strings("The vet, Dr. Ng, came.")["name"] == ["Ng"]  # the title alone is no name


def test_leak_description_says_what_leaked():
    from analyses.inversion.metrics import leak_description, recovered_words

    t = "Yesterday Maria sent her cousin in Lisbon a postcard on March 4, 2021 for 12 euros."
    text = leak_description(t, "maria sent a postcard from lisbon for 12 euros")
    assert text.startswith("The names 'Maria' and 'Lisbon' and the number '12' were recovered verbatim; "
                           "the date 'March 4, 2021' was not.")
    assert text.endswith("Words recovered: Maria, sent, Lisbon, postcard, 12, euros (6 of 11 content words).")
    assert leak_description("We met Bob.", "Alice").startswith("The name 'Bob' was not recovered.")
    assert leak_description("the cat sat.", "a cat").startswith("The original holds no names")
    assert "None of its 1 content words" in leak_description("the cat.", "a dog")
    assert "unknown" in leak_description(None, "anything")
    assert recovered_words("The cat sat on the mat.", "the mat and a CAT") == ["cat", "mat"]


def test_report_says_what_leaked():
    import pandas as pd

    from analyses.inversion.report import html_report, leak_overview
    from workbench.results import Result

    table = pd.DataFrame([
        {"item": 0, "layer": -1, "target": "We met Dr. Patel in Lisbon.", "reconstruction": "met patel in a city",
         "cosine": 0.8, "token_f1": 0.4, "bleu": 1.0, "exact_match": False, "leakage": 0.5, "n_sensitive": 2,
         "leaked": "Patel", "steps": 3, "seconds": 1.0},
        {"item": 1, "layer": -1, "target": "the cat sat.", "reconstruction": "a cat", "cosine": 0.7,
         "token_f1": 0.4, "bleu": 1.0, "exact_match": False, "leakage": float("nan"), "n_sensitive": 0,
         "leaked": "", "steps": 3, "seconds": 1.0}])
    overview = leak_overview(table)
    assert overview.startswith("1 of the 2 sensitive strings (names, numbers, e-mail addresses, dates) in 1 of the 2 "
                               "originals were recovered verbatim: 'Patel' (item 1). Not recovered: 'Lisbon' (item 1).")
    page = html_report(Result(analysis="inversion", table=table, summary={"mode": "texts"}, params={}, manifest={}))
    assert "The name &#x27;Patel&#x27; was recovered verbatim; the name &#x27;Lisbon&#x27; was not." in page
    vec = table.assign(target=[None, None])
    assert "unknown" in leak_overview(vec)


# ------------------------------------------------------------------------------------- precision
def test_precision_resolution_and_errors():
    from analyses.inversion.search import native_bf16, resolve_precision

    assert resolve_precision("fp32") == "fp32" and resolve_precision("BF16") == "bf16"
    assert resolve_precision("auto") == ("bf16" if native_bf16("cpu") else "fp32")
    with pytest.raises(WorkbenchError, match="precision must be one of"):
        resolve_precision("fp8")


def test_bf16_search_reports_fp32_cosines_and_leaves_the_models_alone(tiny):
    proposer, embedder = tiny
    exact, fast = Embedder(embedder, precision="fp32"), Embedder(embedder, precision="bf16")
    texts = ["the cat sat on a mat.", "hello world, said alice.", "x y z"]
    a, b = exact.encode(texts), fast.encode(texts)
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999  # bf16 rounding only
    assert torch.equal(fast.encode(texts, exact=True), a)
    prop = Proposer(proposer, precision="bf16")
    assert prop.hf is not proposer.hf_model and next(prop.hf.parameters()).dtype == torch.bfloat16
    assert next(proposer.hf_model.parameters()).dtype == torch.float32  # the loaded model is untouched
    assert Proposer(proposer, precision="bf16").hf is prop.hf  # one copy per model
    target = a[0].numpy()
    res = invert(target, prop, fast, _cfg())
    recomputed = torch.nn.functional.cosine_similarity(exact.encode(res.stage_texts), torch.tensor(target)[None])
    assert res.stage_cosines == pytest.approx(recomputed.tolist(), abs=1e-6)
    assert res.cosine == pytest.approx(max(res.stage_cosines)) and res.text in res.stage_texts


# ------------------------------------------------------------------------------------- restarts
def test_refine_text_picks_the_best_distinct_stage_results():
    from analyses.inversion.search import refine_text

    texts, cosines = ["a b", "c d", "a b", "e f"], [0.5, 0.7, 0.5, 0.7]
    assert refine_text(texts, cosines) == "c d"  # ties: the earlier stage
    assert refine_text(texts, cosines, pool=2) == "c d\ne f"
    assert refine_text(texts, cosines, pool=9) == "c d\ne f\na b"  # duplicates count once


@pytest.mark.parametrize("pool", [1, 2])
def test_every_later_stage_restarts_from_the_best_so_far(tiny, pool):
    from analyses.inversion.search import refine_text

    proposer, embedder = tiny
    prop, emb = Proposer(proposer, precision="fp32"), Embedder(embedder, precision="fp32")
    prompts: list[str] = []
    original = prop.prompt_ids
    prop.prompt_ids = lambda instruction: (prompts.append(instruction), original(instruction))[1]
    target = emb.encode(["the cat sat on a mat."])[0].numpy()
    res = invert(target, prop, emb, _cfg(stages=4, refine_prompt="like: {text}", refine_pool=pool))
    n = len(res.stage_texts)
    assert len(prompts) == n and 2 <= n <= 4 and prompts[0] == _cfg().prompt
    for s in range(1, n):  # stage s + 1 is prompted with the best of stages 1..s
        assert prompts[s] == "like: " + refine_text(res.stage_texts[:s], res.stage_cosines[:s], pool)
    assert len(set(prompts)) == n
    if n < 4:  # it stopped because the next restart's prompt had already run (a deterministic repeat)
        assert "like: " + refine_text(res.stage_texts, res.stage_cosines, pool) in prompts


def test_a_restart_that_would_repeat_a_stage_is_skipped(tiny, monkeypatch):
    """Without randomness, a restart prompted with an unchanged best text would repeat an earlier stage
    exactly: the search ends there. With randomness every stage runs."""
    import analyses.inversion.search as search

    proposer, embedder = tiny
    prop, emb = Proposer(proposer, precision="fp32"), Embedder(embedder, precision="fp32")
    calls: list[str] = []

    def fake_stage(proposer, embedder, target, instruction, cfg, rng, steps, stage, best, callback):
        calls.append(instruction)  # stage 1 finds the best text; no restart beats it
        return ("the best", 0.9, [], 1, 1) if stage == 1 else (f"worse {stage}", 0.1, [], 1, 1)

    monkeypatch.setattr(search, "run_stage", fake_stage)
    target = emb.encode(["the cat sat on a mat."])[0].numpy()
    res = invert(target, prop, emb, _cfg(stages=5, refine_prompt="like: {text}"))
    assert calls == [_cfg().prompt, "like: the best"] and res.stage_texts == ["the best", "worse 2"]
    assert res.text == "the best" and res.cosine == pytest.approx(0.9)
    calls.clear()
    invert(target, prop, emb, _cfg(stages=5, refine_prompt="like: {text}", randomness=True))
    assert calls == [_cfg().prompt] + ["like: the best"] * 4


def test_quality_push_table_names_the_best_setting_and_the_target():
    """The README's quality-push table: one row per setting, the best cosine per set, and whether the
    paper's target (cosine >= 0.85 and token F1 >= 0.4) is reached, from the jobs' result tables."""
    import pandas as pd

    from analyses.inversion.results_tables import QUALITY_SETTINGS, SETS, render_inversion_quality
    from workbench.results import Result

    def result(cos, f1):
        return Result("inversion", pd.DataFrame({"cosine": cos, "token_f1": f1, "seconds": [2.0, 4.0]}), {})

    results = {f"{s}/{n}": result([0.7, 0.8], [0.1, 0.2]) for s in QUALITY_SETTINGS for n in SETS}
    results["beam-30/general-english"] = result([0.9, 0.9], [0.5, 0.3])
    text = render_inversion_quality(results)
    assert text.count("\n| ") == 1 + len(QUALITY_SETTINGS)  # the header + one row per setting
    assert "`general-english`: best cosine 0.900 (F1 0.400) with B = K = 30" in text
    assert "reached on general-english" in text and "| 0.750 | 0.150 | 3.0 |" in text
    results["beam-30/general-english"] = result([0.9, 0.9], [0.3, 0.3])
    assert "not reached by any setting" in render_inversion_quality(results)


def test_full_set_table_runs_every_sentence_of_both_sets():
    """The full-set table's jobs carry no ``max_items`` (every sentence), one per setting and set, and its
    text says it covers all the sentences."""
    import pandas as pd

    from analyses.inversion.results_tables import FULL_SET_SETTINGS, SETS, TABLES, render_inversion_full_sets
    from workbench.results import Result

    table = {t.name: t for t in TABLES}["inversion_full_sets"]
    assert set(table.jobs) == {f"{s}/{n}" for s in FULL_SET_SETTINGS for n in SETS}
    assert not any("max_items" in command for command in table.jobs.values())
    assert "--set beam_width=30 --set top_k=30" in table.jobs["beam-30/general-english"]
    assert "max_items=5" in {t.name: t for t in TABLES}["inversion_quality"].jobs["beam-30/general-english"]
    results = {job: Result("inversion", pd.DataFrame({"cosine": [0.8] * 3, "token_f1": [0.2] * 3,
                                                      "seconds": [1.0] * 3}), {}) for job in table.jobs}
    text = render_inversion_full_sets(results)
    assert text.startswith("All 3 sentences of each set,") and text.count("\n| ") == 1 + len(FULL_SET_SETTINGS)
    for r in results.values():
        r.summary["arithmetic"] = {"search": "bf16", "requested": "auto"}
    assert render_inversion_full_sets(results).startswith("All 3 sentences of each set (search arithmetic: bf16),")
    results["beam-30/general-english"] = Result("inversion", pd.DataFrame(
        {"cosine": [0.9] * 5 + [0.8], "token_f1": [0.5] * 5 + [0.0], "seconds": [1.0] * 6}), {})
    results["default/general-english"] = Result("inversion", pd.DataFrame(
        {"cosine": [0.7] * 6, "token_f1": [0.1] * 6, "seconds": [1.0] * 6}), {})
    text = render_inversion_full_sets(results)
    assert ("- `general-english`: with B = K = 30 (the paper's), 5 of 6 sentences reach cosine 0.85. On its "
            "first 5 sentences alone: the defaults cosine 0.700, F1 0.100; B = K = 30 cosine 0.900, F1 0.500.") in text


def test_prompt_penalty_table_runs_its_settings_on_every_sentence():
    """The penalty table: the defaults, ``penalize_prompt=false``, and ``penalize_prompt=false`` with 3
    restarts on every sentence of both sets, and per set the sentences each brings to the paper's cosine;
    the CLI flag reaches the search config."""
    import pandas as pd

    from analyses.inversion import PARAMS, _config
    from analyses.inversion.results_tables import QUALITY_SETTINGS, SETS, TABLES, render_inversion_prompt_penalty
    from workbench.results import Result

    table = {t.name: t for t in TABLES}["inversion_prompt_penalty"]
    settings = ("default", "no-prompt-penalty", "no-prompt-penalty-restarts-3")
    assert set(table.jobs) == {f"{s}/{n}" for s in settings for n in SETS}
    assert not any("max_items" in command for command in table.jobs.values())
    assert table.jobs["no-prompt-penalty/abstract-sentences"].endswith(" --set penalize_prompt=false")
    assert table.jobs["no-prompt-penalty-restarts-3/abstract-sentences"].endswith(
        " --set stages=4 --set penalize_prompt=false")
    assert "penalize_prompt" not in table.jobs["default/abstract-sentences"]
    assert not any("no-prompt-penalty" in s for s in QUALITY_SETTINGS)  # the 5-sentence table keeps its rows
    params = {k: p.default for k, p in PARAMS.items()}
    assert params["penalize_prompt"] is True and _config(params, 0).penalize_prompt is True
    assert _config({**params, "penalize_prompt": False}, 0).penalize_prompt is False
    results = {job: Result("inversion", pd.DataFrame({"cosine": [0.8, 0.86, 0.9], "token_f1": [0.2] * 3,
                                                      "seconds": [1.0] * 3}), {}) for job in table.jobs}
    results["no-prompt-penalty/general-english"].table["cosine"] = [0.9, 0.9, 0.9]
    results["no-prompt-penalty-restarts-3/general-english"].table["cosine"] = [0.7, 0.7, 0.9]
    text = render_inversion_prompt_penalty(results)
    assert text.startswith("All 3 sentences of each set,") and text.count("\n| ") == 4
    assert ("- `general-english`: sentences at cosine ≥ 0.85: 2 of 3 with the defaults, 3 of 3 without the "
            "prompt's penalty, 1 of 3 without it and with 3 restarts.") in text
