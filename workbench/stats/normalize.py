"""Row-wise preprocessing shared by the estimators and metrics: centring and L2 normalisation."""

from __future__ import annotations

import numpy as np


def center(X) -> np.ndarray:
    """``X - mean over rows`` as a new float64 array (the point cloud moved to the origin)."""
    X = np.asarray(X, dtype=np.float64)
    return X - X.mean(axis=0)


def l2_normalize(X, *, center_first: bool = False, eps: float = 0.0) -> np.ndarray:
    """Vectors along the last axis scaled to unit L2 norm, float64, same shape as ``X``.

    ``center_first`` subtracts the mean over rows (axis 0) first: the ``normalize`` of the
    layer-wise quality reference code (docs/methods.md, "Layer-wise quality"). The epsilon is safe in
    both directions: a vector whose norm is ``<= eps`` comes back as zeros (a zero vector has no
    direction), never NaN or inf, and every other vector is divided by its own norm exactly (no
    ``max(norm, eps)`` bias). The default ``eps = 0`` leaves out only vectors whose norm is 0 (in
    float64, also those whose squared entries underflow: every entry below about 1e-154).
    """
    X = center(X) if center_first else np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > eps)
