"""Anisotropy of a point cloud, under two named definitions (docs/methods.md, "Anisotropy and
intrinsic dimension").

``svd`` (Razzhigaev et al., LLM-Microscope ``calculate_anisotropy_torch``)
    Centre the columns, take the singular values sigma_i of the centred (N, D) matrix:
    ``A = sigma_1^2 / sum_i sigma_i^2``, the share of variance on the first principal direction.
    In [1/min(N-1, D), 1]; isotropic Gaussian data gives about ``(1 + sqrt(D/N))^2 / D``.
    Invariant to a constant offset and to rotations. Computed exactly from the streamed float64
    scatter matrix (see :mod:`.spectrum`), no (N, D) SVD.

``cosine`` (Ethayarajh 2019)
    Mean cosine similarity of ``n_pairs`` random pairs (i, j), i != j, of *uncentred* vectors,
    drawn with a fixed seed. A common offset pushes it towards 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workbench.errors import WorkbenchError

from .checks import Details, check_array, normal_ci, percentile_ci
from .normalize import center
from .spectrum import covariance_eigenvalues, scatter_matrix, top_eigenpair


@dataclass
class SVDAnisotropyDetails(Details):
    value: float
    n_points: int
    dim: int
    top_eigenvalue: float  # of the scatter matrix (sum of squares), not divided by N - 1
    total_variance: float  # trace of the scatter matrix
    isotropic_baseline: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    n_boot: int = 0
    definition: str = "svd: sigma_1^2 / sum sigma_i^2 of column-centred representations"


@dataclass
class CosineAnisotropyDetails(Details):
    value: float
    n_points: int
    n_pairs: int
    n_pairs_dropped_zero_norm: int
    seed: int
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    n_boot: int = 0
    definition: str = "cosine: mean cosine similarity of random pairs i != j, uncentred (Ethayarajh 2019)"
    cosines: np.ndarray = field(default=None, repr=False)


def svd_anisotropy(X, *, chunk_rows: int = 8192, precision: str = "float64") -> float:
    """SVD anisotropy ``sigma_1^2 / sum sigma_i^2`` of the column-centred X (N, D).

    ``X`` may also be an iterable of (n_i, D) chunks (streamed). Equals LLM-Microscope's
    ``calculate_anisotropy_torch`` (which takes a full SVD) to rounding.
    """
    if isinstance(X, np.ndarray) or hasattr(X, "shape"):
        X = check_array(X, min_rows=2)
        if X.shape[1] > 2 * X.shape[0]:
            ev = covariance_eigenvalues(X)
            return _ratio(ev[0], ev.sum())
    G, n = scatter_matrix(X, chunk_rows=chunk_rows, precision=precision)
    if n < 2:
        raise WorkbenchError("SVD anisotropy needs at least 2 points.")
    top = np.linalg.eigvalsh(G)[-1] if G.shape[0] <= 2048 else top_eigenpair(G, vector=False)[0]
    return _ratio(top, np.trace(G))


def _ratio(top: float, total: float) -> float:
    if not total > 0:
        raise WorkbenchError(
            "All points are identical (zero variance): SVD anisotropy is undefined. "
            "Check the layer/positions selected."
        )
    return float(top / total)


def svd_anisotropy_details(
    X,
    *,
    n_boot: int = 0,
    ci_level: float = 0.95,
    seed: int = 0,
    power_iters: int = 6,
    precision: str = "float64",
) -> SVDAnisotropyDetails:
    """SVD anisotropy with an optional percentile bootstrap interval over points.

    Bootstrap: ``n_boot`` multinomial resamples of the N rows, all replicates at once. For each
    replicate the top eigenvalue of the weighted covariance is found by power iteration started
    from the full-data top eigenvector (Rayleigh quotient, ``power_iters`` steps; warm-started, so
    a few steps suffice) and the trace exactly; cost O(n_boot * N * D * power_iters), no D x D
    eigendecomposition per replicate. The interval is the normal one, value +- z * sd(replicates):
    the top eigenvalue of a resample is biased upwards (resampling adds noise, and noise inflates
    the largest eigenvalue), so for near-isotropic data the percentile interval can miss the
    estimate altogether. ``isotropic_baseline`` = (1 + sqrt(D/N))^2 / D is the value pure noise of
    this size gives; compare against it, not against 1/D. Tokens of one text are correlated, so token-level intervals
    are optimistic; mean-pooled inputs avoid that.
    """
    X = check_array(X, min_rows=2)
    n, d = X.shape
    G, _ = scatter_matrix(X, precision=precision)
    evals, evecs = np.linalg.eigh(G)
    top, v1 = float(evals[-1]), evecs[:, -1]
    total = float(np.trace(G))
    value = _ratio(top, total)
    out = SVDAnisotropyDetails(
        value, n, d, top, total, isotropic_baseline=(1 + np.sqrt(d / n)) ** 2 / d, n_boot=int(n_boot)
    )
    if n_boot and n_boot > 0:
        samples = _bootstrap_svd(X, v1, int(n_boot), seed, power_iters)
        out.ci_low, out.ci_high = normal_ci(value, samples, ci_level)
    return out


def _bootstrap_svd(X: np.ndarray, v1: np.ndarray, n_boot: int, seed: int, power_iters: int):
    import torch

    rng = np.random.default_rng(seed)
    n, d = X.shape
    Xc = torch.from_numpy(center(X).astype(np.float32))
    W = torch.from_numpy(rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).T.astype(np.float32))
    wsum = W.sum(dim=0)  # (B,) == n
    M = (Xc.T @ W) / wsum  # (D, B) replicate means (of centred data)
    sqn = (Xc * Xc).sum(dim=1)  # (N,)
    trace = (sqn @ W) / wsum - (M * M).sum(dim=0)  # (B,)
    V = torch.from_numpy(np.tile(v1[:, None], (1, n_boot)).astype(np.float32))
    with torch.no_grad():
        for _ in range(max(1, power_iters)):
            Y = Xc @ V - (M * V).sum(dim=0)  # (N, B): (x_i - m_b) . v_b
            Z = Xc.T @ (W * Y) / wsum  # C_b v_b  (sum_i w_i y_i = 0, so no mean term)
            V = Z / Z.norm(dim=0, keepdim=True).clamp_min(1e-30)
        Y = Xc @ V - (M * V).sum(dim=0)
        lam = (W * Y * Y).sum(dim=0) / wsum
    return (lam / trace).double().numpy()


def cosine_anisotropy(X, *, n_pairs: int = 10_000, seed: int = 0) -> float:
    """Mean cosine similarity of ``n_pairs`` random pairs i != j of uncentred rows of X (N, D)."""
    return cosine_anisotropy_details(X, n_pairs=n_pairs, seed=seed).value


def cosine_anisotropy_details(
    X, *, n_pairs: int = 10_000, seed: int = 0, n_boot: int = 0, ci_level: float = 0.95
) -> CosineAnisotropyDetails:
    """Ethayarajh-style anisotropy with the pair sample, and a bootstrap interval over pairs.

    Pairs are drawn uniformly with replacement among ordered pairs with i != j, seeded. Pairs
    involving a zero vector (cosine undefined) are dropped and counted.
    """
    X = check_array(X, min_rows=2)
    n = X.shape[0]
    if n_pairs < 1:
        raise WorkbenchError(f"n_pairs must be >= 1; got {n_pairs}.")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=n_pairs)
    j = rng.integers(0, n - 1, size=n_pairs)
    j = j + (j >= i)  # uniform over j != i
    Xd = X.astype(np.float64, copy=False)
    norms = np.linalg.norm(Xd, axis=1)
    ok = (norms[i] > 0) & (norms[j] > 0)
    i, j = i[ok], j[ok]
    if i.size == 0:
        raise WorkbenchError("All sampled pairs involve zero vectors; cosine anisotropy undefined.")
    cos = np.einsum("ij,ij->i", Xd[i], Xd[j]) / (norms[i] * norms[j])
    out = CosineAnisotropyDetails(
        float(cos.mean()), n, int(i.size), int(n_pairs - i.size), int(seed), n_boot=int(n_boot), cosines=cos
    )
    if n_boot and n_boot > 0:
        brng = np.random.default_rng(seed + 1)
        idx = brng.integers(0, cos.size, size=(int(n_boot), cos.size))
        out.ci_low, out.ci_high = percentile_ci(cos[idx].mean(axis=1), ci_level)
    return out
