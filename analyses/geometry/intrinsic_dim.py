"""Intrinsic-dimension estimators on an (N, D) point cloud.

Every estimator has a plain form returning a float and a ``*_details`` form returning a dataclass
(value, point counts, duplicates removed, optional bootstrap interval). All of them first drop exact
duplicate rows (a zero nearest-neighbour distance makes the kNN estimators undefined); the number
removed is reported as ``n_duplicates_removed``, and no estimate is ever NaN or inf.

Estimators (see shared/METHODS.md section 3):

``twonn`` -- TwoNN, Facco et al. 2017, exactly as ``skdim.id.TwoNN(discard_fraction=0.1)``
    (scikit-dimension 0.5.0): ``mu_i = r2/r1``, sort, keep the ``n = int(N(1 - f))`` smallest,
    ``F_i = i/N``, least squares through the origin of ``-log(1 - F)`` on ``log mu``.
``twonn_microscope`` -- the LLM-Microscope variant (Razzhigaev et al., ``intrinsic_dimension``):
    ratios with ``mu <= 1 + 1e-8`` (and points with r1 < 1e-8 after scaling by the mean norm) are
    dropped but offset the empirical CDF, ``F_i = (i + u)/(n + u)``, and the fit uses only the
    smallest ``n // reduction_factor`` ratios (20% by default, not 90%).
``mle`` -- Levina & Bickel 2005 with k neighbours: ``m_k(x) = (k-1) / sum_{j<k} log(T_k/T_j)``
    (``k-2`` if ``unbiased``); global estimate by MacKay & Ghahramani's averaging of inverses
    ``1/mean(1/m_k)`` (default, as ``skdim.id.MLE()``) or the plain Levina-Bickel mean.
``pca_dimension`` -- number of principal components needed for ``variance`` (0.9) of the variance.
``participation_ratio`` -- ``(sum lambda)^2 / sum lambda^2`` of the covariance eigenvalues.

Bootstrap intervals of the kNN estimators resample points with replacement while holding the
neighbour graph fixed (resampling the pointwise statistics mu_i or 1/m_k(x_i)); re-running the kNN
on a resample would create exact duplicates. Intervals of the PCA-based dimensions resample rows
and recompute the spectrum (cost n_boot * N * D^2; off unless asked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workbench.errors import WorkbenchError

from ._common import Details, as_matrix, percentile_ci, unique_rows
from .neighbors import knn_distances
from .spectrum import covariance_eigenvalues


@dataclass
class IDDetails(Details):
    value: float
    estimator: str
    n_points: int  # rows given
    n_duplicates_removed: int
    n_used: int  # points entering the final fit / average
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    n_boot: int = 0
    params: dict = field(default_factory=dict)
    pointwise: np.ndarray = field(default=None, repr=False)  # mu_i or m_k(x_i)


def _prepare(X, min_points: int):
    X = as_matrix(X, min_rows=1)
    n_given = X.shape[0]
    X, n_dup = unique_rows(X)
    if X.shape[0] < min_points:
        raise WorkbenchError(
            f"Need at least {min_points} distinct points; got {X.shape[0]} "
            f"({n_dup} duplicates removed from {n_given})."
        )
    return X, n_given, n_dup


# ---------------------------------------------------------------- TwoNN (scikit-dimension form)


def twonn_from_mu(mu: np.ndarray, discard_fraction: float = 0.1) -> float:
    """TwoNN slope from the ratios mu = r2/r1 (any order, all finite and >= 1)."""
    mu = np.sort(np.asarray(mu, dtype=np.float64))
    N = mu.size
    n_keep = int(N * (1 - discard_fraction))  # same expression as skdim, same rounding
    if n_keep < 2:
        raise WorkbenchError(f"TwoNN needs more points: only {n_keep} ratios left after discarding.")
    x = np.log(mu[:n_keep])
    y = -np.log(1.0 - np.arange(1, n_keep + 1) / N)
    sxx = float(x @ x)
    if sxx == 0.0:
        raise WorkbenchError("TwoNN undefined: all distance ratios r2/r1 equal 1 (lattice-like data).")
    return float((x @ y) / sxx)


def twonn(X, discard_fraction: float = 0.1) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017; scikit-dimension 0.5.0 convention) of X (N, D)."""
    return twonn_details(X, discard_fraction=discard_fraction).value


def twonn_details(
    X,
    discard_fraction: float = 0.1,
    *,
    n_boot: int = 0,
    ci_level: float = 0.95,
    seed: int = 0,
    knn: np.ndarray | None = None,
) -> IDDetails:
    """TwoNN with counts and an optional bootstrap interval.

    ``knn``: precomputed ascending neighbour distances (N_unique, >=2) of the de-duplicated X, to
    share one neighbour search between estimators (see :func:`knn_distances`).
    """
    if not 0 <= discard_fraction < 1:
        raise WorkbenchError(f"discard_fraction must be in [0, 1); got {discard_fraction}.")
    X, n_given, n_dup = _prepare(X, 3)
    d = knn_distances(X, 2) if knn is None else knn
    mu = d[:, 1] / d[:, 0]
    value = twonn_from_mu(mu, discard_fraction)
    out = IDDetails(
        value, "twonn", n_given, n_dup, int(mu.size * (1 - discard_fraction)),
        n_boot=int(n_boot), params={"discard_fraction": discard_fraction}, pointwise=mu,
    )
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        reps = [twonn_from_mu(mu[rng.integers(0, mu.size, mu.size)], discard_fraction) for _ in range(n_boot)]
        out.ci_low, out.ci_high = percentile_ci(np.array(reps), ci_level)
    return out


# ------------------------------------------------------------ TwoNN, LLM-Microscope variant


def _microscope_from_mu(mu: np.ndarray, reduction_factor: int, eps: float = 1e-8) -> float:
    """LLM-Microscope's fit; ``mu`` holds -1 for points flagged r1 < eps."""
    mu = np.sort(np.asarray(mu, dtype=np.float64))
    useless = int((mu <= 1 + eps).sum())
    mu = mu[useless:]
    n = mu.size
    f_emp = np.arange(1 + useless, n + 1 + useless) / (n + useless)
    num = min(n // reduction_factor, n - 1)
    if num < 1:
        raise WorkbenchError("LLM-Microscope TwoNN needs more points (fewer than 1 ratio in the fit).")
    x = np.log(mu[:num])
    y = -np.log(1.0 - f_emp[:num])
    sxx = float(x @ x)
    if sxx == 0.0:
        raise WorkbenchError("LLM-Microscope TwoNN undefined: all fitted ratios equal 1.")
    return float((x * y).sum() / sxx)


def twonn_microscope(X, reduction_factor: int = 5) -> float:
    """LLM-Microscope TwoNN variant (fit on the smallest 1/reduction_factor of the ratios)."""
    return twonn_microscope_details(X, reduction_factor=reduction_factor).value


def twonn_microscope_details(
    X,
    reduction_factor: int = 5,
    *,
    n_boot: int = 0,
    ci_level: float = 0.95,
    seed: int = 0,
    knn: np.ndarray | None = None,
) -> IDDetails:
    """LLM-Microscope's ``intrinsic_dimension(emb, reduction_factor=5)`` with counts and CI.

    Same numbers as the original (float64; r1 < 1e-8 is judged after centring and dividing by
    the mean norm, as there). Exact duplicates are removed first, as for every estimator here.
    """
    if reduction_factor < 1:
        raise WorkbenchError(f"reduction_factor must be >= 1; got {reduction_factor}.")
    X, n_given, n_dup = _prepare(X, 3)
    d = knn_distances(X, 2) if knn is None else knn
    X64 = X.astype(np.float64)
    avg_len = float(np.linalg.norm(X64 - X64.mean(axis=0), axis=1).mean())
    r1, r2 = d[:, 0], d[:, 1]
    bad = r1 / avg_len < 1e-8
    mu = np.where(bad, -1.0, r2 / np.where(bad, 1.0, r1))
    value = _microscope_from_mu(mu, reduction_factor)
    n_eff = int((np.sort(mu) > 1 + 1e-8).sum())
    out = IDDetails(
        value, "twonn_microscope", n_given, n_dup, min(n_eff // reduction_factor, n_eff - 1),
        n_boot=int(n_boot), params={"reduction_factor": reduction_factor}, pointwise=mu,
    )
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        reps = [_microscope_from_mu(mu[rng.integers(0, mu.size, mu.size)], reduction_factor) for _ in range(n_boot)]
        out.ci_low, out.ci_high = percentile_ci(np.array(reps), ci_level)
    return out


# ----------------------------------------------------------------------------- MLE


def _mle_combine(inv: np.ndarray, averaging: str) -> float:
    """Combine pointwise inverse estimates 1/m_k(x)."""
    if averaging == "mackay_ghahramani":
        return float(1.0 / inv.mean())
    return float(np.mean(1.0 / inv))


_AVERAGING = ("mackay_ghahramani", "mean")


def mle(X, k: int = 20, averaging: str = "mackay_ghahramani", unbiased: bool = False) -> float:
    """Levina-Bickel MLE of the intrinsic dimension with k neighbours; MacKay-Ghahramani
    averaging by default (= ``skdim.id.MLE().fit(X).dimension_``, k = 20)."""
    return mle_details(X, k=k, averaging=averaging, unbiased=unbiased).value


def mle_details(
    X,
    k: int = 20,
    averaging: str = "mackay_ghahramani",
    unbiased: bool = False,
    *,
    n_boot: int = 0,
    ci_level: float = 0.95,
    seed: int = 0,
    knn: np.ndarray | None = None,
) -> IDDetails:
    """MLE with counts and CI. Points whose k neighbours are all equidistant (pointwise estimate
    infinite) are kept in the MacKay-Ghahramani average (their inverse is 0) and dropped from the
    plain mean (counted in ``params['n_infinite_pointwise']``)."""
    if averaging not in _AVERAGING:
        raise WorkbenchError(f"averaging must be one of {_AVERAGING}; got {averaging!r}.")
    if k < 2 + int(unbiased):
        raise WorkbenchError(f"MLE needs k >= {2 + int(unbiased)}; got k={k}.")
    X, n_given, n_dup = _prepare(X, k + 1)
    d = knn_distances(X, k) if knn is None else knn[:, :k]
    if d.shape[1] < k:
        raise WorkbenchError(f"Precomputed neighbours have {d.shape[1]} columns; MLE needs k={k}.")
    kfac = k - 2 if unbiased else k - 1
    inv = np.log(d[:, k - 1 : k] / d[:, : k - 1]).sum(axis=1) / kfac  # 1 / m_k(x)
    n_inf = int((inv <= 0).sum())
    if averaging == "mean":
        inv_used = inv[inv > 0]
    else:
        inv_used = inv
    if inv_used.size == 0 or inv_used.mean() <= 0:
        raise WorkbenchError("MLE undefined: every point's k neighbours are equidistant.")
    value = _mle_combine(inv_used, averaging)
    out = IDDetails(
        value, f"mle_{'mg' if averaging == 'mackay_ghahramani' else 'mean'}", n_given, n_dup,
        int(inv_used.size), n_boot=int(n_boot),
        params={"k": k, "averaging": averaging, "unbiased": unbiased, "n_infinite_pointwise": n_inf},
        pointwise=np.divide(1.0, inv, out=np.full_like(inv, np.inf), where=inv > 0),
    )
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        reps = []
        for _ in range(n_boot):
            s = inv_used[rng.integers(0, inv_used.size, inv_used.size)]
            reps.append(_mle_combine(s, averaging) if s.mean() > 0 else np.nan)
        out.ci_low, out.ci_high = percentile_ci(np.array(reps), ci_level)
    return out


# ------------------------------------------------------------------- PCA-based dimensions


def _pca_dim_from_ev(ev: np.ndarray, variance: float) -> float:
    total = ev.sum()
    if not total > 0:
        raise WorkbenchError("All points are identical (zero variance): PCA dimension undefined.")
    frac = np.cumsum(ev) / total
    return float(int(np.searchsorted(frac, variance - 1e-12) + 1))


def _pr_from_ev(ev: np.ndarray) -> float:
    total = ev.sum()
    if not total > 0:
        raise WorkbenchError("All points are identical (zero variance): participation ratio undefined.")
    return float(total**2 / (ev**2).sum())


def pca_dimension(X, variance: float = 0.9) -> float:
    """Number of principal components explaining at least ``variance`` of the total variance."""
    return pca_dimension_details(X, variance=variance).value


def participation_ratio(X) -> float:
    """Participation ratio ``(sum lambda_i)^2 / sum lambda_i^2`` of the covariance spectrum."""
    return participation_ratio_details(X).value


def _pca_boot(X: np.ndarray, fn, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    reps = []
    for _ in range(n_boot):
        ev = covariance_eigenvalues(X[rng.integers(0, n, n)])
        reps.append(fn(ev))
    return np.array(reps)


def pca_dimension_details(
    X, variance: float = 0.9, *, n_boot: int = 0, ci_level: float = 0.95, seed: int = 0, eigenvalues=None
) -> IDDetails:
    """PCA linear dimension with counts and optional row-bootstrap interval.

    Duplicates are counted but not removed: they are legitimate mass for a covariance."""
    if not 0 < variance <= 1:
        raise WorkbenchError(f"variance must be in (0, 1]; got {variance}.")
    X = as_matrix(X, min_rows=2)
    ev = covariance_eigenvalues(X) if eigenvalues is None else eigenvalues
    out = IDDetails(
        _pca_dim_from_ev(ev, variance), f"pca_{int(round(variance * 100))}", X.shape[0], 0, X.shape[0],
        n_boot=int(n_boot), params={"variance": variance},
    )
    if n_boot > 0:
        out.ci_low, out.ci_high = percentile_ci(_pca_boot(X, lambda e: _pca_dim_from_ev(e, variance), n_boot, seed), ci_level)
    return out


def participation_ratio_details(
    X, *, n_boot: int = 0, ci_level: float = 0.95, seed: int = 0, eigenvalues=None
) -> IDDetails:
    """Participation ratio with counts and optional row-bootstrap interval."""
    X = as_matrix(X, min_rows=2)
    ev = covariance_eigenvalues(X) if eigenvalues is None else eigenvalues
    out = IDDetails(_pr_from_ev(ev), "participation_ratio", X.shape[0], 0, X.shape[0], n_boot=int(n_boot))
    if n_boot > 0:
        out.ci_low, out.ci_high = percentile_ci(_pca_boot(X, _pr_from_ev, n_boot, seed), ci_level)
    return out


__all__ = [
    "IDDetails",
    "twonn", "twonn_details", "twonn_from_mu",
    "twonn_microscope", "twonn_microscope_details",
    "mle", "mle_details",
    "pca_dimension", "pca_dimension_details",
    "participation_ratio", "participation_ratio_details",
]
