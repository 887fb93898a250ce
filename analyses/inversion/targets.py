"""Target vectors of known texts, read from the activation store.

The inversion's targets are activations of a dataset, so they come from the store
(:mod:`workbench.store`), extracted once and then cached: the sentence embedding at the
``sentence_embedding`` hook (the model's own pooling and normalisation), or for a layer ``l`` the
mean over each text's tokens of the residual hook ``resid_hook(l)`` (``CacheEntry.mean_pooled``).
The store tokenises as :func:`workbench.hooked.embed_texts` does (the tokenizer's defaults, special
tokens included, truncated by the tokenizer at ``max_length``), which embeds the candidates, so
targets and candidates are embedded the same way (equal to about 1e-6; tests/test_inversion.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from workbench.data import TextDataset
from workbench.models import SENTENCE_EMBEDDING, resid_hook


def target_hook(layer: int | None) -> str:
    """The store hook of a target: the sentence embedding (``None``) or the residual at ``layer``."""
    return SENTENCE_EMBEDDING if layer is None else resid_hook(int(layer))


def read_targets(entry, layers: Sequence[int | None]) -> dict[int | None, np.ndarray]:
    """``{layer: float32 [n_texts, D]}`` (in memory, writable) from a store entry holding every
    ``target_hook(layer)``."""
    return {layer: np.array(entry.layer(SENTENCE_EMBEDDING) if layer is None else entry.mean_pooled(target_hook(layer)),
                            dtype=np.float32) for layer in layers}


def context_targets(ctx, dataset, layers: Sequence[int | None], max_length: int) -> dict[int | None, np.ndarray]:
    """Targets of ``dataset`` through the run's store (``ctx.activations``, recorded in the manifest)."""
    entry = ctx.activations([target_hook(layer) for layer in dict.fromkeys(layers)], max_length=max_length,
                            dataset=dataset)
    return read_targets(entry, layers)


def store_targets(model, texts: list[str], layers: Sequence[int | None], max_length: int,
                  store=None) -> dict[int | None, np.ndarray]:
    """Targets of ``texts`` outside an analysis run (scripts, benchmarks), through the same store path."""
    from workbench.analysis import RunContext

    ctx = RunContext("inversion", {}, model=model, store=store)
    return context_targets(ctx, TextDataset.from_texts(list(texts), name="inversion-targets"), layers, max_length)
