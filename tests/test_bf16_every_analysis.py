"""``dtype=bfloat16`` end to end for every analysis that runs forward passes, on the small built-in models
(attn-only-induction for the decoder analyses, minilm-l6 for embedders, t5-tasks for DecoderLens): each
run completes, records bfloat16 in its manifest and gives finite numbers. How close bf16 comes to fp32
is measured on smollm2-135m in tests/test_dtypes.py."""

import numpy as np
import pytest

from workbench.analysis import get_analysis, list_analyses, run_analysis

pytestmark = pytest.mark.slow

DEC, ENC = "attn-only-induction", "minilm-l6"
TASK = {"task": "induction", "n_examples": 4, "period": 8}
SAE = {"steps": 20, "max_texts": 24, "max_length": 32, "heldout_fraction": 0.25}
CASES = {
    "layer_stats": (DEC, "prompts", {"max_texts": 4, "max_length": 16}),
    "logit_lens": (DEC, "prompts", {"max_texts": 2, "max_length": 16}),
    "geometry": (ENC, "abstracts", {"max_texts": 8, "max_length": 32, "estimators": "svd,cosine,twonn", "n_boot": 0,
                                    "n_boot_spectrum": 0}),
    "projection": (ENC, "abstracts", {"max_texts": 8, "max_length": 32}),
    "layer_quality": (ENC, "abstracts", {"max_texts": 12, "max_length": 32, "aug_texts": 4, "n_augmentations": 2,
                                         "retrieval_pairs": 12}),
    "layer_similarity": (ENC, "abstracts", {"max_texts": 8, "max_length": 32}),
    "outliers": (ENC, "abstracts", {"max_texts": 8, "max_length": 32}),
    "decoder_lens": ("t5-tasks", "seq2seq-tasks", {"layers": "0,3"}),
    "circuits": (DEC, None, {**TASK, "seeds": 1, "n_epochs": 20, "n_sae_examples": 8}),
    "attention_patterns": (DEC, None, {"source": "repeats", "max_texts": 2}),
    "logit_attribution": (DEC, None, TASK),
    "activation_patching": (DEC, None, {**TASK, "patch": "z"}),
    "attribution_patching": (DEC, None, {**TASK, "patch": "z"}),
    "inversion": (ENC, "prompts", {"beam_width": 2, "top_k": 2, "max_steps": 2, "refine_steps": 2, "stages": 1,
                              "max_items": 1}),
    "sae_quality": (ENC, "abstracts", {**SAE, "retrieval_pairs": 16}),
}
SKIPPED = {"tuned_lens": "needs a trained lens of the model in bf16 (the shipped one is fp32 smollm2-135m)",
           "sae_features": "same training path as sae_quality", "sae_families": "same training path as sae_quality",
           "sae_steering": "same training path as sae_quality"}


def test_every_forward_analysis_is_covered():
    forward = {s.name for s in list_analyses()}
    assert forward == set(CASES) | set(SKIPPED), sorted(forward ^ (set(CASES) | set(SKIPPED)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_end_to_end(name, tmp_path):
    from workbench.store import ActivationStore

    model, data, params = CASES[name]
    store = ActivationStore(root=tmp_path / "acts")
    result = run_analysis(name, model=model, data=data, params=params, dtype="bfloat16", device="cpu", store=store)
    assert result.manifest["model"]["dtype"] == "bfloat16", result.manifest["model"]
    numeric = result.table.select_dtypes("number")
    assert len(result.table) and np.isfinite(numeric.to_numpy(dtype=float)[~np.isnan(numeric.to_numpy(dtype=float))]).all()
    assert get_analysis(name)  # registered under that name
