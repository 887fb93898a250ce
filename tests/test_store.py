"""Activation store: correctness, cache hits without a forward pass, atomicity and fault handling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import TextDataset
from workbench.errors import WorkbenchError
from workbench.models import load_model, resid_hook
from workbench.store import ActivationStore

WORKER = Path(__file__).with_name("_store_worker.py")
TEXTS = ["the cat sat on the mat", "a dog", "paris is the capital of france and a big city",
         "one two three four five", "red blue green"]


@pytest.fixture()
def tiny(tiny_llama_dir):
    return load_model(str(tiny_llama_dir))


def test_extraction_equals_unbatched_forward(tiny, store):
    ds = TextDataset.from_texts(TEXTS)
    hooks = tiny.resid_hooks() + ["blocks.1.attn.hook_z", "blocks.0.hook_mlp_out"]
    entry = store.get_or_extract(tiny, ds, hooks, batch_size=2)
    assert entry.n_texts == 5 and entry.hooks == hooks
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([tiny.tokenizer(text)["input_ids"]])
        direct = tiny.run_hooks(ids, torch.ones_like(ids), hooks)
        assert entry.token_ids(i).tolist() == ids[0].tolist()
        for h in hooks:
            np.testing.assert_allclose(entry.text_activations(h, i), direct[h][0].numpy(), atol=1e-5)
    pooled = entry.mean_pooled(resid_hook(2))
    np.testing.assert_allclose(pooled[2], entry.text_activations(resid_hook(2), 2).mean(0), rtol=1e-5)
    assert entry.tokens(resid_hook(1)).shape == (entry.n_tokens, 32)
    assert isinstance(entry.shards()[0][resid_hook(1)], np.memmap)
    # shards are standard safetensors: the reference reader sees the same tensors
    from safetensors import safe_open

    shard = entry.path / entry.meta["shards"][0]["file"]
    with safe_open(str(shard), "np") as handle:
        for h in hooks:
            np.testing.assert_array_equal(handle.get_tensor(h), entry.shards()[0][h])


def test_second_request_is_a_hit_without_forward(tiny, store, monkeypatch):
    ds = TextDataset.from_texts(TEXTS)
    first = store.get_or_extract(tiny, ds)

    def boom(*a, **k):
        raise AssertionError("forward pass on a cache hit")

    monkeypatch.setattr(tiny, "run_hooks", boom)
    second = ActivationStore(root=store.root).get_or_extract(tiny, ds)
    assert second.key == first.key
    np.testing.assert_array_equal(second.tokens(resid_hook(2)), first.tokens(resid_hook(2)))


def test_key_depends_on_settings(tiny, store):
    ds = TextDataset.from_texts(TEXTS)
    keys = {store.key_for(tiny, ds, tiny.resid_hooks(), 64, None),
            store.key_for(tiny, ds, tiny.resid_hooks(), 32, None),
            store.key_for(tiny, ds, tiny.resid_hooks(), 64, True),
            store.key_for(tiny, ds, tiny.resid_hooks()[:2], 64, None),
            store.key_for(tiny, TextDataset.from_texts(TEXTS[:4]), tiny.resid_hooks(), 64, None)}
    assert len(keys) == 5


def test_bos_handling(tiny, store):
    ds = TextDataset.from_texts(["the cat"])
    with_bos = store.get_or_extract(tiny, ds, prepend_bos=True)
    without = store.get_or_extract(tiny, ds, prepend_bos=False)
    assert with_bos.token_ids(0)[0] == tiny.tokenizer.bos_token_id
    assert without.token_ids(0)[0] != tiny.tokenizer.bos_token_id
    assert with_bos.lengths[0] == without.lengths[0] + 1
    assert with_bos.token_strings(0)[0] == "<s>"


def test_truncation_warns(tiny, store):
    ds = TextDataset.from_texts([" ".join(["cat"] * 50), "dog"])
    with pytest.warns(UserWarning, match="1 of 2 texts were longer than 8 tokens"):
        entry = store.get_or_extract(tiny, ds, max_length=8)
    assert entry.lengths.tolist()[0] == 8


def test_a_run_reports_truncation_once_whether_it_extracts_or_reads_the_cache(tiny, store):
    """The store's warning and the run's own line said the same thing twice on a cache miss (six yellow
    boxes on the Layer quality page for three text sets); a run now records one line per text set."""
    from workbench.analysis import run_analysis

    ds = TextDataset.from_texts([" ".join(["cat"] * 50), "dog", " ".join(["mat"] * 20)])
    with pytest.warns(UserWarning, match="2 of 3 texts were longer"):  # the store's, for library users
        miss = run_analysis("layer_stats", model=tiny, data=ds, params={"max_length": 8}, store=store)
    hit = run_analysis("layer_stats", model=tiny, data=ds, params={"max_length": 8}, store=store)
    assert hit.manifest["cache"][0]["hit"] and not miss.manifest["cache"][0]["hit"]
    for res in (miss, hit):
        lines = [w for w in res.manifest["warnings"] if "longer than 8 tokens" in w]
        assert lines == [f"2 of 3 texts of {ds.name} were longer than 8 tokens and were truncated (raise "
                         f"max_length, up to the model's {tiny.max_length})."], res.manifest["warnings"]
    # at the model's own limit there is nothing to raise: the line says so instead
    at_limit = TextDataset.from_texts([" ".join(["cat"] * (tiny.max_length + 5))])
    with pytest.warns(UserWarning, match="the model's limit"):
        res = run_analysis("layer_stats", model=tiny, data=at_limit, params={"max_length": tiny.max_length}, store=store)
    assert [w for w in res.manifest["warnings"] if "truncated" in w] == [
        f"1 of 1 texts of {at_limit.name} were longer than {tiny.max_length} tokens and were truncated (the model's "
        "limit; split longer texts to keep their ends)."]


def test_bad_hook_writes_nothing(tiny, store):
    ds = TextDataset.from_texts(TEXTS)
    with pytest.raises(WorkbenchError, match="no hook"):
        store.get_or_extract(tiny, ds, ["blocks.9.hook_resid_post"])
    assert store.entries() == [] and not [p for p in store.root.iterdir() if p.is_dir()]


def test_corrupt_shard_is_detected_and_rebuilt(tiny, tmp_path):
    ds = TextDataset.from_texts(TEXTS * 4)
    root = tmp_path / "acts"
    store = ActivationStore(root=root, shard_bytes=2048)
    entry = store.get_or_extract(tiny, ds, batch_size=2)
    assert len(entry.meta["shards"]) > 2
    reference = entry.tokens(resid_hook(1)).copy()
    shard = entry.path / entry.meta["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # flip one byte, same size
    shard.write_bytes(bytes(data))
    fresh = ActivationStore(root=root, shard_bytes=2048)
    assert "checksum" in fresh.verify(entry.key)
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = fresh.get_or_extract(tiny, ds, batch_size=2)
    np.testing.assert_array_equal(rebuilt.tokens(resid_hook(1)), reference)
    assert fresh.verify(entry.key) is None
    # a truncated shard is caught by its size alone
    shard = rebuilt.path / rebuilt.meta["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-100])
    assert "truncated" in ActivationStore(root=root).verify(entry.key)


def test_lru_eviction(tiny, tmp_path):
    store = ActivationStore(root=tmp_path / "acts")
    a = store.get_or_extract(tiny, TextDataset.from_texts(TEXTS, name="a"))
    time.sleep(0.05)
    b = store.get_or_extract(tiny, TextDataset.from_texts(TEXTS[1:4], name="b"))
    time.sleep(0.05)
    store.open(a.key).close()  # a is now the most recently used
    a.close(), b.close()  # an entry still open is never evicted (tested below)
    store.max_bytes = max(r["bytes"] for r in store.entries()) + 1
    evicted = store.evict()
    assert evicted == [b.key]
    assert [r["key"] for r in store.entries()] == [a.key]


def _worker(model_dir, root, n, sleep, out):
    return subprocess.Popen([sys.executable, str(WORKER), str(model_dir), str(root), str(n), str(sleep), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_writer_leaves_no_entry_and_next_run_completes(tiny_llama_dir, tmp_path):
    root = tmp_path / "acts"
    out = tmp_path / "w1.json"
    proc = _worker(tiny_llama_dir, root, 40, 0.3, out)
    deadline = time.time() + 60
    while not Path(str(out) + ".started").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # a few batches and shards written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ActivationStore(root=root).entries() == []  # nothing visible
    assert list(root.glob(".tmp-*")), "the killed writer's temporary folder should be there"
    out2 = tmp_path / "w2.json"
    proc2 = _worker(tiny_llama_dir, root, 40, 0.0, out2)
    assert proc2.wait(timeout=120) == 0, proc2.stderr.read().decode()[-2000:]
    result = json.loads(out2.read_text())
    store = ActivationStore(root=root)
    assert [r["key"] for r in store.entries()] == [result["key"]]
    assert store.verify(result["key"]) is None
    assert not list(root.glob(".tmp-*")), "stale temporary folders are removed"


def test_two_concurrent_extractions_make_one_entry(tiny_llama_dir, tmp_path):
    root = tmp_path / "acts"
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = [_worker(tiny_llama_dir, root, 24, 0.2, o) for o in outs]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read().decode()[-2000:]
    results = [json.loads(o.read_text()) for o in outs]
    assert results[0]["key"] == results[1]["key"]
    # exactly one of them ran the forward passes; the other found the finished entry
    assert sorted(r["forward_calls"] for r in results)[0] == 0
    # and only that one says it extracted: the one that waited on the lock reused the entry
    assert sorted(r["extracted"] for r in results) == [False, True]
    store = ActivationStore(root=root)
    assert len(store.entries()) == 1 and store.verify(results[0]["key"]) is None


def test_prefix_and_hook_subset_are_served_from_a_larger_entry(tiny, store, tmp_path, monkeypatch):
    """A run on the first N texts (and some of the hooks) reuses an entry that holds them: no forward,
    the same arrays as extracting them alone, a view whose every accessor stops at N."""
    texts = TEXTS + [" ".join(["cat"] * 50)]
    hooks = tiny.resid_hooks() + ["blocks.0.attn.hook_pattern"]
    big = ActivationStore(root=store.root, shard_bytes=4096)  # several shards, so the cut falls inside one
    full = big.get_or_extract(tiny, TextDataset.from_texts(texts), hooks, max_length=16, batch_size=2)
    assert len(full.meta["shards"]) >= 2 and full.meta["shards"][0]["text_end"] > 3 and full.meta["n_truncated"] == 1

    def boom(*a, **k):
        raise AssertionError("forward pass although a covering entry exists")

    want = [resid_hook(1), resid_hook(2), "blocks.0.attn.hook_pattern"]
    monkeypatch.setattr(tiny, "run_hooks", boom)
    view = big.get_or_extract(tiny, TextDataset.from_texts(texts[:3], name="first3"), want, max_length=16)
    monkeypatch.undo()
    assert not view.extracted and view.key == full.key and view.meta["view"]["first_texts"] == 3
    assert view.n_texts == 3 and view.hooks == want and view.meta["n_truncated"] == 0
    assert view.n_tokens == int(full.offsets[3]) and view.meta["dataset_name"] == "first3"
    alone = ActivationStore(root=tmp_path / "alone").get_or_extract(
        tiny, TextDataset.from_texts(texts[:3]), want, max_length=16, batch_size=2)
    for h in want[:2]:
        np.testing.assert_allclose(view.layer(h), alone.layer(h), atol=1e-6)
        np.testing.assert_allclose(view.mean_pooled(h), alone.mean_pooled(h), atol=1e-6)
        assert sum(len(a) for _, a in view.iter_shards(h)) == view.n_tokens
    np.testing.assert_allclose(view.attention_pattern(want[2], 2), alone.attention_pattern(want[2], 2), atol=1e-6)
    assert [view.token_strings(i) for i in range(3)] == [alone.token_strings(i) for i in range(3)]
    assert view.position_ids().shape == (view.n_tokens,)
    with pytest.raises(WorkbenchError, match="out of range"):
        view.token_ids(3)
    with pytest.raises(WorkbenchError, match="no hook"):
        view.layer(resid_hook(3))
    # the truncated text counts in a view that includes it
    assert big.get_or_extract(tiny, TextDataset.from_texts(texts), want, max_length=16).meta["n_truncated"] == 1


def test_a_different_text_or_setting_is_not_served_from_a_larger_entry(tiny, store):
    store.get_or_extract(tiny, TextDataset.from_texts(TEXTS), max_length=16)
    other = store.get_or_extract(tiny, TextDataset.from_texts(["the cat sat on the hat", "a dog"]), max_length=16)
    assert other.extracted and "view" not in other.meta
    shorter = store.get_or_extract(tiny, TextDataset.from_texts(TEXTS[:2]), max_length=8)
    assert shorter.extracted
    bos = store.get_or_extract(tiny, TextDataset.from_texts(TEXTS[:2]), max_length=16, prepend_bos=True)
    assert bos.extracted
    assert not store.get_or_extract(tiny, TextDataset.from_texts(TEXTS[1:3]), max_length=16).meta.get("view")
