"""Input checks and the small helpers every estimator shares.

:func:`check_array` is named after ``sklearn.utils.check_array``: one place that turns whatever the
caller holds (numpy array, torch tensor, nested list) into a finite, C-contiguous (N, D) matrix, or
raises a :class:`~workbench.errors.WorkbenchError` that says what to fix.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np

from workbench.errors import WorkbenchError


def _from_torch(X):
    """A torch tensor as a CPU numpy array (float16 / bfloat16 promoted to float32); anything else as is."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: never import it here
    if torch is not None and isinstance(X, torch.Tensor):
        X = X.detach().to("cpu")
        if X.dtype in (torch.float16, torch.bfloat16):
            X = X.float()
        X = X.numpy()
    return X


def check_array(X, name: str = "X", min_rows: int = 1, dtype=None) -> np.ndarray:
    """Return ``X`` as a C-contiguous 2-D numpy array (N, D), checking it is finite.

    Accepts numpy arrays, torch tensors (moved to CPU, detached) and nested lists. Integer and
    float16/bfloat16 input is promoted to float32; float32 and float64 stay as they are unless
    ``dtype`` is given. ``name`` is the argument's name in the error messages; ``min_rows`` the
    fewest points accepted.
    """
    X = np.asarray(_from_torch(X))
    if X.ndim != 2:
        raise WorkbenchError(
            f"{name} must be a 2-D matrix (N points, D dimensions); got shape {X.shape}. "
            "Reshape token activations to (n_tokens, d_model) first."
        )
    if dtype is not None:
        X = X.astype(dtype, copy=False)
    elif X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)
    if X.shape[0] < min_rows:
        raise WorkbenchError(f"{name} needs at least {min_rows} rows (points); got {X.shape[0]}.")
    if X.shape[1] < 1:
        raise WorkbenchError(f"{name} has no columns (D = 0).")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise WorkbenchError(
            f"{name} contains NaN or infinite values in {bad} rows; drop or fix them first."
        )
    return np.ascontiguousarray(X)


def unique_rows(X: np.ndarray) -> tuple[np.ndarray, int]:
    """Drop exact duplicate rows (keeping the first copy, in original order).

    Returns ``(X_unique, n_removed)``. Duplicate points have a zero nearest-neighbour distance,
    which makes every kNN-based intrinsic-dimension estimator undefined (log 0); removing the
    extra copies is the documented treatment here (the count is always reported).
    """
    X = np.ascontiguousarray(X)
    if X.shape[0] < 2:
        return X, 0
    # -0.0 and 0.0 compare equal as numbers but differ as bytes: normalise them first.
    Xn = X + 0.0
    rows = Xn.view(np.dtype((np.void, Xn.dtype.itemsize * Xn.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    n_removed = X.shape[0] - first.size
    if n_removed == 0:
        return X, 0
    keep = np.sort(first)
    return X[keep], int(n_removed)


def subsample_rows(n: int, max_points: int | None, seed: int) -> np.ndarray | None:
    """Seeded subsample of ``max_points`` row indices out of ``n`` (sorted), or None for all."""
    if max_points is None or max_points <= 0 or n <= max_points:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(max_points), replace=False))


def _finite(samples) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float64)
    return samples[np.isfinite(samples)]


def percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile bootstrap interval at confidence ``level`` (e.g. 0.95); NaN if no samples."""
    samples = _finite(samples)
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def normal_ci(value: float, samples: np.ndarray, level: float) -> tuple[float, float]:
    """Normal bootstrap interval ``value +- z * sd(samples)``; NaN if fewer than 2 samples."""
    from statistics import NormalDist

    samples = _finite(samples)
    if samples.size < 2:
        return float("nan"), float("nan")
    half = NormalDist().inv_cdf(0.5 + level / 2.0) * float(samples.std(ddof=1))
    return float(value - half), float(value + half)


def bootstrap_ci(statistic, values: np.ndarray, n_boot: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile interval of ``statistic(resample)`` over ``n_boot`` resamples of ``values`` (with
    replacement, seeded): the pointwise bootstrap of the kNN estimators, whose neighbour graph stays
    fixed while the pointwise statistics (``mu_i``, ``1/m_k(x_i)``) are resampled."""
    rng = np.random.default_rng(seed)
    reps = [statistic(values[rng.integers(0, values.size, values.size)]) for _ in range(n_boot)]
    return percentile_ci(np.array(reps), level)


@dataclass
class Details:
    """Base for the ``*_details`` results: ``to_dict()`` gives the JSON-able scalar fields."""

    def to_dict(self) -> dict:
        out = {}
        for k, v in asdict(self).items():
            if isinstance(v, np.ndarray):
                continue
            if isinstance(v, (np.floating, np.integer)):
                v = v.item()
            out[k] = v
        return out
