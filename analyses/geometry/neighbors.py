"""Exact k-nearest-neighbour distances for the intrinsic-dimension estimators.

Two stages, so that tens of thousands of points are routine on a CPU and the distances are exact:

1. **Candidates (float32, torch).** Squared distances block by block via
   ``|x|^2 + |y|^2 - 2 x.y`` (one GEMM per block, data centred first to limit cancellation), the
   point itself masked out; ``torch.topk`` keeps ``k + extra`` candidates per row, merged across
   blocks. Only blocks on and above the diagonal are computed (the matrix is symmetric: each block
   serves both its row set and, transposed, its column set), about half the flops of a full pass.
   Blocks are bounded by ``max_chunk_bytes``, so memory is O(N k + block^2) for any N.
2. **Refinement (float64).** The candidates' distances are recomputed as ``||x_i - x_j||`` in
   float64 and sorted, and the first ``k`` kept. Float32 rounding can only swap candidates whose
   distances agree to ~1e-6 relative, and the ``extra`` margin keeps the true k-th neighbour in the
   candidate set, so the result equals an exact float64 kNN (e.g. scikit-learn's) to rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.errors import WorkbenchError

from ._common import as_matrix


def knn_distances(
    X,
    k: int,
    *,
    max_chunk_bytes: int = 2**28,
    extra: int | None = None,
    return_indices: bool = False,
    block_rows: int | None = None,
):
    """Distances from every row of X to its ``k`` nearest other rows (self excluded).

    Parameters
    ----------
    X : array (N, D)
    k : number of neighbours, 1 <= k < N.
    max_chunk_bytes : bound on the float32 distance blocks held at once (default 256 MiB).
    block_rows : rows per block (default 2048, smaller if ``max_chunk_bytes`` requires).
    extra : candidate margin beyond ``k`` for the exact float64 refinement (default ``max(4, k // 4)``).

    Returns
    -------
    dists : float64 (N, k), ascending along axis 1; ``dists[:, 0]`` is r1.
    idx : int64 (N, k), only if ``return_indices``.
    """
    X = as_matrix(X, min_rows=2)
    n = X.shape[0]
    if not 1 <= k < n:
        raise WorkbenchError(f"k-nearest neighbours needs 1 <= k < N; got k={k}, N={n}.")
    extra = max(4, k // 4) if extra is None else int(extra)
    m = min(n - 1, k + extra)

    X64 = X.astype(np.float64, copy=False)
    X64 = X64 - X64.mean(axis=0)  # translation changes no distance, improves float32 precision
    X32 = torch.from_numpy(X64.astype(np.float32))
    X64t = torch.from_numpy(X64)
    sq = (X32 * X32).sum(dim=1)

    # Stage 1: blocks (I, J) with J >= I only -- the distance matrix is symmetric, so one GEMM
    # serves the rows of I (along J) and the rows of J (along I): about half the flops of a full
    # pass. A block, its transposed copy and the topk workspace stay within max_chunk_bytes.
    B = int(max(1, min(n, block_rows if block_rows else 2048, int(np.sqrt(max_chunk_bytes / 12)))))
    best_v = torch.full((n, m), float("inf"), dtype=torch.float32)
    best_i = torch.zeros((n, m), dtype=torch.int64)
    starts = list(range(0, n, B))

    def merge(rows: slice, vals: torch.Tensor, idx: torch.Tensor) -> None:
        v = torch.cat([best_v[rows], vals], dim=1)
        i = torch.cat([best_i[rows], idx], dim=1)
        top_v, pos = torch.topk(v, m, dim=1, largest=False, sorted=False)
        best_v[rows] = top_v
        best_i[rows] = torch.gather(i, 1, pos)

    with torch.no_grad():
        for a, i0 in enumerate(starts):
            i1 = min(n, i0 + B)
            for j0 in starts[a:]:
                j1 = min(n, j0 + B)
                d2 = torch.addmm(sq[None, j0:j1], X32[i0:i1], X32[j0:j1].T, beta=1.0, alpha=-2.0)
                d2 += sq[i0:i1, None]
                if i0 == j0:
                    r = torch.arange(i1 - i0)
                    d2[r, r] = float("inf")
                kk = min(m, j1 - j0)
                v, ix = torch.topk(d2, kk, dim=1, largest=False, sorted=False)
                merge(slice(i0, i1), v, ix + j0)
                if j0 != i0:
                    d2t = d2.T.contiguous()
                    del d2
                    kk = min(m, i1 - i0)
                    v, ix = torch.topk(d2t, kk, dim=1, largest=False, sorted=False)
                    merge(slice(j0, j1), v, ix + i0)
                    del d2t

        # Stage 2: exact float64 distances of the candidates, in sub-blocks of ~16 MiB
        dists = np.empty((n, k), dtype=np.float64)
        idx_out = np.empty((n, k), dtype=np.int64) if return_indices else None
        sub = int(max(1, min(n, 2**24 // (8 * m * X.shape[1]))))
        for s0 in range(0, n, sub):
            s1 = min(n, s0 + sub)
            c = best_i[s0:s1]
            diff = X64t[c] - X64t[s0:s1, None, :]
            exact = torch.sqrt((diff * diff).sum(dim=2))
            exact, order = torch.sort(exact, dim=1)
            dists[s0:s1] = exact[:, :k].numpy()
            if return_indices:
                idx_out[s0:s1] = torch.gather(c, 1, order[:, :k]).numpy()
    if return_indices:
        return dists, idx_out
    return dists
