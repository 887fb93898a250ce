"""Per-layer geometry table from in-memory arrays, a cache entry, or one user matrix.

:func:`geometry_table` is the model-free core of the ``geometry`` analysis: give it a list of
(N_l, D) matrices, one per layer, and it returns the long table (one row per layer and estimator).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import pandas as pd

from workbench.errors import WorkbenchError

from workbench.stats import (
    check_array,
    cosine_anisotropy_details,
    covariance_eigenvalues,
    knn_distances,
    mle_details,
    participation_ratio_details,
    pca_dimension_details,
    subsample_rows,
    svd_anisotropy_details,
    twonn_details,
    twonn_microscope_details,
    unique_rows,
)

#: estimator name -> (metric, definition shown in every output)
ESTIMATORS = {
    "svd": ("anisotropy", "sigma_1^2 / sum sigma_i^2 of column-centred representations (LLM-Microscope calculate_anisotropy_torch)"),
    "cosine": ("anisotropy", "mean cosine similarity of random pairs i != j, uncentred (Ethayarajh 2019)"),
    "twonn": ("intrinsic_dimension", "TwoNN (Facco 2017), discard largest fraction of r2/r1, F_i = i/N, as scikit-dimension 0.5.0"),
    "twonn_microscope": ("intrinsic_dimension", "TwoNN, LLM-Microscope variant: fit on the smallest 1/reduction_factor of the ratios"),
    "mle_mg": ("intrinsic_dimension", "MLE (Levina-Bickel 2005), k neighbours, MacKay-Ghahramani averaging 1/mean(1/m_k)"),
    "mle_mean": ("intrinsic_dimension", "MLE (Levina-Bickel 2005), k neighbours, plain mean of pointwise m_k"),
    "pca": ("intrinsic_dimension", "linear dimension: number of principal components for the given share of variance"),
    "participation_ratio": ("intrinsic_dimension", "participation ratio (sum lambda)^2 / sum lambda^2 of the covariance spectrum"),
}
DEFAULT_ESTIMATORS = "svd,cosine,twonn,twonn_microscope,mle_mg,pca,participation_ratio"

KNN_ESTIMATORS = {"twonn", "twonn_microscope", "mle_mg", "mle_mean"}


def parse_estimators(spec) -> list[str]:
    """'svd,twonn' or a list -> validated list of estimator names (order kept)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    bad = [n for n in names if n not in ESTIMATORS]
    if bad or not names:
        raise WorkbenchError(f"Unknown estimator(s) {bad or spec!r}; choose from {', '.join(ESTIMATORS)}.")
    return list(dict.fromkeys(names))


def layer_geometry_rows(
    X,
    estimators: Iterable[str],
    *,
    max_points: int = 5000,
    max_points_spectrum: int = 0,
    n_boot: int = 50,
    n_boot_spectrum: int = 20,
    ci_level: float = 0.95,
    seed: int = 0,
    mle_k: int = 20,
    discard_fraction: float = 0.1,
    reduction_factor: int = 5,
    pca_variance: float = 0.9,
    n_pairs: int = 10_000,
) -> list[dict]:
    """All requested estimators on one (N, D) matrix -> list of row dicts (no layer columns).

    kNN estimators run on a seeded subsample of ``max_points`` rows and share one neighbour search;
    SVD anisotropy and the PCA dimensions use ``max_points_spectrum`` rows (0 = all rows).
    """
    X = check_array(X, min_rows=2)
    est = parse_estimators(list(estimators))
    rows = []

    def row(name, value, lo, hi, n_points, n_dup, extra=None):
        metric, definition = ESTIMATORS[name]
        label = f"pca_{int(round(pca_variance * 100))}" if name == "pca" else name
        rows.append({
            "metric": metric, "estimator": label, "value": float(value),
            "ci_low": float(lo), "ci_high": float(hi), "n_points": int(n_points),
            "n_duplicates_removed": int(n_dup), "definition": definition,
            **(extra or {}),
        })

    spec_idx = subsample_rows(X.shape[0], max_points_spectrum, seed)
    Xs = X if spec_idx is None else X[spec_idx]
    ev = None
    if "svd" in est:
        d = svd_anisotropy_details(Xs, n_boot=n_boot_spectrum, ci_level=ci_level, seed=seed)
        row("svd", d.value, d.ci_low, d.ci_high, d.n_points, 0, {"isotropic_baseline": d.isotropic_baseline})
    if "cosine" in est:
        d = cosine_anisotropy_details(X, n_pairs=n_pairs, seed=seed, n_boot=n_boot, ci_level=ci_level)
        row("cosine", d.value, d.ci_low, d.ci_high, d.n_points, 0, {"n_pairs": d.n_pairs})
    if "pca" in est or "participation_ratio" in est:
        ev = covariance_eigenvalues(Xs)
        if "pca" in est:
            d = pca_dimension_details(Xs, variance=pca_variance, eigenvalues=ev)
            row("pca", d.value, d.ci_low, d.ci_high, d.n_points, 0)
        if "participation_ratio" in est:
            d = participation_ratio_details(Xs, eigenvalues=ev)
            row("participation_ratio", d.value, d.ci_low, d.ci_high, d.n_points, 0)

    knn_est = [e for e in est if e in KNN_ESTIMATORS]
    if knn_est:
        idx = subsample_rows(X.shape[0], max_points, seed)
        Xk = X if idx is None else X[idx]
        n_given = Xk.shape[0]
        Xu, n_dup = unique_rows(Xk)
        k = max(2, mle_k if {"mle_mg", "mle_mean"} & set(knn_est) else 2)
        if Xu.shape[0] <= k:
            raise WorkbenchError(
                f"Only {Xu.shape[0]} distinct points ({n_dup} duplicates removed): too few for k={k} "
                "neighbours. Use more texts or token-level representations.")
        dists = knn_distances(Xu, k)
        common = dict(n_boot=n_boot, ci_level=ci_level, seed=seed, knn=dists)
        for name in knn_est:
            if name == "twonn":
                d = twonn_details(Xu, discard_fraction, **common)
            elif name == "twonn_microscope":
                d = twonn_microscope_details(Xu, reduction_factor, **common)
            else:
                d = mle_details(Xu, mle_k, "mackay_ghahramani" if name == "mle_mg" else "mean", **common)
            row(name, d.value, d.ci_low, d.ci_high, n_given, n_dup)
    order = {n: i for i, n in enumerate(est)}
    rows.sort(key=lambda r: order.get(r["estimator"] if not r["estimator"].startswith("pca_") else "pca", 99))
    return rows


def geometry_table(
    layers: list,
    *,
    n_layers: int | None = None,
    layer_ids: list[int] | None = None,
    model: str = "vectors",
    progress: Callable[[int, int, str], None] | None = None,
    estimators=DEFAULT_ESTIMATORS,
    **kwargs,
) -> pd.DataFrame:
    """Long table for a stack of layers: one row per (layer, estimator).

    ``layers``: list of (N_l, D) matrices, or of zero-argument callables returning one (loaded
    lazily, one layer in memory at a time). ``n_layers`` (number of blocks L) sets
    ``depth = layer / L``; None gives depth NaN (a single matrix has no depth).
    """
    est = parse_estimators(estimators)
    layer_ids = list(range(len(layers))) if layer_ids is None else list(layer_ids)
    out = []
    for j, (lid, item) in enumerate(zip(layer_ids, layers)):
        if progress:
            progress(j, len(layers), f"layer {lid}: geometry")
        X = item() if callable(item) else item
        for r in layer_geometry_rows(X, est, **kwargs):
            out.append({"model": model, "layer": lid,
                        "depth": lid / n_layers if n_layers else math.nan, **r})
    if progress:
        progress(len(layers), len(layers), "done")
    return pd.DataFrame(out)
