"""Resumed forwards (workbench.hooked.forward_logits_at(resume=...)) on the real built-in decoders:
smollm2-135m (Llama) and gemma3-270m (sliding-window and global layers, norms after attention, a
262k vocabulary), and the ablation baseline on the trained attn-only-induction model. A forward that
starts at block l from the clean residual, with an intervention at layer l, must give the full
forward's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.hooked import block_hooks, collect, forward_logits_at, mean_ablation_hook, per_position_mean

pytestmark = pytest.mark.slow

TEXTS = ["When John and Mary went to the shops, John gave the bag to",
         "After the meeting, Alice and Bob walked home and Bob handed a letter to",
         "The war lasted from the year 1732 to the year 17",
         "Paris is the capital of"]


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_resumed_ablation_forward_equals_full_forward_on_real_models(name):
    from workbench.models import load_model

    m = load_model(name, device="cpu", dtype="float32")
    bridge = m.bridge
    seqs = [m.tokenizer(t)["input_ids"] for t in TEXTS]
    positions = [[len(s) - 2, len(s) - 1] for s in seqs]
    n_layers = m.n_layers
    layers = (1, n_layers // 2, n_layers - 1)
    names = [f"blocks.{l}.attn.hook_z" for l in layers] + [f"blocks.{l}.hook_resid_pre" for l in layers]
    acts = collect(bridge, seqs, names, batch_size=3)
    lengths = torch.tensor([len(s) for s in seqs])
    # the kept positions (logits_to_keep) equal the full logits of each prompt alone
    plain = forward_logits_at(bridge, seqs, positions, batch_size=3)
    for seq, pos, got in zip(seqs, positions, plain):
        with torch.no_grad():
            full = bridge(torch.tensor([seq]))[0, pos]
        torch.testing.assert_close(got, full.float(), atol=1e-4, rtol=1e-5)
    for layer in layers:
        z = f"blocks.{layer}.attn.hook_z"
        hooks = [(z, mean_ablation_hook(1, per_position_mean(acts[z], lengths)))]
        full = forward_logits_at(bridge, seqs, positions, batch_size=3, hooks=hooks)
        resumed = forward_logits_at(bridge, seqs, positions, batch_size=3, hooks=hooks,
                                    resume=(layer, acts[f"blocks.{layer}.hook_resid_pre"]))
        assert max(float((a - b).abs().max()) for a, b in zip(full, resumed)) <= 1e-5, (name, layer)
        # and the ablation changed something, so the comparison can fail
        assert max(float((a - b).abs().max()) for a, b in zip(full, plain)) > 1e-3, (name, layer)


def test_resumed_ablation_baseline_equals_full_forwards_on_attn_only_induction():
    from analyses.circuits.ablation import ablation_effects
    from analyses.circuits.tasks import make_task
    from workbench.models import load_model

    m = load_model("attn-only-induction", device="cpu", dtype="float32")
    task = make_task("induction", m.tokenizer, 12, seed=3, period=20)
    for mode in ("mean", "patch"):
        fast = ablation_effects(m.bridge, task, mode=mode, batch_size=5)
        slow = ablation_effects(m.bridge, task, mode=mode, batch_size=5, resume=False)
        assert fast.resumed and not slow.resumed
        np.testing.assert_allclose(fast.effect, slow.effect, atol=1e-6, rtol=0)
        assert np.abs(slow.effect).max() > 1e-2  # some head matters: the comparison can fail
