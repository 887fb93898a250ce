"""Covariance spectrum of a point cloud, streamed: the shared core of SVD anisotropy and the
PCA-based linear dimensions.

For centred data ``Xc = X - mean``, the squared singular values are the eigenvalues of the
scatter matrix ``Xc^T Xc`` (D x D). It is accumulated chunk by chunk as a Gram matrix in float64
(``precision="float64"``, exact to rounding) or with float32 chunk products summed in float64
(``precision="float32"``, about 2x faster, ~1e-6 relative), after subtracting a shift taken from the
first chunk (a translation leaves the covariance unchanged and keeps the sums well conditioned).
Memory is O(D^2 + chunk * D) whatever N is. When D is much larger than N, the N x N Gram matrix
``Xc Xc^T`` (same non-zero eigenvalues) is used instead.
"""

from __future__ import annotations

import numpy as np

from workbench.errors import WorkbenchError

from ._common import as_matrix


def scatter_matrix(X, *, chunk_rows: int = 8192, precision: str = "float64"):
    """Centred scatter matrix ``S = sum_i (x_i - m)(x_i - m)^T`` (float64, D x D) and N.

    ``X`` (N, D) may also be an iterable of (n_i, D) chunks (streamed, e.g. from an activation
    store), in which case the whole matrix is never held in memory.
    """
    if precision not in ("float64", "float32"):
        raise WorkbenchError(f"precision must be 'float64' or 'float32'; got {precision!r}.")
    work = np.float64 if precision == "float64" else np.float32
    if isinstance(X, np.ndarray) or hasattr(X, "shape"):
        X = as_matrix(X, min_rows=1)
        chunks = (X[i : i + chunk_rows] for i in range(0, X.shape[0], chunk_rows))
    else:
        chunks = (as_matrix(c, min_rows=1) for c in X)
    shift = None
    G = None
    s = None
    n = 0
    for c in chunks:
        if shift is None:
            shift = c.astype(np.float64).mean(axis=0)
            d = c.shape[1]
            G = np.zeros((d, d), dtype=np.float64)
            s = np.zeros(d, dtype=np.float64)
            shift_w = shift.astype(work)
        elif c.shape[1] != G.shape[0]:
            raise WorkbenchError(f"Chunks have different widths ({c.shape[1]} vs {G.shape[0]}).")
        cw = c.astype(work, copy=False) - shift_w
        cw = np.ascontiguousarray(cw)
        G += cw.T @ cw  # numpy dispatches a.T @ a to syrk (half the flops)
        s += cw.sum(axis=0, dtype=np.float64)
        n += c.shape[0]
    if n == 0:
        raise WorkbenchError("No points given (N = 0).")
    G -= np.outer(s, s) / n
    G = (G + G.T) / 2.0
    return G, n


def covariance_eigenvalues(X, *, chunk_rows: int = 8192, precision: str = "float64") -> np.ndarray:
    """Eigenvalues of the centred scatter matrix (= squared singular values of the centred data),
    descending, float64, clipped at 0. Length min(N, D) for an in-memory matrix.

    Divide by (N - 1) for covariance eigenvalues; ratios (anisotropy, explained variance,
    participation ratio) do not depend on that factor.
    """
    if isinstance(X, np.ndarray) or hasattr(X, "shape"):
        X = as_matrix(X, min_rows=1)
        n, d = X.shape
        if d > 2 * n:  # kernel trick: the N x N Gram has the same non-zero eigenvalues
            Xc = X.astype(np.float64) - X.astype(np.float64).mean(axis=0)
            ev = np.linalg.eigvalsh(Xc @ Xc.T)
            return np.clip(ev[::-1], 0.0, None)
    G, n = scatter_matrix(X, chunk_rows=chunk_rows, precision=precision)
    ev = np.linalg.eigvalsh(G)[::-1]
    return np.clip(ev[: min(n, ev.size)], 0.0, None)
