"""Node and edge scores from discrete SAE codes, and how to score a predicted circuit.

Follows ``charlieoneill11/sae-circuits`` @10fd2e7 (``src/node.py``, ``src/edge.py``,
``src/common_utils.py``; docs/methods.md, "SAE circuits"):

- node: ``U_h = |{c(e,h): e positive} minus {c(e,h): e negative}|``, then a softmax over all heads
  (flattened [n_layers, n_heads]); no threshold.
- edge: for each ordered head pair, the number of code pairs ``(c1, c2)`` that co-occur on some
  positive example and on no negative one (pairs of a head with itself are 0). Pairs are sorted by
  ``np.argsort(flat)[::-1]`` (as the official code), flattened into a list of heads
  ``[h1, h2, h1', h2', ...]``, the first ``k = n_heads_per_layer**2 // 2`` entries are counted per
  head, and the counts go through ``exp(x) / sum(exp(x))``. (The official ``k`` uses the number of
  heads *per layer*: 72 for GPT-2 small.)
- scoring against a reference mask: ROC-AUC (sklearn), the paper's "F1" which is the harmonic mean
  of TPR and TNR maximised over thresholds (``tpr_tnr_hmean``; not the precision/recall F1), and
  true precision / recall / F1 at that threshold and at ``k = |reference|``.
"""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax of a flat vector (max-subtracted, as ``common_utils.softmax``)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def unique_positive_codes(codes: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per head, how many codes occur on positives but never on negatives (and the reverse).

    ``codes`` int [n_examples, n_heads]; ``is_positive`` bool [n_examples].
    Returns (unique_to_positive, unique_to_negative), int64 [n_heads] each.
    """
    codes = np.asarray(codes)
    pos = np.asarray(is_positive, dtype=bool)
    n_heads = codes.shape[1]
    up = np.zeros(n_heads, dtype=np.int64)
    un = np.zeros(n_heads, dtype=np.int64)
    for h in range(n_heads):
        p = set(codes[pos, h].tolist())
        n = set(codes[~pos, h].tolist())
        up[h] = len(p - n)
        un[h] = len(n - p)
    return up, un


def node_scores(codes: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(softmax-normalised node score, raw unique-to-positive count), float64/int64 [n_heads]."""
    up, _ = unique_positive_codes(codes, is_positive)
    return softmax(up.astype(np.float64)), up


def unique_cooccurrences(codes: np.ndarray, is_positive: np.ndarray, n_features: int) -> np.ndarray:
    """``score[h1, h2]`` = #code pairs (c1, c2) co-occurring on a positive and on no negative example.

    Sparse equivalent of the official dense ``C[h1, h2, c1, c2]`` counts (which would not fit for
    hundreds of heads): each (pair, code pair) becomes one int64 key. Diagonal is 0. int64 [H, H].
    """
    codes = np.asarray(codes, dtype=np.int64)
    pos = np.asarray(is_positive, dtype=bool)
    n_heads = codes.shape[1]
    pair_index = np.arange(n_heads * n_heads, dtype=np.int64).reshape(n_heads, n_heads)
    f2 = np.int64(n_features) ** 2

    def keys(block: np.ndarray) -> np.ndarray:
        if block.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        pair_code = block[:, :, None] * n_features + block[:, None, :]  # [E, H, H]
        return np.unique((pair_index[None] * f2 + pair_code).ravel())

    pos_keys, neg_keys = keys(codes[pos]), keys(codes[~pos])
    only_pos = pos_keys[~np.isin(pos_keys, neg_keys, assume_unique=True)]
    counts = np.bincount(only_pos // f2, minlength=n_heads * n_heads).reshape(n_heads, n_heads)
    np.fill_diagonal(counts, 0)
    return counts


def edge_node_scores(cooc: np.ndarray, n_heads_per_layer: int, k: int | None = None) -> np.ndarray:
    """Node scores from the edge method (official ``edge_circuit_prediction``), float64 [H]."""
    n_heads = cooc.shape[0]
    k = (n_heads_per_layer ** 2) // 2 if k is None else int(k)
    order = np.argsort(cooc.flatten())[::-1]
    h1, h2 = np.unravel_index(order, cooc.shape)
    flat_heads = np.stack([h1, h2], axis=1).ravel()[:k]
    y = np.bincount(flat_heads, minlength=n_heads).astype(np.float64)
    return np.exp(y) / np.exp(y).sum()


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """sklearn ROC-AUC; ``None`` when the reference has only one class."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true, dtype=bool)
    if y_true.all() or not y_true.any():
        return None
    return float(roc_auc_score(y_true, y_score))


def circuit_scores(y_true: np.ndarray, y_score: np.ndarray) -> dict:
    """ROC-AUC, the paper's "F1" (best harmonic mean of TPR and TNR), true precision/recall.

    Returns a JSON-able dict: ``roc_auc``; ``tpr_tnr_hmean`` (what the paper calls F1) and its
    threshold; ``precision``, ``recall``, ``f1`` of the set ``score >= that threshold``;
    ``precision_at_k``/``recall_at_k`` for the top-k heads with k = number of reference heads.
    """
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true, dtype=bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    out: dict = {"n_reference": int(y_true.sum()), "n_heads": int(y_true.size), "roc_auc": roc_auc(y_true, y_score)}
    if out["roc_auc"] is None:
        return out
    fpr, tpr, thr = roc_curve(y_true, y_score)
    with np.errstate(invalid="ignore", divide="ignore"):
        hmean = np.nan_to_num(2 * tpr * (1 - fpr) / (tpr + (1 - fpr)))
    best = int(np.argmax(hmean))
    pred = y_score >= thr[best]
    tp = int((pred & y_true).sum())
    precision = tp / max(1, int(pred.sum()))
    recall = tp / int(y_true.sum())
    k = int(y_true.sum())
    top = np.zeros_like(y_true)
    top[np.argsort(-y_score, kind="stable")[:k]] = True
    tp_k = int((top & y_true).sum())
    out.update({
        "tpr_tnr_hmean": float(hmean[best]),
        "threshold": float(thr[best]) if np.isfinite(thr[best]) else None,
        "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
        "n_predicted": int(pred.sum()),
        "precision_at_k": tp_k / k, "recall_at_k": tp_k / k,
    })
    return out


def top_k(scores: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices of the ``k`` largest scores, ties broken by index (as ``DataFrame.nlargest``)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either side is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def agreement(scores: np.ndarray, reference: np.ndarray, k: int = 10) -> dict:
    """How one head ranking agrees with a reference effect over the same heads (both ``[n_heads]``):
    ``spearman`` and ``top_k_shared`` (heads in both top-``k`` lists, of ``k``)."""
    shared = np.intersect1d(top_k(scores, k), top_k(reference, k))
    return {"spearman": spearman(scores, reference), "top_k_shared": int(shared.size), "k": int(k)}


def seed_stability(per_seed: np.ndarray, k: int = 10) -> dict | None:
    """Seed-to-seed stability of per-seed head scores ``[n_seeds, n_heads]``: over every pair of
    seeds, the mean (and min) number of shared top-``k`` heads and the mean Spearman correlation.
    None for a single seed."""
    per_seed = np.asarray(per_seed, dtype=np.float64)
    n = per_seed.shape[0]
    if n < 2:
        return None
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    shared = [agreement(per_seed[i], per_seed[j], k) for i, j in pairs]
    rhos = [s["spearman"] for s in shared if s["spearman"] is not None]
    counts = [s["top_k_shared"] for s in shared]
    return {"n_pairs": len(pairs), "k": int(k), "top_k_shared_mean": float(np.mean(counts)),
            "top_k_shared_min": int(min(counts)), "spearman_mean": float(np.mean(rhos)) if rhos else None}
