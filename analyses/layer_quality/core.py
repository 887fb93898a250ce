"""Per-layer computation: arrays in, one row of named metrics out.

:func:`layer_row` is the only place that decides which metric gets which array; the analysis feeds it
from the activation store, the benchmark from the store or from random arrays, a user from anything.
Every metric is timed (seconds accumulate in ``timings[metric]``).

Inputs for one layer:

- ``prompts``: the token states of each prompt, ``[len_i, D]`` (prompt entropy, curvature, and the
  prompt vectors when ``pooled`` is not given);
- ``pooled``: prompt vectors ``[n_prompts, D]`` (dataset entropy, effective rank, TwoNN; also works
  on user-supplied sentence embeddings);
- ``views``: ``[n_prompts, n_augmentations, D]`` pooled states of augmented copies (LiDAR uses all;
  InfoNCE and DiME use copies 0 and 1). View vectors are L2-normalised.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import contextmanager

import numpy as np

from workbench.stats import l2_normalize, twonn

from . import metrics as M

#: metric columns, in table order (names used in tables, figures and summaries)
METRIC_COLUMNS = ("prompt_entropy", "dataset_entropy", "effective_rank", "curvature", "infonce",
                  "infonce_mi_lower_bound", "lidar", "dime", "twonn")
#: how figures name the columns (panel titles, hover text)
METRIC_LABELS = {"prompt_entropy": "prompt entropy", "dataset_entropy": "dataset entropy",
                 "effective_rank": "effective rank", "curvature": "curvature", "infonce": "InfoNCE loss",
                 "infonce_mi_lower_bound": "InfoNCE MI lower bound", "lidar": "LiDAR", "dime": "DiME",
                 "twonn": "TwoNN intrinsic dim.", "probe_accuracy": "probe accuracy", "retrieval_mrr": "retrieval MRR",
                 "retrieval_recall_at_1": "retrieval R@1"}
#: the metrics a user-supplied matrix of sentence vectors supports
VECTOR_METRICS = ("dataset_entropy", "effective_rank", "twonn")
POOLINGS = ("mean", "normalized_mean", "first_last")

DEFAULT_METRIC_PARAMS = {
    "alpha": 1.0, "normalization": "maxEntropy", "clamp": False, "curvature": "paper",
    "pooling": "mean", "skip_first": False, "temperature": 0.1, "dime_permutations": 10,
    "lidar_delta": 1e-4, "seed": 0,
}


@contextmanager
def timed(timings: dict | None, name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


def pool(Z: np.ndarray, pooling: str = "mean", skip_first: bool = False) -> np.ndarray:
    """Prompt vector from token states Z [len, D] -> [D] (float64).

    ``mean``: plain mean (the newer reference wrapper); ``normalized_mean``: mean of the centred,
    row-normalised tokens (the older reference code). ``skip_first`` drops position 0 (BOS /
    attention-sink "massive activations") when the prompt has more than one token.
    """
    Z = np.asarray(Z, dtype=np.float64)  # first_last: the layers are combined before pooling (a plain mean)
    if skip_first and Z.shape[0] > 1:
        Z = Z[1:]
    if pooling == "normalized_mean":
        Z = M.normalize_rows(Z)
    return Z.mean(axis=0)


def layer_row(prompts: Iterable[np.ndarray] | None = None, pooled: np.ndarray | None = None,
              views: np.ndarray | None = None, *, params: dict | None = None,
              timings: dict | None = None, metrics: Iterable[str] | None = None) -> dict:
    """All metrics computable from the given arrays for one layer, as ``{column: value}``.

    ``params`` (see ``DEFAULT_METRIC_PARAMS``): alpha, normalization, clamp (prompt/dataset entropy
    only: the reference quirk), curvature variant, pooling, skip_first, temperature, dime_permutations,
    lidar_delta, seed. ``metrics`` restricts the columns computed. Metrics whose input is missing are
    NaN.
    """
    p = {**DEFAULT_METRIC_PARAMS, **(params or {})}
    wanted = set(metrics or METRIC_COLUMNS)
    row: dict = {c: float("nan") for c in METRIC_COLUMNS if c in wanted}
    alpha, norm = p["alpha"], p["normalization"]

    if prompts is not None:
        ents, curvs, vecs = [], [], []
        for Z in prompts:
            Z = np.asarray(Z, dtype=np.float64)
            Zt = Z[1:] if p["skip_first"] and Z.shape[0] > 1 else Z
            if "prompt_entropy" in wanted:
                with timed(timings, "prompt_entropy"):
                    ents.append(float("nan") if Zt.shape[0] < 2 else
                                M.representation_entropy(Zt, alpha, norm, clamp=p["clamp"]))
            if "curvature" in wanted:
                with timed(timings, "curvature"):
                    curvs.append(M.curvature(Zt, p["curvature"]))
            if pooled is None:
                with timed(timings, "pooling"):
                    vecs.append(pool(Zt, p["pooling"]))
        if ents:
            row["prompt_entropy"] = float(np.nanmean(ents)) if np.isfinite(ents).any() else float("nan")
        if curvs:
            row["curvature"] = float(np.nanmean(curvs)) if np.isfinite(curvs).any() else float("nan")
        if pooled is None and vecs:
            pooled = np.stack(vecs)
        row["n_prompts"] = len(ents) or len(curvs) or len(vecs)

    if pooled is not None:
        pooled = np.asarray(pooled, dtype=np.float64)
        row.setdefault("n_prompts", int(pooled.shape[0]))
        if "dataset_entropy" in wanted:
            with timed(timings, "dataset_entropy"):
                row["dataset_entropy"] = M.dataset_entropy(pooled, alpha, norm, clamp=p["clamp"])
        if "effective_rank" in wanted:
            with timed(timings, "effective_rank"):
                row["effective_rank"] = M.effective_rank(pooled)
        if "twonn" in wanted:
            with timed(timings, "twonn"):
                row["twonn"] = twonn(pooled)  # scikit-dimension convention, from the shared core

    if views is not None:
        V = l2_normalize(views)
        A, B = V[:, 0], V[:, 1]
        if wanted & {"infonce", "infonce_mi_lower_bound"}:
            with timed(timings, "infonce"):
                loss, bound = M.infonce(A, B, p["temperature"], normalize=False)
            row.update({k: v for k, v in (("infonce", loss), ("infonce_mi_lower_bound", bound)) if k in wanted})
        if "lidar" in wanted:
            with timed(timings, "lidar"):
                row["lidar"] = M.lidar(V, alpha, norm, delta=p["lidar_delta"])
        if "dime" in wanted:
            with timed(timings, "dime"):
                row["dime"] = M.dime(A, B, alpha, norm, n_permutations=int(p["dime_permutations"]),
                                     seed=int(p["seed"]), normalize=False)
    return row
