"""The load check run on every decoder load: the hooked path and the KV-cache path against plain
transformers (see :func:`load_check`). Imports torch, so :mod:`.loading` imports it only when it
loads weights.
"""

from __future__ import annotations

import warnings

import torch

from .loaded import LoadedModel
from .loading import LOAD_CHECK_NEW_TOKENS, LOAD_CHECK_TOLERANCE, LOGIT_CHECK_TEXT


@torch.no_grad()
def plain_logits(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    ids = model.tokenizer(LOGIT_CHECK_TEXT, return_tensors="pt")["input_ids"].to(model.input_device)
    return ids, model.hf_model(input_ids=ids).logits.float()


@torch.no_grad()
def load_check(model: LoadedModel, ids: torch.Tensor, plain: torch.Tensor) -> dict:
    """Check on every load that both decoder paths behave like plain transformers.

    1. Hooked path: the bridge's logits against the plain full forward (taken before the bridge was
       booted) on the same ids, as log-probs (``logprob_max_abs_diff``).
    2. KV-cache path of ``model.hf_model`` (what generation and the inversion proposer use): the
       logits of one cached step against the full forward (``kv_step_max_abs_diff``), and
       :data:`LOAD_CHECK_NEW_TOKENS` greedy tokens from ``generate`` against greedy decoding by
       repeated full forwards of the bridge (``kv_greedy_match``).

    The tolerance follows the dtype (:data:`LOAD_CHECK_TOLERANCE`; recorded as ``tolerance``). Past
    it a warning is raised and ``kv_cache_ok`` is False; paths that need the KV cache refuse such a
    model (:meth:`LoadedModel.require_kv_cache`). In half precision greedy tokens may differ where
    two candidates are closer than the rounding, so there only the logit tolerance is required.
    """
    tol = LOAD_CHECK_TOLERANCE[model.dtype]
    hooked = model.bridge(ids).float()
    logprob_diff = float((hooked.log_softmax(-1) - plain.log_softmax(-1)).abs().max())
    if logprob_diff > tol:
        warnings.warn(f"{model.name}: hooked log-probs differ from plain transformers by {logprob_diff:.2e} "
                      f"(tolerance {tol:g} in {model.dtype}); results may not match the plain model.")
    hf = model.hf_model
    first = hf(input_ids=ids[:, :-1], use_cache=True)
    step = hf(input_ids=ids[:, -1:], past_key_values=first.past_key_values, use_cache=True).logits.float()
    kv_diff = float((step[0, -1] - plain[0, -1]).abs().max())
    generated = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=LOAD_CHECK_NEW_TOKENS,
                            min_new_tokens=LOAD_CHECK_NEW_TOKENS, do_sample=False,
                            pad_token_id=model.tokenizer.pad_token_id)
    greedy_kv = generated[0, ids.shape[1]:].tolist()
    seq = ids
    for _ in range(LOAD_CHECK_NEW_TOKENS):
        seq = torch.cat([seq, model.bridge(seq)[:, -1].argmax(-1, keepdim=True).to(seq.device)], 1)
    greedy_full = seq[0, ids.shape[1]:].tolist()
    match = greedy_kv == greedy_full
    kv_ok = kv_diff <= tol and (match or model.dtype != "float32")
    if not kv_ok:
        warnings.warn(f"{model.name}: the KV-cache path disagrees with a full forward (one cached step differs by "
                      f"{kv_diff:.3g}; greedy tokens {greedy_kv} vs {greedy_full}); generation would be wrong.")
    return {"logprob_max_abs_diff": logprob_diff, "logit_max_abs_diff": float((hooked - plain).abs().max()),
            "kv_step_max_abs_diff": kv_diff, "kv_greedy_tokens": greedy_kv, "kv_greedy_match": match,
            "kv_cache_ok": bool(kv_ok), "tolerance": tol, "dtype": model.dtype, "device": model.device,
            "logit_check_text": LOGIT_CHECK_TEXT}
