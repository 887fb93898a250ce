"""Covariance spectrum of a point cloud, streamed: the shared core of SVD anisotropy, the
PCA-based linear dimensions and the layer statistics (docs/methods.md, "Anisotropy and intrinsic
dimension").

For centred data ``Xc = X - mean``, the squared singular values are the eigenvalues of the
scatter matrix ``Xc^T Xc`` (D x D). It is accumulated chunk by chunk as a Gram matrix in float64
(``precision="float64"``, exact to rounding) or with float32 chunk products summed in float64
(``precision="float32"``, about 2x faster, ~1e-6 relative), after subtracting a shift taken from the
first chunk (a translation leaves the covariance unchanged and keeps the sums well conditioned).
Chunks larger than ``chunk_rows`` are split, so each float32 product sums at most ``chunk_rows``
terms. Memory is O(D^2 + chunk * D) whatever N is. When D is much larger than N, the N x N Gram
matrix ``Xc Xc^T`` (same non-zero eigenvalues) is used instead.
"""

from __future__ import annotations

import numpy as np

from workbench.errors import WorkbenchError

from .checks import check_array
from .normalize import center

PRECISIONS = ("float64", "float32")
#: rows per float64 block of the exact second pass of :func:`top_pc_share` (256 x 576 x 8 B = 1.2 MB)
_PASS_ROWS = 256


def _chunks(X, chunk_rows: int):
    """Checked (n_i, D) blocks of at most ``chunk_rows`` rows, from a matrix or an iterable of chunks."""
    if isinstance(X, np.ndarray) or hasattr(X, "shape"):
        blocks = [check_array(X, min_rows=1)]
    else:  # a stream; an empty chunk (every text of a shard one token long, position 0 left out) is skipped
        blocks = (check_array(c, min_rows=0) for c in X)
    for c in blocks:
        for i in range(0, c.shape[0], chunk_rows):
            yield c[i : i + chunk_rows]


def scatter_matrix(X, *, chunk_rows: int = 8192, precision: str = "float64"):
    """Centred scatter matrix ``S = sum_i (x_i - m)(x_i - m)^T`` (float64, D x D) and N.

    ``X`` (N, D) may also be an iterable of (n_i, D) chunks (streamed, e.g. from an activation
    store), in which case the whole matrix is never held in memory.
    """
    if precision not in PRECISIONS:
        raise WorkbenchError(f"precision must be 'float64' or 'float32'; got {precision!r}.")
    work = np.float64 if precision == "float64" else np.float32
    G = s = shift_w = buf = None
    n = 0
    for c in _chunks(X, chunk_rows):
        if G is None:
            shift = c.astype(np.float64).mean(axis=0)
            d = c.shape[1]
            G = np.zeros((d, d), dtype=np.float64)
            s = np.zeros(d, dtype=np.float64)
            shift_w = shift.astype(work)
        elif c.shape[1] != G.shape[0]:
            raise WorkbenchError(f"Chunks have different widths ({c.shape[1]} vs {G.shape[0]}).")
        if buf is None or len(buf) < len(c):
            buf = np.empty((len(c), c.shape[1]), dtype=work)  # reused: one allocation, not one per chunk
        cw = np.subtract(c, shift_w, out=buf[: len(c)], dtype=work)
        G += cw.T @ cw  # numpy dispatches a.T @ a to syrk (half the flops)
        s += cw.sum(axis=0, dtype=np.float64)
        n += c.shape[0]
    if n == 0:
        raise WorkbenchError("No points given (N = 0).")
    G -= np.outer(s, s) / n
    G = (G + G.T) / 2.0
    return G, n


def top_eigenpair(G: np.ndarray, vector: bool = True) -> tuple[float, np.ndarray | None]:
    """The largest eigenvalue of the symmetric positive semi-definite matrix ``G`` (a scatter or Gram
    matrix) and its unit eigenvector (None unless ``vector``), alone.

    Block subspace iteration with Rayleigh-Ritz (Golub & Van Loan, "Matrix Computations", 8.2.4):
    ``Q <- qr(G Q)`` on :data:`_BLOCK` columns from a fixed seed (runs repeat bit for bit), until the
    top Ritz pair's residual ``||G v - theta v||`` is below ``1e-10 theta``. The error converges like
    ``(lambda_9 / lambda_1)^iterations`` and theta's error is second order in the residual, so it is
    equal to a full LAPACK decomposition to ~1e-15 relative; for a 576 x 576 scatter matrix it takes
    about 1 ms against 21 ms for ``numpy.linalg.eigh`` (and needs no scipy import, as ARPACK's Lanczos
    would). Small matrices, a zero matrix, and a top cluster too tight to converge in
    :data:`_MAX_ITERATIONS` use the full decomposition.
    """
    d = G.shape[0]
    if d >= 4 * _BLOCK and np.any(G):
        found = _subspace_top(G)
        if found is not None:
            return (found[0], found[1]) if vector else (found[0], None)
    w, V = np.linalg.eigh(G)
    return (float(w[-1]), V[:, -1]) if vector else (float(w[-1]), None)


#: columns of the block in :func:`top_eigenpair`'s subspace iteration, and its iteration budget
_BLOCK = 8
_MAX_ITERATIONS = 300


def _subspace_top(G: np.ndarray, tol: float = 1e-10) -> tuple[float, np.ndarray] | None:
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((G.shape[0], _BLOCK)))
    for _ in range(_MAX_ITERATIONS):
        Z = G @ Q
        H = Q.T @ Z
        w, S = np.linalg.eigh((H + H.T) / 2)
        theta, s = float(w[-1]), S[:, -1]
        v = Q @ s
        if theta > 0 and np.linalg.norm(Z @ s - theta * v) <= tol * theta:
            return theta, v / np.linalg.norm(v)
        Q, _ = np.linalg.qr(Z)
    return None


def top_pc_share(chunks, *, precision: str = "float32", chunk_rows: int = 8192) -> tuple[float, int]:
    """Share of variance on the first principal direction, ``sigma_1^2 / sum sigma_i^2`` of the
    centred rows, and N; NaN when every row is the same.

    ``chunks``: a zero-argument callable returning a fresh iterable of (n_i, D) chunks (it is read
    twice), e.g. ``lambda: entry.layer_chunks(hook)``. Two passes, mixed precision:

    1. the scatter matrix (:func:`scatter_matrix`; with ``precision="float32"`` float32 chunk products
       summed in float64) and only its top eigenvector ``v`` (:func:`top_eigenpair`, no full
       eigendecomposition);
    2. in float64, the Rayleigh quotient ``sum_i ((x_i - m) . v)^2`` and the trace
       ``sum_i ||x_i - m||^2`` (O(N D)).

    The Rayleigh quotient's error is second order in the error of ``v``, so the share is exact to
    float64 rounding (about 1e-14) although the D x D matrix is formed from float32 products; the
    trace needs no eigenvector at all.
    """
    G, n = scatter_matrix(chunks(), chunk_rows=chunk_rows, precision=precision)
    _, v = top_eigenpair(G)
    c = None  # a point near the mean (of the first block): the sums below are exact for any c
    a = b = t = 0.0
    u = np.zeros_like(v)
    block = np.empty((_PASS_ROWS, v.shape[0]), dtype=np.float64)
    for chunk in chunks():  # checked in the first pass
        for i in range(0, len(chunk), _PASS_ROWS):
            xc = block[: min(_PASS_ROWS, len(chunk) - i)]
            xc[...] = chunk[i : i + _PASS_ROWS]  # float64 in a reused block that stays in the L2 cache
            c = xc.mean(axis=0) if c is None else c
            xc -= c
            y = xc @ v
            flat = xc.reshape(-1)
            a, b, t = a + float(y.sum()), b + float(y @ y), t + float(flat @ flat)
            u += xc.sum(axis=0)
    total = t - float(u @ u) / n
    return ((b - a * a / n) / total if total > 0 else float("nan")), n


def covariance_eigenvalues(X, *, chunk_rows: int = 8192, precision: str = "float64") -> np.ndarray:
    """Eigenvalues of the centred scatter matrix (= squared singular values of the centred data),
    descending, float64, clipped at 0. Length min(N, D) for an in-memory matrix.

    Divide by (N - 1) for covariance eigenvalues; ratios (anisotropy, explained variance,
    participation ratio) do not depend on that factor.
    """
    if isinstance(X, np.ndarray) or hasattr(X, "shape"):
        X = check_array(X, min_rows=1)
        n, d = X.shape
        if d > 2 * n:  # kernel trick: the N x N Gram has the same non-zero eigenvalues
            Xc = center(X)
            ev = np.linalg.eigvalsh(Xc @ Xc.T)
            return np.clip(ev[::-1], 0.0, None)
    G, n = scatter_matrix(X, chunk_rows=chunk_rows, precision=precision)
    ev = np.linalg.eigvalsh(G)[::-1]
    return np.clip(ev[: min(n, ev.size)], 0.0, None)
