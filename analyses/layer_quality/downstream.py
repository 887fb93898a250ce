"""Downstream quality of a layer's sentence vectors, and how the unsupervised metrics track it.

- :func:`topic_probe`: cross-validated logistic-regression accuracy on labelled vectors.
- :func:`retrieval_scores`: recall@1 and MRR of query -> document retrieval by cosine similarity
  (title -> abstract on the sample abstracts).
- :func:`metric_correlations`: Spearman correlation of each metric with probe accuracy over layers.
- :func:`best_vs_last`: does an intermediate layer beat the last beyond one standard error?
- :func:`recommend_layer`: the best layer by a downstream score, with the reason in words.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from workbench.errors import WorkbenchError
from workbench.retrieval import retrieval_scores  # noqa: F401  (moved to the core)


def topic_probe(X, labels, *, n_splits: int = 5, seed: int = 0, C: float = 1.0,
                max_iter: int = 500) -> tuple[float, float]:
    """Mean and standard deviation over folds of the accuracy of a logistic-regression probe.

    X: [N, D] vectors, labels: N labels. Standardised features, multinomial L2-regularised logistic
    regression (``C``), stratified ``n_splits``-fold cross-validation shuffled with ``seed``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(labels)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise WorkbenchError(f"topic probe needs X [N, D] and N labels; got X {X.shape}, {y.shape[0]} labels.")
    _, counts = np.unique(y, return_counts=True)
    if counts.size < 2:
        raise WorkbenchError("the topic probe needs at least 2 different labels.")
    if counts.min() < n_splits:
        raise WorkbenchError(
            f"every label needs at least {n_splits} texts for {n_splits}-fold cross-validation; the "
            f"smallest has {counts.min()}. Drop rare labels or lower probe_folds.")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    # one BLAS thread: lbfgs multiplies small matrices (N x D by D x classes), where a second
    # OpenBLAS thread costs more than it gives (31 layers of smollm2-135m on the topics set: 25 s
    # against 175 s on a quiet 2-core machine). It also makes the accuracy the same on every
    # machine: the thread count changes the rounding, and where lbfgs stops at max_iter that moves
    # the accuracy by up to one test text of a fold (0.0023 on that run)
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(model, X, y, cv=cv)
    return float(scores.mean()), float(scores.std())


def metric_correlations(table: pd.DataFrame, target: str, metrics: list[str]) -> dict[str, float]:
    """Spearman rank correlation across layers of each metric column with ``target`` (NaN where a
    column is constant or has fewer than 3 finite layers)."""
    from scipy.stats import spearmanr

    out = {}
    for m in metrics:
        if m not in table or target not in table:
            continue
        sub = table[[m, target]].astype(float).dropna()
        if len(sub) < 3 or sub[m].nunique() < 2 or sub[target].nunique() < 2:
            out[m] = float("nan")
            continue
        out[m] = float(spearmanr(sub[m], sub[target]).statistic)
    return out


def best_vs_last(table: pd.DataFrame, col: str, se_col: str | None = None, *, layer_col: str = "layer",
                 se_divisor: float = 1.0) -> dict | None:
    """The paper's central question for one downstream score: does an intermediate layer beat the last?

    ``col``: the score per layer (higher is better). The best layer's standard error is
    ``table[se_col] / se_divisor`` (the probe's fold std / sqrt(k); the MRR's own standard error with
    divisor 1), 0 without ``se_col``. Layers scoring within one standard error of the best are not
    separated from it by the data; the best beats the last *beyond one standard error* only when the
    last layer is not among them. None when the table has no finite ``col``.

    Returns ``{"score", "best_layer", "best", "last_layer", "last", "gain", "se", "within_one_se",
    "intermediate_beats_last", "beats_last_beyond_one_se"}``.
    """
    if col not in table or not table[col].notna().any():
        return None
    keep = [layer_col, col] + ([se_col] if se_col and se_col in table else [])
    t = table[keep].dropna(subset=[col])
    last = int(table[layer_col].max())
    best_row = t.loc[t[col].idxmax()]
    best, best_v = int(best_row[layer_col]), float(best_row[col])
    last_rows = t[t[layer_col] == last]
    last_v = float(last_rows[col].iloc[0]) if len(last_rows) else float("nan")
    se = float(best_row[se_col]) / se_divisor if se_col and se_col in t else 0.0
    close = [int(x) for x in t.loc[t[col] >= best_v - se, layer_col]]
    beats = best != last and best_v > last_v
    return {"score": col, "best_layer": best, "best": best_v, "last_layer": last, "last": last_v,
            "gain": best_v - last_v, "se": se, "within_one_se": close, "intermediate_beats_last": bool(beats),
            "beats_last_beyond_one_se": bool(beats and last not in close)}


_CLAIM_LABELS = {"probe": "topic probe", "retrieval": "retrieval MRR"}


def claim_sentence(claim: dict) -> str:
    """The summary's ``intermediate_vs_last`` in one line for the page: each score's best layer (± its
    standard error) against the last layer, and the verdict."""
    parts = []
    for key, v in claim.items():
        head = (f"{_CLAIM_LABELS.get(key, key)}: layer {v['best_layer']} {v['best']:.3f} ± {v['se']:.3f} vs the "
                f"last layer ({v['last_layer']}) {v['last']:.3f}")
        verdict = ("an intermediate layer beats the last beyond one standard error" if v["beats_last_beyond_one_se"]
                   else "the gain is within one standard error" if v["intermediate_beats_last"]
                   else "the last layer is best")
        parts.append(f"{head}: {verdict}")
    return "Intermediate vs last layer. " + "; ".join(parts) + "." if parts else ""


def recommend_layer(table: pd.DataFrame, *, layer_col: str = "layer", probe_folds: int = 5) -> dict:
    """Pick the best layer by topic-probe accuracy, else by retrieval MRR; say why.

    Returns ``{"best_layer", "criterion", "reason", "last_layer", "best_minus_last",
    "intermediate_beats_last", "beats_last_beyond_one_se", "within_one_se"}``. Layers whose mean
    accuracy is within one standard error (fold std / sqrt(k)) of the best are listed: the data do
    not separate them; a best layer that beats the last by less than that is not called a clear win
    (:func:`best_vs_last`). The MRR fallback keeps its old rule (no standard error) so that a
    recommendation made without a probe does not change meaning.
    """
    last = int(table[layer_col].max())
    for col, sd_col, label in (("probe_accuracy", "probe_accuracy_std", "topic-probe accuracy"),
                               ("retrieval_mrr", None, "title->abstract retrieval MRR")):
        v = best_vs_last(table, col, sd_col, layer_col=layer_col, se_divisor=float(np.sqrt(probe_folds)))
        if v is None:
            continue
        best, best_v, last_v, close = v["best_layer"], v["best"], v["last"], v["within_one_se"]
        reason = (f"layer {best} has the highest {label} ({best_v:.3f}); the last layer ({last}) has "
                  f"{last_v:.3f}" + (f", {best_v - last_v:+.3f}" if np.isfinite(last_v) else "") + ".")
        if sd_col and len(close) > 1:
            reason += f" Layers within one standard error of the best: {close}."
        if v["intermediate_beats_last"] and not v["beats_last_beyond_one_se"] and sd_col:
            reason += " The gain over the last layer is within one standard error: not a clear win."
        return {"best_layer": best, "criterion": col, "reason": reason, "last_layer": last,
                "best_minus_last": best_v - last_v, "intermediate_beats_last": v["intermediate_beats_last"],
                "beats_last_beyond_one_se": v["beats_last_beyond_one_se"] if sd_col else None,
                "within_one_se": close}
    return {"best_layer": None, "criterion": None, "last_layer": last, "best_minus_last": None,
            "intermediate_beats_last": None, "beats_last_beyond_one_se": None, "within_one_se": [],
            "reason": "no labelled or paired data was given, and the unsupervised metrics alone do not "
                      "identify the best layer reliably; add probe or retrieval data."}
