"""The core's forwards with interventions (workbench.hooked) on a tiny random Llama.

Right-padded batches must give an unpadded forward's values at the real positions; the ablation and
patching hooks must write exactly the head they name; the repeated-token diagnostics must follow
their closed forms and agree between patterns read from the store and a direct forward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.hooked import (REPEAT_SCORES, batches, block_hooks, collect, forward_logits_at, length_order,
                              mean_ablation_hook, model_shape, ordinary_token_ids, pad_right, patch_hook,
                              per_position_mean, repeat_pattern_scores, repeat_scores_table, repeated_random_tokens,
                              run_batched)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEQS = [[2, 5, 6, 7, 8, 9], [2, 10, 11], [2, 12, 13, 14], [2, 15]]


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    from workbench.models import load_model

    return load_model(str(tiny_llama_dir), device="cpu", dtype="float32")


def _single(bridge, seq, names):
    _, cache = bridge.run_with_cache(torch.tensor([seq]), names_filter=lambda n: n in set(names))
    return {n: cache[n][0].float() for n in names}


# ---- padding and batching ----------------------------------------------------------------------
def test_pad_right_batches_and_length_order():
    ids, lengths = pad_right([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and lengths.tolist() == [3, 1]
    assert [(s.start, s.stop) for s in batches(5, 2)] == [(0, 2), (2, 4), (4, 5)]
    assert length_order([3, 1, 2]) == [1, 2, 0]
    with pytest.raises(WorkbenchError):
        pad_right([])
    with pytest.raises(WorkbenchError):
        list(batches(3, 0))


def test_model_shape_and_block_hooks(model):
    assert model_shape(model.bridge) == (2, 4, 32)
    assert block_hooks("attn.hook_z", 2) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert block_hooks("attn.hook_z", model.n_layers) == model.hook_names("attn_z")


# ---- batched forwards ------------------------------------------------------------------------
def test_padded_batches_equal_unpadded_forwards(model):
    bridge = model.bridge
    positions = [list(range(len(s))) for s in SEQS]
    logits = forward_logits_at(bridge, SEQS, positions, batch_size=3)
    for seq, got in zip(SEQS, logits):
        torch.testing.assert_close(got, bridge(torch.tensor([seq]))[0].float(), atol=1e-5, rtol=1e-4)
    seen = [(rows.start, rows.stop, lengths.tolist()) for rows, _, lengths in run_batched(bridge, SEQS, batch_size=3)]
    assert seen == [(0, 3, [6, 3, 4]), (3, 4, [2])]
    with pytest.raises(WorkbenchError, match="position lists"):
        forward_logits_at(bridge, SEQS, positions[:2])


def test_collect_equals_single_forwards_and_zero_past_length(model):
    names = model.hook_names("attn_z") + ["blocks.1.hook_resid_post"]
    acts = collect(model.bridge, SEQS, names, batch_size=3)
    for name in names:
        assert acts[name].shape[:2] == (4, 6)
    for i, seq in enumerate(SEQS):
        single = _single(model.bridge, seq, names)
        for name in names:
            torch.testing.assert_close(acts[name][i, :len(seq)], single[name], atol=1e-5, rtol=1e-4)
            assert not acts[name][i, len(seq):].any()
    with pytest.raises(WorkbenchError, match="store"):
        collect(model.bridge, SEQS, ["blocks.0.attn.hook_pattern"])


def test_per_position_mean_closed_form():
    acts = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # [B, T, e]
    mean = per_position_mean(acts, torch.tensor([3, 1]))
    torch.testing.assert_close(mean[0], (acts[0, 0] + acts[1, 0]) / 2)
    torch.testing.assert_close(mean[1:], acts[0, 1:])  # only prompt 0 is that long


# ---- ablation and patching hooks -------------------------------------------------------------
def test_hooks_write_only_their_head():
    z = torch.randn(2, 3, 4, 5)
    means = torch.randn(6, 4, 5)
    out = mean_ablation_hook(1, means)(z.clone())
    torch.testing.assert_close(out[:, :, 1], means[:3, 1].expand(2, 3, 5))
    torch.testing.assert_close(out[:, :, [0, 2, 3]], z[:, :, [0, 2, 3]])
    source = torch.randn(5, 4, 4, 5)
    out = patch_hook(2, source, slice(3, 5))(z.clone())
    torch.testing.assert_close(out[:, :, 2], source[3:5, :3, 2])
    torch.testing.assert_close(out[:, :, [0, 1, 3]], z[:, :, [0, 1, 3]])


def test_ablation_and_patching_through_forwards(model):
    bridge, name = model.bridge, "blocks.0.attn.hook_z"
    positions = [[len(s) - 1] for s in SEQS]
    clean = forward_logits_at(bridge, SEQS, positions, batch_size=3)
    z = collect(bridge, SEQS, [name], batch_size=3)[name]
    # patching each prompt's head from its own activations changes nothing; batch rows line up
    same = forward_logits_at(bridge, SEQS, positions, batch_size=3,
                             hooks=lambda rows: [(name, patch_hook(1, z, rows))])
    for a, b in zip(clean, same):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # mean ablation over a single prompt replaces its z by itself
    one = per_position_mean(z[:1], torch.tensor([len(SEQS[0])]))
    kept = forward_logits_at(bridge, SEQS[:1], positions[:1], hooks=[(name, mean_ablation_hook(1, one))])
    torch.testing.assert_close(kept[0], clean[0], atol=1e-5, rtol=1e-4)
    # the mean over all prompts changes the others
    lengths = torch.tensor([len(s) for s in SEQS])
    means = per_position_mean(z, lengths)
    ablated = forward_logits_at(bridge, SEQS, positions, hooks=[(name, mean_ablation_hook(1, means))])
    assert max(float((a - b).abs().max()) for a, b in zip(clean, ablated)) > 1e-4


# ---- repeated random tokens --------------------------------------------------------------------
def test_ordinary_token_ids_and_repeated_tokens(model):
    pool = ordinary_token_ids(model.tokenizer)
    assert not set(pool) & set(model.tokenizer.all_special_ids) and len(pool) == len(model.tokenizer) - 4
    assert ordinary_token_ids(model.tokenizer, limit=6) == [4, 5]
    seqs = repeated_random_tokens(pool, 7, period=5, bos=2, seed=3, chunk=3)
    assert len(seqs) == 7 and all(len(s) == 11 and s[0] == 2 and s[1:6] == s[6:] for s in seqs)
    assert all(t in pool for s in seqs for t in s[1:])
    assert seqs == repeated_random_tokens(pool, 7, period=5, bos=2, seed=3, chunk=3)
    assert seqs != repeated_random_tokens(pool, 7, period=5, bos=2, seed=4, chunk=3)
    no_bos = repeated_random_tokens(pool, 2, period=4, seed=3)
    assert all(len(s) == 8 and s[:4] == s[4:] for s in no_bos)


def test_repeat_pattern_scores_closed_forms():
    period, offset = 4, 1
    T = offset + 2 * period
    prev = np.zeros((T, T))
    prev[0, 0] = 1
    prev[np.arange(1, T), np.arange(T - 1)] = 1
    induction = np.eye(T)
    t_rep = np.arange(offset + period, T)
    induction[t_rep] = 0
    induction[t_rep, t_rep - period + 1] = 1
    scores = repeat_pattern_scores(np.stack([prev, induction]), period, offset)
    assert scores.shape == (2, len(REPEAT_SCORES))
    np.testing.assert_allclose(scores[0], [1, 0, 0, 0])
    # induction head: every second-copy query on the token after its earlier occurrence
    assert scores[1, 1] == 1 and scores[1, 2] == 0
    np.testing.assert_allclose(scores[1, 3], (T - 1 - period) / (T - 1))


def test_repeat_scores_from_store_equal_direct_forward(model, store):
    from workbench.data import TokenDataset

    pool = ordinary_token_ids(model.tokenizer)
    seqs = repeated_random_tokens(pool, 6, period=5, bos=2, seed=0, chunk=4)
    hooks = model.hook_names("attn_pattern")
    entry = store.get_or_extract(model, TokenDataset("repeats", seqs), hooks, batch_size=4)
    stored = repeat_scores_table(lambda l, i: entry.attention_pattern(hooks[l], i), len(seqs), len(hooks), 5)
    patterns = model.run_hooks(torch.tensor(seqs), torch.ones(len(seqs), len(seqs[0]), dtype=torch.long), hooks)
    direct = repeat_scores_table(lambda l, i: patterns[hooks[l]][i].numpy(), len(seqs), len(hooks), 5)
    assert list(stored.columns) == ["layer", "head", *REPEAT_SCORES] and len(stored) == 8
    np.testing.assert_allclose(stored[list(REPEAT_SCORES)], direct[list(REPEAT_SCORES)], atol=1e-6)
    assert stored[list(REPEAT_SCORES)].to_numpy().min() >= 0 and stored[list(REPEAT_SCORES)].to_numpy().max() <= 1


# ---- resuming a forward at a block from the clean residual -------------------------------------
def test_resumed_forward_equals_the_full_forward(model):
    bridge = model.bridge
    positions = [[0, len(s) - 1] for s in SEQS]
    residual = collect(bridge, SEQS, block_hooks("hook_resid_pre", 2), batch_size=3)
    lengths = torch.tensor([len(s) for s in SEQS])
    for layer in (0, 1):
        name = f"blocks.{layer}.attn.hook_z"
        means = per_position_mean(collect(bridge, SEQS, [name])[name], lengths)
        hooks = [(name, mean_ablation_hook(2, means))]
        full = forward_logits_at(bridge, SEQS, positions, batch_size=3, hooks=hooks)
        resumed = forward_logits_at(bridge, SEQS, positions, batch_size=3, hooks=hooks,
                                    resume=(layer, residual[f"blocks.{layer}.hook_resid_pre"]))
        for a, b in zip(full, resumed):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # the skipped blocks got their own forward back
    assert not any("forward" in vars(block) for block in bridge.blocks)
    with pytest.raises(WorkbenchError, match="collect it on the same prompts"):
        forward_logits_at(bridge, SEQS, positions, resume=(1, residual["blocks.1.hook_resid_pre"][:2]))
    with pytest.raises(WorkbenchError, match="no negative indices"):
        forward_logits_at(bridge, SEQS, [[-1]] * len(SEQS))


def test_blocks_skipped_restores_the_blocks_after_an_error(model):
    from workbench.hooked import blocks_skipped

    bridge = model.bridge
    ids = torch.tensor([SEQS[0]])
    before = bridge(ids)
    with pytest.raises(RuntimeError, match="inside"):
        with blocks_skipped(bridge, 2):
            assert all("forward" in vars(block) for block in bridge.blocks)
            raise RuntimeError("inside")
    assert not any("forward" in vars(block) for block in bridge.blocks)
    torch.testing.assert_close(bridge(ids), before, atol=0, rtol=0)
