"""Intrinsic-dimension estimators from nearest-neighbour distances (docs/methods.md, "Anisotropy
and intrinsic dimension").

Every estimator has a plain form returning a float and a ``*_details`` form returning a dataclass
(value, point counts, duplicates removed, optional bootstrap interval). All of them first drop exact
duplicate rows (a zero nearest-neighbour distance makes the kNN estimators undefined); the number
removed is reported as ``n_duplicates_removed``, and no estimate is ever NaN or inf.

The two TwoNN variants share one skeleton, :func:`twonn_fit`: ratios ``mu_i = r2/r1`` sorted, the
empirical CDF ``F = i / N`` (N = every ratio, kept or not) and the least-squares slope through the
origin of ``-log(1 - F)`` on ``log mu``. They differ only in which sorted ratios enter the fit:

``twonn`` -- TwoNN, Facco et al. 2017, exactly as ``skdim.id.TwoNN(discard_fraction=0.1)``
    (scikit-dimension 0.5.0): the ``n = int(N(1 - f))`` smallest ratios, ``F_i = i/N``.
``twonn_microscope`` -- the LLM-Microscope variant (Razzhigaev et al., ``intrinsic_dimension``):
    the ``u`` ratios ``mu <= 1 + 1e-8`` (and points with r1 < 1e-8 after scaling by the mean norm)
    are dropped but offset the empirical CDF, ``F_i = (i + u)/N``, and the fit uses only the next
    ``min((N - u) // reduction_factor, N - u - 1)`` ratios (20% by default, not 90%).
``mle`` -- Levina & Bickel 2005 with k neighbours: ``m_k(x) = (k-1) / sum_{j<k} log(T_k/T_j)``
    (``k-2`` if ``unbiased``); global estimate by MacKay & Ghahramani's averaging of inverses
    ``1/mean(1/m_k)`` (default, as ``skdim.id.MLE()``) or the plain Levina-Bickel mean.

The PCA-based linear dimensions are in :mod:`.linear_dim`.

Bootstrap intervals resample points with replacement while holding the neighbour graph fixed
(resampling the pointwise statistics mu_i or 1/m_k(x_i)); re-running the kNN on a resample would
create exact duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from workbench.errors import WorkbenchError

from .checks import Details, bootstrap_ci, check_array, unique_rows
from .neighbors import knn_distances
from .normalize import center

#: LLM-Microscope's tolerance: ratios mu <= 1 + EPS and relative r1 < EPS do not enter its fit
MICROSCOPE_EPS = 1e-8


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
    X = check_array(X, min_rows=1)
    n_given = X.shape[0]
    X, n_dup = unique_rows(X)
    if X.shape[0] < min_points:
        raise WorkbenchError(
            f"Need at least {min_points} distinct points; got {X.shape[0]} "
            f"({n_dup} duplicates removed from {n_given})."
        )
    return X, n_given, n_dup


def _neighbours(X, k: int, knn: np.ndarray | None) -> np.ndarray:
    """Ascending distances to the k nearest other rows: computed, or the precomputed ``knn``."""
    return knn_distances(X, k) if knn is None else knn


# ------------------------------------------------------------------------ the TwoNN skeleton


def twonn_ratios(d: np.ndarray, undefined: np.ndarray | None = None) -> np.ndarray:
    """``mu_i = r2/r1`` from ascending neighbour distances ``d`` (N, >= 2).

    Points flagged in ``undefined`` (bool, N) get ``mu = -1``: below every real ratio (>= 1), so a
    fit that drops the lowest ratios drops them, while the empirical CDF still counts them.
    """
    r1, r2 = d[:, 0], d[:, 1]
    if undefined is None:
        return r2 / r1
    return np.where(undefined, -1.0, r2 / np.where(undefined, 1.0, r1))


def twonn_fit(mu: np.ndarray, n_fit: Callable[[int], float], *, floor: float | None = None, min_fit: int = 1,
              what: str = "TwoNN") -> tuple[float, int]:
    """The TwoNN skeleton shared by both conventions: ``(slope, number of ratios fitted)``.

    ``mu`` (any order) is sorted; the ``u`` ratios ``<= floor`` are left out of the fit (none when
    ``floor`` is None) but still count in the empirical CDF; the next ``n = n_fit(N - u)`` ratios are
    fitted, ``F_i = (i + u) / N`` for i = 1..n, and the slope is the least-squares fit through the
    origin ``sum(x y) / sum(x x)`` of ``y = -log(1 - F)`` on ``x = log mu``. ``n_fit`` maps the
    number of ratios above the floor to the number fitted (truncated to an integer); fewer than
    ``min_fit`` is an error, as is a fit on ratios that all equal 1.
    """
    mu = np.sort(np.asarray(mu, dtype=np.float64))
    N = mu.size
    start = 0 if floor is None else int((mu <= floor).sum())
    n = int(n_fit(N - start))
    if n < min_fit:
        raise WorkbenchError(f"{what} needs more points: only {n} ratios r2/r1 left for the fit "
                             f"(at least {min_fit} needed).")
    x = np.log(mu[start : start + n])
    y = -np.log(1.0 - np.arange(start + 1, start + n + 1) / N)
    sxx = float(x @ x)
    if sxx == 0.0:
        raise WorkbenchError(f"{what} undefined: all fitted distance ratios r2/r1 equal 1 (lattice-like data).")
    return float((x @ y) / sxx), n


def _twonn_result(name: str, fit, mu, n_given, n_dup, params, n_boot, ci_level, seed) -> IDDetails:
    value, n_used = fit(mu)
    out = IDDetails(value, name, n_given, n_dup, n_used, n_boot=int(n_boot), params=params, pointwise=mu)
    if n_boot > 0:
        out.ci_low, out.ci_high = bootstrap_ci(lambda m: fit(m)[0], mu, n_boot, seed, ci_level)
    return out


# ---------------------------------------------------------------- TwoNN (scikit-dimension form)


def _skdim_fit(discard_fraction: float):
    # n_keep = int(N * (1 - f)): the same expression as skdim, the same rounding
    return lambda mu: twonn_fit(mu, lambda n: n * (1 - discard_fraction), min_fit=2, what="TwoNN")


def twonn_from_mu(mu: np.ndarray, discard_fraction: float = 0.1) -> float:
    """TwoNN slope from the ratios mu = r2/r1 (any order, all finite and >= 1)."""
    return _skdim_fit(discard_fraction)(mu)[0]


def twonn(X, discard_fraction: float = 0.1) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017; scikit-dimension 0.5.0 convention) of X (N, D)."""
    return twonn_details(X, discard_fraction=discard_fraction).value


def twonn_details(X, discard_fraction: float = 0.1, *, n_boot: int = 0, ci_level: float = 0.95, seed: int = 0,
                  knn: np.ndarray | None = None) -> IDDetails:
    """TwoNN with counts and an optional bootstrap interval.

    ``knn``: precomputed ascending neighbour distances (N_unique, >=2) of the de-duplicated X, to
    share one neighbour search between estimators (see :func:`knn_distances`).
    """
    if not 0 <= discard_fraction < 1:
        raise WorkbenchError(f"discard_fraction must be in [0, 1); got {discard_fraction}.")
    X, n_given, n_dup = _prepare(X, 3)
    mu = twonn_ratios(_neighbours(X, 2, knn))
    return _twonn_result("twonn", _skdim_fit(discard_fraction), mu, n_given, n_dup,
                         {"discard_fraction": discard_fraction}, n_boot, ci_level, seed)


# ------------------------------------------------------------ TwoNN, LLM-Microscope variant


def _microscope_fit(reduction_factor: int):
    return lambda mu: twonn_fit(mu, lambda n: min(n // reduction_factor, n - 1), floor=1 + MICROSCOPE_EPS,
                                what="LLM-Microscope TwoNN")


def twonn_microscope(X, reduction_factor: int = 5) -> float:
    """LLM-Microscope TwoNN variant (fit on the smallest 1/reduction_factor of the ratios)."""
    return twonn_microscope_details(X, reduction_factor=reduction_factor).value


def twonn_microscope_details(X, reduction_factor: int = 5, *, n_boot: int = 0, ci_level: float = 0.95,
                             seed: int = 0, knn: np.ndarray | None = None) -> IDDetails:
    """LLM-Microscope's ``intrinsic_dimension(emb, reduction_factor=5)`` with counts and CI.

    Same numbers as the original (float64; r1 < 1e-8 is judged after centring and dividing by
    the mean norm, as there). Exact duplicates are removed first, as for every estimator here.
    """
    if reduction_factor < 1:
        raise WorkbenchError(f"reduction_factor must be >= 1; got {reduction_factor}.")
    X, n_given, n_dup = _prepare(X, 3)
    d = _neighbours(X, 2, knn)
    avg_len = float(np.linalg.norm(center(X), axis=1).mean())
    mu = twonn_ratios(d, undefined=d[:, 0] / avg_len < MICROSCOPE_EPS)
    return _twonn_result("twonn_microscope", _microscope_fit(reduction_factor), mu, n_given, n_dup,
                         {"reduction_factor": reduction_factor}, n_boot, ci_level, seed)


# ----------------------------------------------------------------------------- MLE


_AVERAGING = ("mackay_ghahramani", "mean")


def _mle_combine(inv: np.ndarray, averaging: str) -> float:
    """Combine pointwise inverse estimates 1/m_k(x); NaN when undefined (a resample of zeros)."""
    if not inv.mean() > 0:
        return float("nan")
    if averaging == "mackay_ghahramani":
        return float(1.0 / inv.mean())
    return float(np.mean(1.0 / inv))


def mle(X, k: int = 20, averaging: str = "mackay_ghahramani", unbiased: bool = False) -> float:
    """Levina-Bickel MLE of the intrinsic dimension with k neighbours; MacKay-Ghahramani
    averaging by default (= ``skdim.id.MLE().fit(X).dimension_``, k = 20)."""
    return mle_details(X, k=k, averaging=averaging, unbiased=unbiased).value


def mle_details(X, k: int = 20, averaging: str = "mackay_ghahramani", unbiased: bool = False, *, n_boot: int = 0,
                ci_level: float = 0.95, seed: int = 0, knn: np.ndarray | None = None) -> IDDetails:
    """MLE with counts and CI. Points whose k neighbours are all equidistant (pointwise estimate
    infinite) are kept in the MacKay-Ghahramani average (their inverse is 0) and dropped from the
    plain mean (counted in ``params['n_infinite_pointwise']``)."""
    if averaging not in _AVERAGING:
        raise WorkbenchError(f"averaging must be one of {_AVERAGING}; got {averaging!r}.")
    if k < 2 + int(unbiased):
        raise WorkbenchError(f"MLE needs k >= {2 + int(unbiased)}; got k={k}.")
    X, n_given, n_dup = _prepare(X, k + 1)
    d = _neighbours(X, k, None if knn is None else knn[:, :k])
    if d.shape[1] < k:
        raise WorkbenchError(f"Precomputed neighbours have {d.shape[1]} columns; MLE needs k={k}.")
    kfac = k - 2 if unbiased else k - 1
    inv = np.log(d[:, k - 1 : k] / d[:, : k - 1]).sum(axis=1) / kfac  # 1 / m_k(x)
    n_inf = int((inv <= 0).sum())
    inv_used = inv[inv > 0] if averaging == "mean" else inv
    if inv_used.size == 0 or inv_used.mean() <= 0:
        raise WorkbenchError("MLE undefined: every point's k neighbours are equidistant.")
    out = IDDetails(
        _mle_combine(inv_used, averaging), f"mle_{'mg' if averaging == 'mackay_ghahramani' else 'mean'}",
        n_given, n_dup, int(inv_used.size), n_boot=int(n_boot),
        params={"k": k, "averaging": averaging, "unbiased": unbiased, "n_infinite_pointwise": n_inf},
        pointwise=np.divide(1.0, inv, out=np.full_like(inv, np.inf), where=inv > 0),
    )
    if n_boot > 0:
        out.ci_low, out.ci_high = bootstrap_ci(lambda s: _mle_combine(s, averaging), inv_used, n_boot, seed, ci_level)
    return out


__all__ = [
    "IDDetails", "MICROSCOPE_EPS", "twonn_ratios", "twonn_fit",
    "twonn", "twonn_details", "twonn_from_mu",
    "twonn_microscope", "twonn_microscope_details",
    "mle", "mle_details",
]
