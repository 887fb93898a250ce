"""Model loading, hooks and fingerprints on tiny random models built from configs."""

import numpy as np
import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.models import load_model, resid_hook, hook_layer


def test_resid_hook_names_round_trip():
    assert resid_hook(0) == "blocks.0.hook_resid_pre"
    assert resid_hook(3) == "blocks.2.hook_resid_post"
    assert [hook_layer(resid_hook(l)) for l in range(5)] == list(range(5))
    with pytest.raises(WorkbenchError):
        resid_hook(-1)


def test_tiny_decoder_is_hooked_and_matches_transformers(tiny_llama_dir):
    m = load_model(str(tiny_llama_dir))
    assert m.kind == "decoder" and m.n_layers == 2 and m.d_model == 32 and m.n_heads == 4
    assert m.load_report["logprob_max_abs_diff"] < 1e-4
    assert m.resid_hooks() == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    ids = torch.tensor([[5, 6, 7, 8]])
    acts = m.run_hooks(ids, torch.ones_like(ids), m.resid_hooks() + ["blocks.1.attn.hook_z"])
    with torch.no_grad():
        hs = m.hf_model(input_ids=ids, output_hidden_states=True).hidden_states
    # layers 0..L-1 equal HF hidden states; HF's last entry has the final norm applied, ours does not
    for layer in range(m.n_layers):
        torch.testing.assert_close(acts[resid_hook(layer)], hs[layer], atol=1e-5, rtol=1e-5)
    normed = m.hf_model.model.norm(acts[resid_hook(2)])
    torch.testing.assert_close(normed, hs[2], atol=1e-5, rtol=1e-5)
    assert acts["blocks.1.attn.hook_z"].shape == (1, 4, 4, 8)


def test_right_padding_does_not_change_decoder_activations(tiny_llama_dir):
    m = load_model(str(tiny_llama_dir))
    short = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 1, 1], [8, 9, 10, 11, 12]])
    a = m.run_hooks(short, torch.ones_like(short), m.resid_hooks())
    b = m.run_hooks(padded, torch.ones_like(padded), m.resid_hooks())
    for h in m.resid_hooks():
        torch.testing.assert_close(a[h][0], b[h][0, :3], atol=1e-5, rtol=1e-5)


def test_encoder_hidden_states_and_sentence_embedding(tiny_bert_dir):
    m = load_model(str(tiny_bert_dir))
    assert m.kind == "encoder" and m.n_layers == 2
    ids = torch.tensor([[2, 5, 6, 3, 1], [2, 7, 8, 9, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    acts = m.run_hooks(ids, mask, m.resid_hooks() + ["sentence_embedding"])
    last = acts[resid_hook(2)]
    expected = (last[0, :4]).mean(0)  # mean over real tokens only
    torch.testing.assert_close(acts["sentence_embedding"][0], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(WorkbenchError, match="decoder-only"):
        m.hook_names("attn_z")


def test_fingerprint_changes_with_weights(tiny_llama_dir, tmp_path):
    import shutil
    from transformers import AutoModelForCausalLM

    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    a = load_model(str(copy)).fingerprint
    model = AutoModelForCausalLM.from_pretrained(copy)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    model.save_pretrained(copy)
    from workbench.models import clear_loaded

    clear_loaded()
    b = load_model(str(copy)).fingerprint
    assert a != b and a.endswith(":float32")


def test_unknown_model_offline_names_builtins():
    with pytest.raises(WorkbenchError, match="smollm2-135m"):
        load_model("nobody/does-not-exist-model")


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(WorkbenchError, match="config.json"):
        load_model(str(tmp_path))
