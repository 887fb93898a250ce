"""Outlier dimensions of a layer and how they depend on position (docs/methods.md, "Outliers, whitening
and layer similarity").

Luo et al. (2021, "Positional Artefacts Propagate Through Masked Language Model Embeddings") find a few
hidden dimensions whose values sit at the extreme of the layer's vectors for almost every token, persist
across layers and carry position. Two rules, both streamed over token chunks:

``sigma`` (the default, the paper's 3-sigma rule as used here)
    Average the layer's token vectors (the paper's "average vector" m, [D]); a dimension d is an outlier
    when ``|m_d - mean(m)| > threshold * std(m)`` (threshold 3: beyond three standard deviations of the
    layer's average values).
``extreme_share``
    The share of tokens whose largest or smallest coordinate is d ("consistently bear the smallest or
    largest values"); an outlier when the share exceeds ``threshold`` (e.g. 0.5).

The positional test: ``position_r2`` of a dimension is the share of its variance across tokens that the
token's position explains (between-position sum of squares over the total, an eta squared). Pure noise of
P positions over N tokens gives about (P - 1) / (N - 1); compare outliers with the median dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from workbench.errors import WorkbenchError

from .checks import check_array

RULES = ("sigma", "extreme_share")
DEFAULT_RULE = "sigma"
DEFAULT_THRESHOLD = {"sigma": 3.0, "extreme_share": 0.5}


@dataclass
class DimensionStats:
    """Streamed per-dimension statistics of one layer's N token vectors [N, D] (float64 sums).

    ``mean`` / ``std`` [D] over tokens; ``extreme_share`` [D]: share of tokens whose max or min coordinate
    is the dimension; with positions: ``position_mean`` [P, D], ``position_count`` [P], ``position_r2`` [D].
    """

    n: int
    mean: np.ndarray
    std: np.ndarray
    extreme_share: np.ndarray
    position_mean: np.ndarray | None = None
    position_count: np.ndarray | None = None
    position_r2: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.size)

    def zscore(self) -> np.ndarray:
        """``(m_d - mean(m)) / std(m)`` of the average vector m (the sigma rule's score) [D]."""
        sd = float(self.mean.std())
        return (self.mean - self.mean.mean()) / sd if sd > 0 else np.zeros_like(self.mean)

    def scores(self, rule: str = DEFAULT_RULE) -> np.ndarray:
        """Each dimension's score under ``rule`` (|z| for sigma, the share for extreme_share) [D]."""
        check_rule(rule)
        return np.abs(self.zscore()) if rule == "sigma" else self.extreme_share

    def outliers(self, rule: str = DEFAULT_RULE, threshold: float | None = None) -> np.ndarray:
        """Indices of the outlier dimensions (sorted by score, largest first)."""
        score = self.scores(rule)
        thr = DEFAULT_THRESHOLD[rule] if threshold is None else float(threshold)
        idx = np.flatnonzero(score > thr)
        return idx[np.argsort(-score[idx], kind="stable")]


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise WorkbenchError(f"outlier rule must be one of {', '.join(RULES)}; got {rule!r}.")
    return rule


def dimension_stats(chunks: Iterable, positions: Iterable | None = None, max_position: int | None = None
                    ) -> DimensionStats:
    """Per-dimension statistics of token vectors given as [n_i, D] chunks (or one matrix), with the
    matching position of every row (``positions``: chunks of [n_i] ints, optional) for the positional
    test. ``max_position`` caps the positions kept (later ones are pooled into the last)."""
    if isinstance(chunks, np.ndarray) or hasattr(chunks, "shape"):
        chunks = [chunks]
        positions = None if positions is None else [np.asarray(positions)]
    pos_iter = iter(positions) if positions is not None else None
    n, s, q, ext = 0, None, None, None
    ps = pq = pc = None
    for c in chunks:
        x = check_array(c, "layer", min_rows=0).astype(np.float64)
        if x.shape[0] == 0:
            if pos_iter is not None:
                next(pos_iter)
            continue
        if s is None:
            d = x.shape[1]
            s, q, ext = np.zeros(d), np.zeros(d), np.zeros(d)
        s += x.sum(0)
        q += np.einsum("ij,ij->j", x, x)
        ext += np.bincount(x.argmax(1), minlength=x.shape[1]) + np.bincount(x.argmin(1), minlength=x.shape[1])
        n += x.shape[0]
        if pos_iter is not None:
            p = np.asarray(next(pos_iter), dtype=np.int64)
            p = np.minimum(p, max_position) if max_position is not None else p
            top = int(p.max()) + 1
            if ps is None or top > ps.shape[0]:
                ps, pq, pc = (_grow(a, top) for a in (ps, pq, pc)) if ps is not None else (
                    np.zeros((top, x.shape[1])), np.zeros((top, x.shape[1])), np.zeros(top))
            np.add.at(ps, p, x)
            np.add.at(pq, p, x * x)
            pc += np.bincount(p, minlength=pc.shape[0])
    if n == 0:
        raise WorkbenchError("no token vectors given (N = 0).")
    mean = s / n
    var = np.maximum(q / n - mean**2, 0.0)
    out = DimensionStats(n, mean, np.sqrt(var), ext / n)
    if ps is not None:
        seen = pc > 0
        out.position_count = pc
        out.position_mean = np.divide(ps, pc[:, None], out=np.full_like(ps, np.nan), where=pc[:, None] > 0)
        between = (ps[seen] ** 2 / pc[seen, None]).sum(0) - s**2 / n
        total = q - s**2 / n
        out.position_r2 = np.divide(between, total, out=np.zeros_like(total), where=total > 1e-12 * np.maximum(q, 1))
    return out


def _grow(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + a.shape[1:])
    out[: a.shape[0]] = a
    return out


def outlier_dimensions(X, rule: str = DEFAULT_RULE, threshold: float | None = None) -> np.ndarray:
    """Outlier dimensions of one matrix X [N, D] under ``rule`` (see the module docstring), largest first."""
    return dimension_stats(X).outliers(check_rule(rule), threshold)
