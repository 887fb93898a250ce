"""WhiteningBERT's layer combination and the representation transforms in the layer-quality run
(docs/methods.md, "Outliers, whitening and layer similarity").

- ``pooling = "first_last"`` (WhiteningBERT, Huang et al. 2021): the token states of layer
  ``combine_layer`` (default 1, the first block's output; 0 = the embeddings) and of layer l are averaged
  before mean pooling, so the row of the last layer is WhiteningBERT's first-last combination. Mean
  pooling is linear: the pooled average equals the average of the two pooled vectors.
- ``transform`` (``workbench.stats.transform_params``): the topic probe and the retrieval are scored a
  second time on transformed vectors, beside the untransformed scores (``*_transformed`` columns). The
  transform is fit per layer on the vectors it is applied to (the probe's texts; the queries and
  documents together), or on the named ``transform_fit`` set pooled the same way.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from workbench.errors import WorkbenchError
from workbench.retrieval import retrieval_scores
from workbench.stats.transform_params import LayerTransform

from .core import pool, timed
from .downstream import topic_probe

TRANSFORMED_COLUMNS = ("probe_accuracy_transformed", "probe_accuracy_std_transformed",
                       "retrieval_recall_at_1_transformed", "retrieval_mrr_transformed")


def combine_hook(hooks: list[str], p: dict) -> str | None:
    """The hook whose states ``first_last`` pooling averages in (None for the other poolings)."""
    if p["pooling"] != "first_last":
        return None
    layer = int(p["combine_layer"])
    if not 0 <= layer < len(hooks):
        raise WorkbenchError(f"combine_layer {layer} is out of range: the model has layers 0..{len(hooks) - 1}.")
    return hooks[layer]


def pooled(entry, hook: str, p: dict, first: str | None = None) -> np.ndarray:
    """Prompt vectors [n_texts, D] of an entry, position 0 left out with ``skip_first``: the store's
    ``mean_pooled`` for ``mean``; ``normalized_mean`` centres each text first (per text, so by hand);
    ``first_last`` averages the pooled vectors of ``first`` and ``hook``."""
    skip = p["skip_first"]
    if p["pooling"] == "first_last":
        return (entry.mean_pooled(first, skip_first=skip) + entry.mean_pooled(hook, skip_first=skip)) / 2
    if p["pooling"] == "mean":
        return entry.mean_pooled(hook, skip_first=skip)
    return np.stack([pool(Z, p["pooling"], skip) for _, Z in entry.iter_texts(hook)])


def prompt_states(entry, hook: str, first: str | None) -> Iterator[np.ndarray]:
    """Each prompt's token states [len_i, D] at ``hook``, averaged with ``first``'s for ``first_last``."""
    if first is None:
        return (Z for _, Z in entry.iter_texts(hook))
    return ((np.asarray(A, np.float64) + np.asarray(B, np.float64)) / 2
            for (_, A), (_, B) in zip(entry.iter_texts(first), entry.iter_texts(hook)))


def transformed_downstream(lt: LayerTransform, layer: int, probe: tuple | None, retrieval: tuple | None,
                           p: dict, seed: int, timings: dict) -> dict:
    """The ``*_transformed`` scores of one layer: ``probe`` = (X [N, D], labels), ``retrieval`` = (Q, D)."""
    row = {}
    if not lt.active:
        return row
    if probe is not None:
        X, labels = probe
        with timed(timings, "probe_transformed"):
            row["probe_accuracy_transformed"], row["probe_accuracy_std_transformed"] = topic_probe(
                lt(layer, X, "probe"), labels, n_splits=int(p["probe_folds"]), seed=seed)
    if retrieval is not None:
        Q, D = retrieval
        with timed(timings, "retrieval_transformed"):
            both = np.vstack([Q, D])
            row["retrieval_recall_at_1_transformed"], row["retrieval_mrr_transformed"] = retrieval_scores(
                lt(layer, Q, "retrieval", fit=both), lt(layer, D, "retrieval", fit=both))
    return row


def before_after(table, lt: LayerTransform) -> dict:
    """The transform's record and, per score, the untransformed and transformed value at the last layer and
    the mean change over layers (for the summary)."""
    out = lt.summary()
    if not lt.active:
        return out
    last = table[table["layer"] == table["layer"].max()].iloc[0]
    scores = {}
    for col in ("probe_accuracy", "retrieval_recall_at_1", "retrieval_mrr"):
        after = f"{col}_transformed"
        if after in table and table[after].notna().any():
            scores[col] = {"last_layer_before": float(last[col]), "last_layer_after": float(last[after]),
                           "mean_change_over_layers": float((table[after] - table[col]).mean())}
    out["scores"] = scores
    return out
