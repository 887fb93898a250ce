"""Similarity of two representations of the same inputs, and of every pair of layers (docs/methods.md,
"Outliers, whitening and layer similarity").

Every measure compares X [n, d1] and Y [n, d2] whose rows are the same n inputs (tokens or texts):

``cka`` (Kornblith et al. 2019, linear CKA)
    With column-centred X, Y: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``. 1 for X = Y; invariant to
    orthogonal transforms and isotropic scaling of either side, not to arbitrary linear maps.
``cka_debiased``
    The same with the unbiased HSIC estimator (Song et al. 2012), in Kornblith et al.'s feature-space
    form: needs only the rows' squared norms besides ``Y^T X``.
``procrustes`` (orthogonal Procrustes similarity)
    Centre, scale each to unit Frobenius norm: ``max_Q <XQ, Y> = ||X^T Y||_*`` (nuclear norm) over
    partial isometries Q, in [0, 1]; the orthogonal Procrustes distance is ``2 - 2 * procrustes``.
``linear_fit`` (LLM-Microscope ``procrustes_similarity``, Razzhigaev et al. 2024)
    Centre, unit Frobenius norm, fit Y ~ X A by least squares: ``1 - ||XA - Y||^2 = ||P_X Y||^2``, the
    share of Y's variance a linear map of X explains. Asymmetric (X predicts Y). Despite its name in
    LLM-Microscope, it is not an orthogonal Procrustes fit.
``linearity`` / ``linearity_residual_removed``
    ``linear_fit`` of consecutive layers (X_l -> X_{l+1}), and LLM-Microscope's
    ``procrustes_similarity_centered`` (X_l -> X_{l+1} - X_l: the block's update without the residual).

:func:`similarity_matrices` computes every pair of layers at once: each layer is centred once into one
[n, sum d] float matrix, each layer's own statistics (``||X^T X||_F``, trace, row norms, an orthonormal
basis) are computed once, and each pair's cross-product ``X_i^T X_j`` once (one GEMM per row of the
matrix, the upper triangle only within a model); every measure is read off those products.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from workbench.errors import WorkbenchError

from .checks import check_array

SYMMETRIC_METRICS = ("cka", "cka_debiased", "procrustes")
PAIR_METRICS = SYMMETRIC_METRICS + ("linear_fit",)
CONSECUTIVE_METRICS = ("linearity", "linearity_residual_removed")
METRICS = PAIR_METRICS + CONSECUTIVE_METRICS
DEFAULT_METRICS = ("cka", "cka_debiased", "procrustes", "linearity", "linearity_residual_removed")

DEFINITIONS = {
    "cka": "linear CKA, ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) of column-centred X, Y (Kornblith et al. 2019)",
    "cka_debiased": "linear CKA with the unbiased HSIC estimator (Song et al. 2012; Kornblith et al.'s feature-space form)",
    "procrustes": "orthogonal Procrustes similarity ||X^T Y||_* of centred, unit-Frobenius X, Y (distance = 2 - 2 sim)",
    "linear_fit": "LLM-Microscope procrustes_similarity: 1 - ||XA - Y||^2, least-squares A, centred unit-Frobenius "
                  "X (row layer) and Y (column layer)",
    "linearity": "linear_fit of consecutive layers X_l -> X_{l+1} (Razzhigaev et al. 2024)",
    "linearity_residual_removed": "linear_fit of X_l -> X_{l+1} - X_l (LLM-Microscope procrustes_similarity_centered)",
}


def parse_metrics(spec) -> list[str]:
    """'cka,procrustes' or a list -> validated metric names (order kept); ValueError when unknown."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names = list(dict.fromkeys(str(s).strip() for s in parts if str(s).strip()))
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or spec!r}")
    return names


# ---- one pair --------------------------------------------------------------------------------


def _pair(X, Y, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    X = check_array(X, "X", min_rows=min_rows).astype(np.float64)
    Y = check_array(Y, "Y", min_rows=min_rows).astype(np.float64)
    if X.shape[0] != Y.shape[0]:
        raise WorkbenchError(f"X and Y must hold the same inputs (rows); got {X.shape[0]} and {Y.shape[0]} rows.")
    return X - X.mean(axis=0), Y - Y.mean(axis=0)


def _debiased(xty: float, rx: np.ndarray | float, ry: np.ndarray | float, nx: float, ny: float, n: int) -> float:
    """Kornblith et al.'s ``_debiased_dot_product_similarity_helper``: the unbiased HSIC of centred features,
    times n (n - 3), from ``||Y^T X||^2``, the rows' squared norms ``rx``/``ry`` (or their dot) and the total
    squared norms."""
    dot = float(np.dot(rx, ry)) if isinstance(rx, np.ndarray) else float(rx)
    return xty - n / (n - 2.0) * dot + nx * ny / ((n - 1.0) * (n - 2.0))


def _unit(norm2: float, name: str) -> None:
    if not norm2 > 0:
        raise WorkbenchError(f"{name} is constant (every row the same): similarity is undefined. "
                             "Check the layer / positions selected.")


def linear_cka(X, Y, *, debiased: bool = False) -> float:
    """Linear CKA of X [n, d1] and Y [n, d2] (rows: the same inputs); ``debiased`` uses the unbiased HSIC
    estimator (needs n >= 4). Float64 throughout."""
    X, Y = _pair(X, Y, min_rows=4 if debiased else 2)
    xty = float(np.linalg.norm(Y.T @ X) ** 2)
    xx, yy = float(np.linalg.norm(X.T @ X)), float(np.linalg.norm(Y.T @ Y))
    _unit(xx, "X")
    _unit(yy, "Y")
    if not debiased:
        return xty / (xx * yy)
    n = X.shape[0]
    rx, ry = np.einsum("ij,ij->i", X, X), np.einsum("ij,ij->i", Y, Y)
    nx, ny = float(rx.sum()), float(ry.sum())
    num = _debiased(xty, rx, ry, nx, ny, n)
    den = np.sqrt(max(_debiased(xx**2, rx, rx, nx, nx, n), 0.0) * max(_debiased(yy**2, ry, ry, ny, ny, n), 0.0))
    return float(num / den) if den > 0 else float("nan")


def procrustes_similarity(X, Y) -> float:
    """Orthogonal Procrustes similarity ``||X^T Y||_*`` of centred, unit-Frobenius X [n, d1], Y [n, d2]."""
    X, Y = _pair(X, Y)
    nx, ny = float((X * X).sum()), float((Y * Y).sum())
    _unit(nx, "X")
    _unit(ny, "Y")
    return float(np.linalg.svd(X.T @ Y, compute_uv=False).sum() / np.sqrt(nx * ny))


def _basis(Xc: np.ndarray) -> np.ndarray:
    """Orthonormal basis [n, r] of the column space of Xc (SVD, rank cut at the float64 rounding level)."""
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    return U[:, s > s[0] * max(Xc.shape) * np.finfo(np.float64).eps] if s.size and s[0] > 0 else U[:, :0]


def linear_fit_similarity(X, Y) -> float:
    """LLM-Microscope ``procrustes_similarity(x, y)``: ``1 - ||XA - Y||^2`` with X, Y centred and scaled to
    unit Frobenius norm and A the least-squares map, i.e. ``||P_X Y||^2`` (rank-revealing, so a rank-
    deficient X gives its projection instead of the reference's division by zero)."""
    X, Y = _pair(X, Y)
    ny = float((Y * Y).sum())
    _unit(float((X * X).sum()), "X")
    _unit(ny, "Y")
    Q = _basis(X)
    return float(np.linalg.norm(Q.T @ Y) ** 2 / ny)


def linearity_score(X, Y, *, remove_residual: bool = False) -> float:
    """How linear the map from layer X to the next layer Y is: :func:`linear_fit_similarity` of (X, Y), or
    with ``remove_residual`` of (X, Y - X) (LLM-Microscope ``procrustes_similarity_centered``)."""
    X = check_array(X, "X", min_rows=2).astype(np.float64)
    Y = check_array(Y, "Y", min_rows=2).astype(np.float64)
    if X.shape != Y.shape:
        raise WorkbenchError(f"consecutive layers must have the same shape; got {X.shape} and {Y.shape}.")
    return linear_fit_similarity(X, Y - X if remove_residual else Y)


# ---- every pair of layers --------------------------------------------------------------------


@dataclass
class FeatureBank:
    """Every layer of one model centred once, side by side: ``Z`` [n, sum d_l] (torch, on ``device``),
    ``offsets`` of each layer's columns, each layer's trace ``||X_l||_F^2`` and rows' squared norms
    ``R`` [L, n] (float64), and on demand an orthonormal basis of a layer's column space."""

    Z: "object"
    offsets: list[int]
    trace: np.ndarray
    R: np.ndarray
    n: int

    @property
    def n_layers(self) -> int:
        return len(self.offsets) - 1

    def block(self, layer: int):
        return self.Z[:, self.offsets[layer]:self.offsets[layer + 1]]

    def basis(self, layer: int, float64: bool = False):
        """Orthonormal basis [n, r] of the centred layer (float64 QR; SVD when it is rank-deficient), in the
        bank's precision (``float64``: kept in float64); computed on each call (each is used once, and n x d
        apiece adds up)."""
        import torch

        X = self.block(layer).double()
        Q, Rm = torch.linalg.qr(X)
        diag = Rm.diagonal().abs()
        if diag.numel() and diag.min() <= diag.max() * max(X.shape) * 1e-13:
            U, s, _ = torch.linalg.svd(X, full_matrices=False)
            Q = U[:, s > s[0] * max(X.shape) * 1e-15]
        return Q if float64 else Q.to(self.Z.dtype)


def feature_bank(layers: Sequence, *, device: str = "cpu", precision: str = "float32") -> FeatureBank:
    """Centre each layer [n, d_l] once into one matrix (``layers``: arrays or zero-argument callables,
    read one at a time). The bank is allocated once when the layers are equally wide (one model), so the
    peak is the bank plus one layer in float64."""
    import torch

    dtype = {"float32": torch.float32, "float64": torch.float64}.get(precision)
    if dtype is None:
        raise WorkbenchError(f"precision must be float32 or float64; got {precision!r}.")
    layers = list(layers)
    if not layers:
        raise WorkbenchError("no layers given.")
    Z, blocks, offsets, traces, norms = None, [], [0], [], []
    for k, item in enumerate(layers):
        X = check_array(item() if callable(item) else item, f"layer {k}", min_rows=2).astype(np.float64)
        n = norms[0].size if norms else X.shape[0]
        if X.shape[0] != n:
            raise WorkbenchError(f"every layer must hold the same {n} rows; layer {k} has {X.shape[0]}.")
        X -= X.mean(axis=0)
        r = np.einsum("ij,ij->i", X, X)
        traces.append(float(r.sum()))
        norms.append(r)
        block = torch.from_numpy(X).to(dtype)
        if k == 0:
            Z = torch.empty((n, X.shape[1] * len(layers)), dtype=dtype, device=device)
        if Z is not None and offsets[-1] + X.shape[1] == X.shape[1] * (k + 1):
            Z[:, offsets[-1]:offsets[-1] + X.shape[1]] = block.to(device)
        else:  # layers of different widths: gathered, then joined
            if Z is not None:
                blocks, Z = [Z[:, :offsets[-1]]], None
            blocks.append(block.to(device))
        offsets.append(offsets[-1] + X.shape[1])
    bank = Z if Z is not None else torch.cat(blocks, dim=1)
    return FeatureBank(bank, offsets, np.asarray(traces), np.stack(norms), int(norms[0].size))


@contextmanager
def _one_thread():
    """Small decompositions (576 x 576 SVDs) run far faster on one thread than spread over a shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _block_sums(values, offsets: list[int], start: int = 0) -> np.ndarray:
    """Sums of the squared entries of each layer's block of columns of ``values`` [d, columns]."""
    import torch

    col = values.square().sum(dim=0, dtype=torch.float64).cpu().numpy()
    return np.add.reduceat(col, np.asarray(offsets[start:-1]) - offsets[start])


def _self_norms(bank: FeatureBank) -> np.ndarray:
    """``||X_l^T X_l||_F^2`` of every layer (float64)."""
    return np.array([float((bank.block(l).T @ bank.block(l)).double().square().sum()) for l in range(bank.n_layers)])


def _debiased_self(bank: FeatureBank, self2: np.ndarray) -> np.ndarray:
    """The debiased HSIC of each layer with itself (the debiased CKA's normalisation, squared)."""
    return np.array([_debiased(self2[l], float(bank.R[l] @ bank.R[l]), None, bank.trace[l], bank.trace[l], bank.n)
                     for l in range(bank.n_layers)])


def similarity_matrices(layers: Sequence, other: Sequence | None = None, *, metrics=DEFAULT_METRICS,
                        device: str = "cpu", precision: str = "float32",
                        progress: Callable[[int, int, str], None] | None = None) -> dict[str, np.ndarray]:
    """Every measure between every layer of ``layers`` (rows) and of ``other`` (columns; default: the same
    layers), ``{metric: [L_a, L_b] float64}``, plus the consecutive-layer scores ``{metric: [L_a - 1]}``
    (within one model only; empty for two models).

    ``layers`` / ``other``: sequences of [n, d_l] arrays (or zero-argument callables returning one, or a
    :class:`FeatureBank`), the same n rows everywhere. Cross-products run in ``precision`` (float32: about
    1e-6 relative) on ``device``; each layer is centred once, its own statistics are computed once and
    each pair's ``X_i^T X_j`` once (within a model, the upper triangle only).
    """
    import torch

    metrics = parse_metrics(metrics)
    a = layers if isinstance(layers, FeatureBank) else feature_bank(layers, device=device, precision=precision)
    same = other is None
    b = a if same else (other if isinstance(other, FeatureBank) else
                        feature_bank(other, device=device, precision=precision))
    if b.n != a.n:
        raise WorkbenchError(f"the two sets of layers hold {a.n} and {b.n} rows: they must be the same inputs.")
    pair = [m for m in metrics if m in PAIR_METRICS]
    if "cka_debiased" in pair and a.n < 4:
        raise WorkbenchError(f"debiased CKA needs at least 4 rows; got {a.n}.")
    xty = np.full((a.n_layers, b.n_layers), np.nan)
    out = {m: np.full((a.n_layers, b.n_layers), np.nan) for m in pair if m != "cka"}
    with torch.no_grad():
        for i in range(a.n_layers):
            if progress:
                progress(i, a.n_layers, f"layer {i}: cross-products")
            start = i if same else 0
            C = a.block(i).T @ b.Z[:, b.offsets[start]:]  # d_i x (the columns of layers start..)
            xty[i, start:] = _block_sums(C, b.offsets, start)
            if "procrustes" in out:
                with _one_thread():
                    for j in range(start, b.n_layers):
                        lo, hi = b.offsets[j] - b.offsets[start], b.offsets[j + 1] - b.offsets[start]
                        out["procrustes"][i, j] = float(torch.linalg.svdvals(C[:, lo:hi].double()).sum())
            if "linear_fit" in out:
                out["linear_fit"][i] = _block_sums(a.basis(i).T @ b.Z, b.offsets) / b.trace
    if same:
        xty = np.triu(xty) + np.triu(xty, 1).T
        if "procrustes" in out:
            out["procrustes"] = np.triu(out["procrustes"]) + np.triu(out["procrustes"], 1).T
    sa = np.diag(xty).copy() if same else _self_norms(a)
    sb = sa if same else _self_norms(b)
    if "cka" in pair:
        out["cka"] = xty / np.sqrt(np.outer(sa, sb))
    if "cka_debiased" in out:
        num = xty - a.n / (a.n - 2.0) * (a.R @ b.R.T) + np.outer(a.trace, b.trace) / ((a.n - 1.0) * (a.n - 2.0))
        out["cka_debiased"] = num / np.sqrt(np.outer(_debiased_self(a, sa), _debiased_self(b, sb)))
    if "procrustes" in out:
        out["procrustes"] /= np.sqrt(np.outer(a.trace, b.trace))
    if set(metrics) & set(CONSECUTIVE_METRICS):
        scores = consecutive_scores(a) if same else (np.full(0, np.nan), np.full(0, np.nan))
        out.update(dict(zip(CONSECUTIVE_METRICS, scores)))
    if progress:
        progress(a.n_layers, a.n_layers, "done")
    return {m: out[m] for m in metrics}


def consecutive_scores(layers, *, device: str = "cpu", precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """[L - 1] linearity scores of consecutive layers l -> l + 1 and l -> (l + 1) - l, from one
    :class:`FeatureBank` (or the layers to build it), both in one pass.

    With X = layer l and Y = layer l + 1 (centred), ``||P_X Y||^2 = ||L^{-1} X^T Y||_F^2`` where
    ``X^T X = L L^T`` (Cholesky), and ``X^T (Y - X) = X^T Y - X^T X``: two float64 products per step (the
    next step reuses ``Y^T Y``), no n x d basis; a layer whose ``X^T X`` is singular falls back to an
    orthonormal basis (QR / SVD)."""
    import torch

    bank = layers if isinstance(layers, FeatureBank) else feature_bank(layers, device=device, precision=precision)
    n_pairs = max(bank.n_layers - 1, 0)
    lin, res = np.full(n_pairs, np.nan), np.full(n_pairs, np.nan)
    with torch.no_grad():
        X = bank.block(0).double() if n_pairs else None
        Cxx = X.T @ X if n_pairs else None
        for layer in range(n_pairs):
            Y = bank.block(layer + 1).double()
            if X.shape != Y.shape:
                raise WorkbenchError(f"layers {layer} and {layer + 1} have different widths: no linearity score.")
            Cxy, Cyy = X.T @ Y, Y.T @ Y
            tx, ty, txy = float(Cxx.trace()), float(Cyy.trace()), float(Cxy.trace())
            chol, info = torch.linalg.cholesky_ex(Cxx)
            if int(info) == 0 and float(chol.diagonal().min()) > 1e-4 * float(chol.diagonal().max()):
                fit, fit_res = (torch.linalg.solve_triangular(chol, M, upper=False) for M in (Cxy, Cxy - Cxx))
            else:  # singular X^T X: project with an orthonormal basis of X instead
                Q = bank.basis(layer, float64=True)
                fit, fit_res = Q.T @ Y, Q.T @ (Y - X)
            if ty > 0:
                lin[layer] = float(fit.square().sum()) / ty
            if ty - 2 * txy + tx > 0:
                res[layer] = float(fit_res.square().sum()) / (ty - 2 * txy + tx)
            X, Cxx = Y, Cyy
    return lin, res


def consecutive_linearity(layers, *, remove_residual: bool = False, device: str = "cpu",
                          precision: str = "float32") -> np.ndarray:
    """[L - 1] linearity scores of consecutive layers l -> l + 1 (``remove_residual``: l -> (l + 1) - l)."""
    lin, res = consecutive_scores(layers, device=device, precision=precision)
    return res if remove_residual else lin


def best_match(matrix: np.ndarray) -> np.ndarray:
    """For each row layer, the column layer of highest similarity ([L_a] int; -1 where a row is all NaN)."""
    M = np.where(np.isfinite(matrix), matrix, -np.inf)
    best = M.argmax(axis=1)
    return np.where(np.isfinite(matrix).any(axis=1), best, -1)
