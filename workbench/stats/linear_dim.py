"""Linear (PCA-based) dimensions of a point cloud, from its covariance spectrum (docs/methods.md,
"Anisotropy and intrinsic dimension").

``pca_dimension`` -- number of principal components needed for ``variance`` (0.9) of the variance.
``participation_ratio`` -- ``(sum lambda)^2 / sum lambda^2`` of the covariance eigenvalues.

Duplicates are counted but not removed: they are legitimate mass for a covariance. Bootstrap
intervals resample rows and recompute the spectrum (cost n_boot * N * D^2; off unless asked).
"""

from __future__ import annotations

import numpy as np

from workbench.errors import WorkbenchError

from .checks import check_array, percentile_ci
from .intrinsic_dim import IDDetails
from .spectrum import covariance_eigenvalues


def _total_variance(ev: np.ndarray, what: str) -> float:
    total = ev.sum()
    if not total > 0:
        raise WorkbenchError(f"All points are identical (zero variance): {what} undefined.")
    return total


def _pca_dim_from_ev(ev: np.ndarray, variance: float) -> float:
    frac = np.cumsum(ev) / _total_variance(ev, "PCA dimension")
    return float(int(np.searchsorted(frac, variance - 1e-12) + 1))


def _pr_from_ev(ev: np.ndarray) -> float:
    return float(_total_variance(ev, "participation ratio") ** 2 / (ev**2).sum())


def pca_dimension(X, variance: float = 0.9) -> float:
    """Number of principal components explaining at least ``variance`` of the total variance."""
    return pca_dimension_details(X, variance=variance).value


def participation_ratio(X) -> float:
    """Participation ratio ``(sum lambda_i)^2 / sum lambda_i^2`` of the covariance spectrum."""
    return participation_ratio_details(X).value


def _spectrum_details(X, fn, name: str, params: dict, n_boot: int, ci_level: float, seed: int,
                      eigenvalues) -> IDDetails:
    """``fn(spectrum)`` as an :class:`IDDetails`, with the row-bootstrap interval if ``n_boot``."""
    X = check_array(X, min_rows=2)
    ev = covariance_eigenvalues(X) if eigenvalues is None else eigenvalues
    out = IDDetails(fn(ev), name, X.shape[0], 0, X.shape[0], n_boot=int(n_boot), params=params)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        n = X.shape[0]
        reps = [fn(covariance_eigenvalues(X[rng.integers(0, n, n)])) for _ in range(n_boot)]
        out.ci_low, out.ci_high = percentile_ci(np.array(reps), ci_level)
    return out


def pca_dimension_details(
    X, variance: float = 0.9, *, n_boot: int = 0, ci_level: float = 0.95, seed: int = 0, eigenvalues=None
) -> IDDetails:
    """PCA linear dimension with counts and optional row-bootstrap interval."""
    if not 0 < variance <= 1:
        raise WorkbenchError(f"variance must be in (0, 1]; got {variance}.")
    return _spectrum_details(X, lambda e: _pca_dim_from_ev(e, variance), f"pca_{int(round(variance * 100))}",
                             {"variance": variance}, n_boot, ci_level, seed, eigenvalues)


def participation_ratio_details(
    X, *, n_boot: int = 0, ci_level: float = 0.95, seed: int = 0, eigenvalues=None
) -> IDDetails:
    """Participation ratio with counts and optional row-bootstrap interval."""
    return _spectrum_details(X, _pr_from_ev, "participation_ratio", {}, n_boot, ci_level, seed, eigenvalues)


__all__ = ["pca_dimension", "pca_dimension_details", "participation_ratio", "participation_ratio_details"]
