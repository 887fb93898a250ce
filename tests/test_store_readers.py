"""The store as the one reader: layer accessors, rows by index, token-id datasets, attention
patterns and float16 storage, each against a direct forward of the tiny model."""

import numpy as np
import pytest
import torch

from workbench.data import TextDataset, TokenDataset
from workbench.errors import WorkbenchError
from workbench.models import load_model, resid_hook
from workbench.store import ActivationStore

TEXTS = ["the cat sat on the mat", "a dog", "paris is the capital of france and a big city", "red blue green"]


@pytest.fixture()
def tiny(tiny_llama_dir):
    return load_model(str(tiny_llama_dir))


def test_layer_accessors(tiny, store):
    entry = store.get_or_extract(tiny, TextDataset.from_texts(TEXTS), tiny.resid_hooks())
    h = resid_hook(2)
    full = entry.layer(h)
    assert full.dtype == np.float32 and full.shape == (entry.n_tokens, tiny.d_model)
    skipped = entry.layer(h, skip_first=True)
    keep = entry.position_ids() != 0
    np.testing.assert_array_equal(skipped, full[keep])
    np.testing.assert_array_equal(np.concatenate(list(entry.layer_chunks(h, skip_first=True))), skipped)
    index = np.array([5, 0, entry.n_tokens - 1, 3])
    np.testing.assert_array_equal(entry.rows(h, index), full[index])
    stacked = entry.stack(tiny.resid_hooks())
    assert stacked.shape == (tiny.n_layers + 1, entry.n_tokens, tiny.d_model)
    np.testing.assert_array_equal(stacked[2], full)
    pooled = entry.mean_pooled(h, skip_first=True)
    np.testing.assert_allclose(pooled[0], full[1:entry.offsets[1]].mean(0), rtol=1e-6)


def test_token_dataset_is_keyed_by_content_and_adds_no_special_tokens(tiny, store):
    seqs = [[5, 6, 7, 8, 9], [10, 11, 12]]
    ds = TokenDataset("ids", seqs)
    entry = store.get_or_extract(tiny, ds, [resid_hook(1)])
    assert [entry.token_ids(i).tolist() for i in range(2)] == seqs
    direct = tiny.run_hooks(torch.tensor([seqs[0]]), torch.ones(1, 5, dtype=torch.long), [resid_hook(1)])
    np.testing.assert_allclose(entry.text_activations(resid_hook(1), 0), direct[resid_hook(1)][0].numpy(), atol=1e-6)
    again = store.get_or_extract(tiny, TokenDataset("other name", seqs), [resid_hook(1)])
    assert again.key == entry.key and not again.extracted
    assert TokenDataset("x", [[1, 2]]).content_hash != TextDataset.from_texts(["x"]).content_hash
    with pytest.raises(WorkbenchError, match="empty"):
        TokenDataset("x", [[1], []])


def test_attention_patterns_are_stored_per_text(tiny, store):
    hook = "blocks.1.attn.hook_pattern"
    entry = store.get_or_extract(tiny, TextDataset.from_texts(TEXTS), [hook, resid_hook(1)], batch_size=2)
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([entry.token_ids(i).tolist()])
        _, cache = tiny.bridge.run_with_cache(ids, names_filter=lambda n: n == hook)
        pattern = entry.attention_pattern(hook, i)
        np.testing.assert_allclose(pattern, cache[hook][0].numpy(), atol=1e-6)
        np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(WorkbenchError, match="attention patterns"):
        entry.layer(hook)


def test_float16_store_halves_the_disk_and_reads_float32(tiny, tmp_path):
    ds = TextDataset.from_texts(TEXTS)
    full = ActivationStore(root=tmp_path / "a").get_or_extract(tiny, ds)
    half_store = ActivationStore(root=tmp_path / "a", dtype="float16")
    half = half_store.get_or_extract(tiny, ds)
    assert half.key != full.key and half.meta["dtype"] == "float16"
    a, b = full.layer(resid_hook(2)), half.layer(resid_hook(2))
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-3)
    size = lambda e: sum(f["bytes"] for n, f in e.meta["files"].items() if n.startswith("shard"))
    assert size(half) < 0.55 * size(full)


def test_float16_store_refuses_activations_beyond_its_range(tiny, tmp_path, monkeypatch):
    """A residual past 65,504 would be stored as inf: the extraction stops with the fix and leaves nothing."""
    original = tiny.run_hooks

    def huge(ids, mask, hooks):
        acts = original(ids, mask, hooks)
        acts[resid_hook(1)] = acts[resid_hook(1)] * 1e6
        return acts

    monkeypatch.setattr(tiny, "run_hooks", huge)
    store = ActivationStore(root=tmp_path / "a", dtype="float16")
    with pytest.raises(WorkbenchError, match="beyond float16's range.*float32"):
        store.get_or_extract(tiny, TextDataset.from_texts(TEXTS))
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".tmp")] and store.entries() == []
    # float32 keeps them
    entry = ActivationStore(root=tmp_path / "a").get_or_extract(tiny, TextDataset.from_texts(TEXTS))
    assert np.abs(entry.layer(resid_hook(1))).max() > 65_504


def test_batches_are_sized_in_tokens(tiny, tmp_path):
    store = ActivationStore(root=tmp_path / "a", batch_tokens=12)
    calls = []
    original = tiny.run_hooks

    def counting(ids, mask, hooks):
        calls.append(tuple(ids.shape))
        return original(ids, mask, hooks)

    tiny.run_hooks = counting
    try:
        entry = store.get_or_extract(tiny, TextDataset.from_texts(TEXTS), batch_size=8)
    finally:
        tiny.run_hooks = original
    assert all(b * t <= 12 or b == 1 for b, t in calls) and len(calls) > 1
    reference = ActivationStore(root=tmp_path / "b").get_or_extract(tiny, TextDataset.from_texts(TEXTS))
    np.testing.assert_allclose(entry.layer(resid_hook(2)), reference.layer(resid_hook(2)), atol=1e-6)


def test_out_of_memory_halves_the_batch_and_says_so(tiny, tmp_path):
    store = ActivationStore(root=tmp_path / "a", batch_tokens=64)
    original = tiny.run_hooks

    def small_device(ids, mask, hooks):  # a device that holds at most 16 tokens a forward
        if ids.numel() > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(ids, mask, hooks)

    tiny.run_hooks = small_device
    try:
        with pytest.warns(UserWarning, match="Out of memory: batches are halved"):
            entry = store.get_or_extract(tiny, TextDataset.from_texts(TEXTS), batch_size=8)
    finally:
        tiny.run_hooks = original
    assert entry.meta["batch"]["max_batch_tokens"] <= 16 and entry.meta["batch"]["halved_on_out_of_memory"] >= 2
    reference = ActivationStore(root=tmp_path / "b").get_or_extract(tiny, TextDataset.from_texts(TEXTS))
    np.testing.assert_allclose(entry.layer(resid_hook(2)), reference.layer(resid_hook(2)), atol=1e-6)
