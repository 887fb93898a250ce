"""Forward passes a back-end runs itself: interventions, generation and embedding of new texts.

Activations of a dataset come from the store (:mod:`workbench.store`). Everything here is for inputs
the store cannot hold in advance: patched or ablated runs, KV-cache generation, and candidate texts
that only exist during a search. One place for batching and padding, hooks, ablation and patching,
generation, and the embedding of texts, so that each is written once.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from .errors import WorkbenchError

Hook = tuple[str, Callable]


# ---- batching and padding ----------------------------------------------------------------------
def pad_right(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> (ids int64 [B, T], lengths int64 [B]).

    With causal attention and right padding the real tokens never attend to the pads, so their
    activations equal an unpadded forward; every statistic must skip positions ``>= lengths``.
    """
    if not seqs:
        raise WorkbenchError("No prompts to run: the input produced an empty prompt set.")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, lengths


def batches(n: int, batch_size: int) -> Iterable[slice]:
    """Consecutive slices of at most ``batch_size`` over ``range(n)``."""
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def length_order(lengths: list[int]) -> list[int]:
    """Indices sorted by length, so that a batch of neighbours wastes little compute on padding."""
    return sorted(range(len(lengths)), key=lambda i: lengths[i])


# ---- embedding texts ---------------------------------------------------------------------------
@torch.inference_mode()
def embed_texts(model, texts: list[str], layer: int | None = None, batch_size: int = 64,
                max_length: int | None = None) -> torch.Tensor:
    """Embeddings float32 ``[N, D]`` of new texts, the way the store embeds a dataset.

    ``layer=None``: the model's sentence embedding (its own pooling and normalisation, as
    sentence-transformers); ``layer=l``: the mean over real tokens of hidden state ``l``
    (0 = embeddings). Texts are tokenised with the tokenizer's defaults (special tokens included)
    and truncated by the tokenizer at ``max_length`` (default the model's), then batched by length.
    """
    if model.kind != "encoder":
        raise WorkbenchError(f"{model.name} is a {model.kind}, not a sentence embedder; use e.g. minilm-l6.")
    texts = list(texts)
    if not texts:
        return torch.zeros((0, model.d_model))
    limit = int(min(max_length or model.max_length, model.max_length))
    ids = model.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
    order = length_order([len(i) for i in ids])
    out = []
    for part in batches(len(order), batch_size):
        chunk = order[part]
        enc = model.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
        mask = enc["attention_mask"].to(model.input_device)
        res = model.hf_model(input_ids=enc["input_ids"].to(model.input_device), attention_mask=mask,
                             output_hidden_states=layer is not None)
        if layer is None:
            out.append(model.pool(res.last_hidden_state, mask).cpu())
        else:
            states = res.hidden_states[layer].float()
            m = mask.unsqueeze(-1).to(states.dtype)
            out.append(((states * m).sum(1) / m.sum(1).clamp(min=1)).cpu())
    pooled = torch.cat(out).float()
    result = torch.empty_like(pooled)
    result[torch.tensor(order)] = pooled
    return result


def embed_numpy(model, texts: list[str], **kwargs) -> np.ndarray:
    """:func:`embed_texts` as a numpy array."""
    return embed_texts(model, texts, **kwargs).numpy()
