"""Representation transforms fit on one set of vectors and applied to another (docs/methods.md,
"Outliers, whitening and layer similarity").

``transform`` is one of :data:`TRANSFORMS`; the statistics it needs (mean, covariance, outlier
dimensions) are fit on ``fit`` rows (default: the rows it is applied to) and recorded by
:meth:`TransformFit.describe` for the manifest:

``none``             the vectors as they are;
``clip_outliers``    the outlier dimensions (:mod:`.outliers`, rule and threshold as given) set to 0
                     (``clip_value="zero"``) or to their fit-set mean (``"mean"``) (Luo et al. 2021);
``remove_outliers``  the outlier dimensions dropped (D shrinks);
``whiten``           ``x~ = (x - mu) U Lambda^{-1/2}`` with ``Sigma = cov(X) = U Lambda U^T`` (Su et al. 2021,
                     WhiteningBERT, Huang et al. 2021): identity covariance on the fit set (null directions of
                     a rank-deficient Sigma dropped, see below);
``whiten_k``         the same, keeping the first k columns (the top-k principal directions);
``remove_top_pcs``   centre and project out the top k principal directions ("all-but-the-top", Mu &
                     Viswanath 2018).

``k = 0`` means the documented default: D // 3 for ``whiten_k`` (WhiteningBERT's 256 of 768) and
max(1, D // 100) for ``remove_top_pcs`` (Mu & Viswanath's D/100). Whitening needs a full-rank covariance:
with no more points than dimensions it is refused unless ``shrinkage`` alpha > 0 is given, which whitens
with ``(1 - alpha) Sigma + alpha tr(Sigma)/D I`` instead (then the covariance is not the identity). With
more points than dimensions but exact linear constraints (a LayerNorm output, as every layer of a BERT
encoder, lies in a hyperplane: rank D - 1), ``whiten`` whitens the directions that vary and drops the null
ones (``null_directions_dropped`` in the record; D' = rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workbench.errors import WorkbenchError

from .checks import check_array
from .outliers import DEFAULT_RULE, DEFAULT_THRESHOLD, check_rule, dimension_stats
from .spectrum import scatter_matrix

TRANSFORMS = ("none", "clip_outliers", "remove_outliers", "whiten", "whiten_k", "remove_top_pcs")
CLIP_VALUES = ("zero", "mean")
#: smallest eigenvalue kept by whitening, relative to the largest (below: the covariance is singular)
RANK_TOLERANCE = 1e-10


@dataclass
class TransformFit:
    """A transform's fitted statistics; :meth:`apply` maps [N, D] rows with them."""

    name: str
    n_fit: int
    dim: int
    mean: np.ndarray | None = None
    basis: np.ndarray | None = None  # [D, k]: U Lambda^{-1/2} (whiten) or the top PCs (remove_top_pcs)
    dims: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # outlier dimensions
    fill: np.ndarray | None = None  # the value each clipped dimension gets
    k: int = 0
    shrinkage: float = 0.0
    settings: dict = field(default_factory=dict)

    def apply(self, X) -> np.ndarray:
        """The transformed rows, float64 [N, D'] (D' = D except for remove_outliers, whiten_k and a whiten that dropped null directions)."""
        X = check_array(X, "X").astype(np.float64)
        if X.shape[1] != self.dim:
            raise WorkbenchError(f"the transform was fit on {self.dim}-dimensional vectors; got {X.shape[1]}.")
        if self.name == "none":
            return X
        if self.name == "clip_outliers":
            X = X.copy()
            X[:, self.dims] = self.fill
            return X
        if self.name == "remove_outliers":
            return np.delete(X, self.dims, axis=1)
        Xc = X - self.mean
        if self.name in ("whiten", "whiten_k"):
            return Xc @ self.basis
        return Xc - (Xc @ self.basis) @ self.basis.T  # remove_top_pcs

    def describe(self) -> dict:
        """A JSON-able record of the fit (for the manifest / summary)."""
        out = {"transform": self.name, "n_fit": self.n_fit, "dim": self.dim, **self.settings}
        if self.name in ("clip_outliers", "remove_outliers"):
            out["outlier_dims"] = [int(d) for d in self.dims]
        if self.name in ("whiten_k", "remove_top_pcs"):
            out["k"] = self.k
        if self.name in ("whiten", "whiten_k"):
            out["shrinkage"] = self.shrinkage
        return out


def check_transform(name: str) -> str:
    if name not in TRANSFORMS:
        raise WorkbenchError(f"transform must be one of {', '.join(TRANSFORMS)}; got {name!r}.")
    return name


def default_k(name: str, dim: int) -> int:
    """The k that ``k = 0`` stands for (see the module docstring)."""
    return max(1, dim // 3) if name == "whiten_k" else max(1, dim // 100)


def fit_transform(X, name: str, *, k: int = 0, outlier_rule: str = DEFAULT_RULE,
                  outlier_threshold: float | None = None, clip_value: str = "zero",
                  shrinkage: float = 0.0) -> TransformFit:
    """Fit transform ``name`` on the rows of X [N, D] (see the module docstring for each)."""
    check_transform(name)
    X = check_array(X, "the transform's fit set", min_rows=2)
    n, d = X.shape
    if name == "none":
        return TransformFit(name, n, d)
    if name in ("clip_outliers", "remove_outliers"):
        return _fit_outliers(X, name, outlier_rule, outlier_threshold, clip_value)
    G, _ = scatter_matrix(X)
    mean = X.astype(np.float64).mean(axis=0)
    evals, evecs = np.linalg.eigh(G / (n - 1))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    kk = int(k) if k else default_k(name, d)
    if name == "remove_top_pcs":
        _check_k(kk, min(n - 1, d), name, n, d)
        return TransformFit(name, n, d, mean=mean, basis=np.ascontiguousarray(evecs[:, :kk]), k=kk)
    keep = d if name == "whiten" else kk
    if name == "whiten_k":
        _check_k(kk, d, name, n, d)
    settings = {}
    if shrinkage > 0:
        evals = (1 - shrinkage) * evals + shrinkage * evals.sum() / d
    else:
        rank = _rank(evals)
        if name == "whiten" and n > d and rank < d:
            # more points than dimensions, yet exact linear constraints (a LayerNorm output lies in a hyperplane:
            # rank D - 1): whiten the rank directions with variance, drop the null ones (said in the record)
            keep = rank
            settings["null_directions_dropped"] = d - rank
        if keep > n - 1 or keep > rank:
            raise WorkbenchError(_rank_message(name, n, d, keep, evals))
    basis = evecs[:, :keep] / np.sqrt(evals[:keep])
    return TransformFit(name, n, d, mean=mean, basis=np.ascontiguousarray(basis), k=keep, shrinkage=float(shrinkage),
                        settings=settings)


def _rank(evals: np.ndarray) -> int:
    """Eigenvalues (descending) above RANK_TOLERANCE of the largest."""
    return int((evals > RANK_TOLERANCE * max(evals[0], 1e-300)).sum())


def _rank_message(name: str, n: int, d: int, keep: int, evals: np.ndarray) -> str:
    rank = _rank(evals)
    return (f"{name} needs a covariance of rank {keep}, but {n} points in {d} dimensions give rank {rank}"
            f"{' (at most N - 1 = ' + str(n - 1) + ')' if n <= d else ''}: whitening would divide by zero. "
            f"Use more points (texts) than dimensions, set transform_shrinkage (e.g. 0.1: Sigma -> 0.9 Sigma + "
            f"0.1 tr(Sigma)/D I), or use whiten_k with transform_k <= {max(rank, 1)}.")


def _check_k(k: int, most: int, name: str, n: int, d: int) -> None:
    if not 1 <= k <= most:
        raise WorkbenchError(f"{name}: transform_k must be in 1..{most} for {n} points in {d} dimensions; got {k}.")


def _fit_outliers(X: np.ndarray, name: str, rule: str, threshold, clip_value: str) -> TransformFit:
    check_rule(rule)
    if clip_value not in CLIP_VALUES:
        raise WorkbenchError(f"clip_value must be zero or mean; got {clip_value!r}.")
    stats = dimension_stats(X)
    thr = DEFAULT_THRESHOLD[rule] if threshold is None else float(threshold)
    dims = np.sort(stats.outliers(rule, thr))
    fill = np.zeros(dims.size) if clip_value == "zero" else stats.mean[dims]
    settings = {"outlier_rule": rule, "outlier_threshold": thr}
    if name == "clip_outliers":
        settings["clip_value"] = clip_value
    return TransformFit(name, X.shape[0], X.shape[1], mean=stats.mean, dims=dims, fill=fill, settings=settings)


def apply_transform(X, name: str, fit=None, **kwargs) -> tuple[np.ndarray, TransformFit]:
    """Fit ``name`` on ``fit`` rows (default: X itself) and apply it to X: ``(X~, the fit)``."""
    fitted = fit_transform(X if fit is None else fit, name, **kwargs)
    return fitted.apply(X), fitted
