"""Exact k-nearest-neighbour distances for the intrinsic-dimension estimators (docs/methods.md,
"Anisotropy and intrinsic dimension").

Two stages, so that tens of thousands of points are routine on a CPU and the distances are exact:

1. **Candidates (float32, torch).** Squared distances block by block via
   ``|x|^2 + |y|^2 - 2 x.y`` (one GEMM per block, data centred first to limit cancellation). Only
   blocks on and above the diagonal are computed: the matrix is symmetric, so block ``(I, J)``
   serves both the rows of ``I`` and, read column-wise, the rows of ``J`` (half the flops of a full
   pass, and no transposed copy). Each row keeps its ``m = k + extra`` best candidates and their
   largest value as a *threshold*, an upper bound on its final m-th candidate distance:

   * the diagonal blocks go first, with an exact ``torch.topk``: every row gets ``m`` candidates
     and a finite threshold before any other block is seen;
   * in every off-diagonal block a single comparison ``d2 < max(threshold_i, threshold_j)`` keeps
     the few entries that can still enter the best set of their row or column; they are collected
     as ``(row, column, value)`` triples for both, i.e. no ``topk`` and no transpose of the block;
   * a row block's triples are merged into its best set (one sort of the keys ``row | value``)
     when they pile up and at the end, which lowers its thresholds. After ``S`` points have been
     seen, a new block of ``B`` points yields about ``m B / S`` entries per row: about
     ``m (1 + ln(N / B))`` per row in all (``m N / B`` with the diagonal blocks' thresholds kept).

   Memory is O(N m + B^2) for any N (B is bounded by ``max_chunk_bytes``); no N x N matrix.
   Entries equal to a threshold may be dropped: the row already holds ``m`` candidates at most
   that large, so its best set is unchanged up to ties.
2. **Refinement (float64).** The candidates' distances are recomputed as ``||x_i - x_j||`` in
   float64 (direct differences of the input rows, no cancellation), sorted, and the first ``k``
   kept. Float32 rounding can only swap candidates whose distances agree to ~1e-6 relative, and
   the ``extra`` margin keeps the true k-th neighbour in the candidate set, so the result equals
   an exact float64 kNN (e.g. scikit-learn's brute force) to rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workbench.errors import WorkbenchError

from .checks import check_array
from .normalize import center

if TYPE_CHECKING:  # torch is imported when the search runs: the rest of workbench.stats needs numpy alone
    import torch


class _Candidates:
    """Best ``m`` float32 candidates per row, plus pending ``(row, col, value)`` triples."""

    def __init__(self, bounds: list[int], m: int):
        import torch

        n = bounds[-1]
        self.bounds, self.m = bounds, m
        self.val = torch.full((n, m), float("inf"), dtype=torch.float32)  # sorted per row
        self.idx = torch.zeros((n, m), dtype=torch.int64)
        self.thr = torch.full((n,), float("inf"), dtype=torch.float32)  # = val[:, -1]
        self.pending: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in bounds[:-1]]
        self.count = [0] * (len(bounds) - 1)  # pending triples per block, flushed beyond 4 m rows

    def add(self, b: int, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> None:
        """Queue triples for row block ``b`` (``rows`` local to the block, ``cols`` global)."""
        if rows.numel():
            self.pending[b].append((rows, cols, vals))
            self.count[b] += rows.numel()
            if self.count[b] > 4 * self.m * (self.bounds[b + 1] - self.bounds[b]):
                self.flush(b)

    def flush(self, b: int) -> None:
        """Merge block ``b``'s pending triples into its best sets (one sort); lower thresholds."""
        if not self.pending[b]:
            return
        import torch

        r0, r1 = self.bounds[b], self.bounds[b + 1]
        nr, m = r1 - r0, self.m
        rows = torch.cat([torch.arange(nr).repeat_interleave(m)] + [p[0] for p in self.pending[b]])
        cols = torch.cat([self.idx[r0:r1].reshape(-1)] + [p[1] for p in self.pending[b]])
        vals = torch.cat([self.val[r0:r1].reshape(-1)] + [p[2] for p in self.pending[b]])
        self.pending[b], self.count[b] = [], 0
        # Non-negative float32 values order like their bit patterns: one int64 sort by (row, value).
        key = (rows << 32) | vals.clamp_min(0.0).view(torch.int32).to(torch.int64)
        order = torch.sort(key).indices
        # Every row has its m best slots (possibly inf) among the triples: the first m of each row.
        counts = torch.bincount(rows, minlength=nr)
        start = torch.cumsum(counts, 0) - counts
        take = order[(start[:, None] + torch.arange(m)).reshape(-1)]
        self.val[r0:r1] = vals[take].view(nr, m)
        self.idx[r0:r1] = cols[take].view(nr, m)
        self.thr[r0:r1] = self.val[r0:r1, -1]


def _candidates(X: np.ndarray, m: int, B: int) -> torch.Tensor:
    """Stage 1: indices (N, m) of each row's ``m`` best float32 candidates, blocks of about B rows."""
    import torch

    n = X.shape[0]
    # translation and scale change no neighbour order: stage 1 works on centred rows scaled to unit
    # RMS, so float32 neither overflows (|x| ~ 1e30 squares to inf) nor underflows, and is most precise
    centred = center(X)
    scale = float(np.sqrt(np.mean(centred * centred))) or 1.0
    X32 = torch.from_numpy((centred / scale).astype(np.float32))
    sq = (X32 * X32).sum(dim=1)
    nb = -(-n // B)
    bounds = [int(round(i * n / nb)) for i in range(nb + 1)]
    cand = _Candidates(bounds, m)

    def block(a: int, b: int) -> torch.Tensor:
        i0, i1, j0, j1 = bounds[a], bounds[a + 1], bounds[b], bounds[b + 1]
        d2 = torch.addmm(sq[None, j0:j1], X32[i0:i1], X32[j0:j1].T, beta=1.0, alpha=-2.0)
        return d2.add_(sq[i0:i1, None])

    # Diagonal blocks first: exact top-m, so every row has a finite threshold from the start.
    for a in range(nb):
        d2 = block(a, a)
        r = torch.arange(d2.shape[0])
        d2[r, r] = float("inf")
        v, ix = torch.topk(d2, min(m, d2.shape[1]), dim=1, largest=False, sorted=False)
        rows = r[:, None].expand_as(ix).reshape(-1)
        cand.add(a, rows, ix.reshape(-1) + bounds[a], v.reshape(-1))
        cand.flush(a)
    # Off-diagonal blocks (a, b > a): one comparison against max(row threshold, column
    # threshold) finds every entry that can enter the best set of its row or of its column;
    # each goes to both (a surplus entry is harmless, the merge keeps the best m).
    for a in range(nb):
        i0, i1 = bounds[a], bounds[a + 1]
        for b in range(a + 1, nb):
            j0, j1 = bounds[b], bounds[b + 1]
            d2 = block(a, b)
            thr = torch.maximum(cand.thr[i0:i1, None], cand.thr[None, j0:j1])
            ri, ci = torch.lt(d2, thr).nonzero().unbind(1)
            vals = d2[ri, ci]
            del d2, thr
            cand.add(a, ri, ci + j0, vals)
            cand.add(b, ci, ri + i0, vals)
        cand.flush(a)  # row block a has now seen every column: its candidates are final
    return cand.idx


def _refine(X: np.ndarray, best_i: torch.Tensor, k: int, return_indices: bool):
    """Stage 2: exact float64 distances of the candidates by direct differences (no cancellation),
    in sub-blocks of ~2 MiB so that the gathered rows stay in cache. The candidates are gathered
    from X as given (float32 input: half the memory traffic; the difference of two float32 numbers
    is exact in float64)."""
    import torch

    n, m = best_i.shape
    X64 = X.astype(np.float64, copy=False)
    Xt, X64t = (torch.from_numpy(a if a.flags.writeable else a.copy()) for a in (X, X64))
    dists = np.empty((n, k), dtype=np.float64)
    idx_out = np.empty((n, k), dtype=np.int64) if return_indices else None
    sub = int(max(1, min(n, 2**21 // (8 * m * X.shape[1]))))
    for s0 in range(0, n, sub):
        s1 = min(n, s0 + sub)
        c = best_i[s0:s1]
        diff = Xt[c].to(torch.float64)
        diff -= X64t[s0:s1, None, :]
        exact, order = torch.sort(torch.linalg.vector_norm(diff, dim=2), dim=1)
        dists[s0:s1] = exact[:, :k].numpy()
        if return_indices:
            idx_out[s0:s1] = torch.gather(c, 1, order[:, :k]).numpy()
    return (dists, idx_out) if return_indices else dists


def knn_distances(X, k: int, *, max_chunk_bytes: int = 2**28, extra: int | None = None,
                  return_indices: bool = False, block_rows: int | None = None):
    """Distances from every row of X to its ``k`` nearest other rows (self excluded).

    Exact (float64) for any N with bounded memory; see the module docstring for the method.

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
    X = check_array(X, min_rows=2)
    n = X.shape[0]
    if not 1 <= k < n:
        raise WorkbenchError(f"k-nearest neighbours needs 1 <= k < N; got k={k}, N={n}.")
    extra = max(4, k // 4) if extra is None else int(extra)
    m = min(n - 1, k + extra)
    # Equal-sized blocks of at most B rows; a block, its threshold matrix and mask (9 bytes an
    # entry) fit in max_chunk_bytes.
    B = int(max(1, min(n, block_rows if block_rows else 2048, int(np.sqrt(max_chunk_bytes / 10)))))
    import torch

    with torch.no_grad():
        return _refine(X, _candidates(X.astype(np.float64, copy=False), m, B), k, return_indices)
