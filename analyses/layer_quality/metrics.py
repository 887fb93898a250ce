"""Layer-wise representation-quality metrics (Skean et al. 2025, "Layer by Layer: Uncovering Hidden
Representations in Language Models", arXiv 2502.02013), as pure functions of arrays.

Every function takes numpy arrays (any float dtype; computation is float64) and returns floats, so it
can be used alone on any representations, including user-supplied sentence vectors.

Reference code: ``OFSkean/information_flow`` (``experiments/utils/metrics/metric_functions.py``) and
``uk-cliplab/representation-itl`` (``repitl.matrix_itl``). Deliberate differences, each with the
reference behaviour kept as an option:

- alpha = 1 is the von Neumann limit ``-sum(l log l)`` (natural log). ``matrixAlphaEntropy(K, 1)``
  itself divides by ``1 - alpha`` = 0 and fails; ``repitl``'s ``vonNeumannEntropy`` uses log2.
- prompt entropy does not clamp Gram entries at 0 unless ``clamp=True`` (the reference does; it
  changes the value and makes it depend on which of ``ZZ^T`` / ``Z^T Z`` is formed).
- curvature is the paper's angle in [0, pi] (``variant="paper"``); ``variant="abs_cos"`` is the newer
  code's ``arccos(|cos|)`` in [0, pi/2].
- DiME always uses N x N Gram matrices (the reference switches to D x D when N > D, where the
  Hadamard product of the two views' matrices no longer pairs samples).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from workbench.errors import WorkbenchError
from workbench.stats import check_array, l2_normalize

#: entropy normalisations of the reference code (``entropy_normalization``)
ENTROPY_NORMALIZATIONS = ("maxEntropy", "raw", "logN", "logD", "logNlogD")
CURVATURE_VARIANTS = ("paper", "abs_cos")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not alpha > 0:
        raise WorkbenchError(f"alpha must be > 0 (1 = von Neumann entropy); got {alpha}.")
    return alpha


def normalize_rows(Z) -> np.ndarray:
    """Centre over rows, then L2-normalise each row (the reference ``normalize``).

    Z: [N, D] -> float64 [N, D]. Rows whose centred norm is 0 stay 0 (the reference would divide by 0).
    """
    return l2_normalize(Z, center_first=True)


def entropy_normalization(entropy: float, normalization: str, N: int, D: int) -> float:
    """Divide an entropy by its maximum: ``maxEntropy`` = ``min(log N, log D)`` (default in the
    reference), ``logN``, ``logD``, ``logNlogD``, or ``raw`` (nats, unchanged)."""
    if normalization not in ENTROPY_NORMALIZATIONS:
        raise WorkbenchError(
            f"normalization must be one of {', '.join(ENTROPY_NORMALIZATIONS)}; got {normalization!r}.")
    if normalization == "raw":
        return float(entropy)
    logN, logD = math.log(N) if N > 0 else 0.0, math.log(D) if D > 0 else 0.0
    denom = {"maxEntropy": min(logN, logD), "logN": logN, "logD": logD, "logNlogD": logN * logD}[normalization]
    return float(entropy) / denom if denom > 0 else float("nan")


# ------------------------------------------------------------------------------------------------
# matrix-based Renyi entropy
# ------------------------------------------------------------------------------------------------
def spectrum_entropy(eigenvalues, alpha: float = 1.0) -> float:
    """alpha-Renyi entropy (nats) of a spectrum: keep ``l > 0``, renormalise to sum 1, then
    ``-sum(l log l)`` for alpha = 1, else ``log(sum l^alpha) / (1 - alpha)``. NaN if nothing is > 0.

    Eigenvalues below ``n * eps * max(l)`` count as 0: they are round-off of a rank-deficient matrix
    (the reference keeps them; that moves alpha = 1, 2 by < 1e-13 but alpha < 1 by ~1e-8).
    """
    alpha = _check_alpha(alpha)
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if lam.size == 0 or not lam.max() > 0:
        return float("nan")
    lam = lam[lam > lam.size * np.finfo(np.float64).eps * lam.max()]
    if lam.size == 0:
        return float("nan")
    lam = lam / lam.sum()
    if alpha == 1.0:
        return float(-np.sum(lam * np.log(lam)))
    return float(np.log(np.sum(lam ** alpha)) / (1.0 - alpha))


def matrix_entropy(K, alpha: float = 1.0) -> float:
    """Matrix-based alpha-Renyi entropy of a symmetric PSD matrix K [n, n] (Giraldo et al. 2014).

    Same as ``repitl.matrix_itl.matrixAlphaEntropy`` (eigenvalues > 0, renormalised), with alpha = 1
    as the von Neumann limit in nats. Scale-free: K and c*K give the same value.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise WorkbenchError(f"K must be a square matrix; got shape {K.shape}.")
    return spectrum_entropy(np.linalg.eigvalsh(K), alpha)


def representation_entropy(Z, alpha: float = 1.0, normalization: str = "maxEntropy", *,
                           preprocess: bool = True, clamp: bool = False) -> float:
    """Entropy of the trace-normalised Gram matrix of the rows of Z [N, D].

    With ``preprocess`` the rows are centred and L2-normalised first (the reference). The Gram matrix
    ``ZZ^T`` and ``Z^T Z`` share their nonzero spectrum, so the smaller one is decomposed.
    ``clamp=True`` reproduces the reference exactly: form ``Z^T Z`` if N > D else ``ZZ^T``, set
    negative entries to 0, divide by the trace. The result is divided per ``normalization``
    (``maxEntropy``: by ``min(log N, log D)``, so 1 = every direction used equally).
    """
    Z = check_array(Z, "Z", dtype=np.float64)
    if preprocess:
        Z = normalize_rows(Z)
    N, D = Z.shape
    G = Z.T @ Z if N > D else Z @ Z.T
    if clamp:
        G = np.maximum(G, 0.0)
        trace = np.trace(G)
        if not trace > 0:
            return float("nan")
        G = G / trace
    H = spectrum_entropy(np.linalg.eigvalsh(G), alpha)
    return entropy_normalization(H, normalization, N, D)


def prompt_entropies(prompts: Iterable, alpha: float = 1.0, normalization: str = "maxEntropy", *,
                     clamp: bool = False) -> np.ndarray:
    """Per-prompt entropy: ``representation_entropy`` of each prompt's token states [len_i, D].

    Prompts with fewer than 2 tokens give NaN (centring leaves nothing; ``log N`` = 0).
    """
    out = []
    for Z in prompts:
        Z = np.asarray(Z)
        out.append(float("nan") if Z.shape[0] < 2 else
                   representation_entropy(Z, alpha, normalization, preprocess=True, clamp=clamp))
    return np.asarray(out, dtype=np.float64)


def prompt_entropy(prompts: Iterable, alpha: float = 1.0, normalization: str = "maxEntropy", *,
                   clamp: bool = False) -> float:
    """Prompt entropy: the mean over prompts of :func:`prompt_entropies` (NaN prompts skipped)."""
    values = prompt_entropies(prompts, alpha, normalization, clamp=clamp)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def dataset_entropy(X, alpha: float = 1.0, normalization: str = "maxEntropy", *, clamp: bool = False) -> float:
    """Dataset entropy: :func:`representation_entropy` of the prompt vectors X [n_prompts, D]
    (mean-pooled token states, or any sentence embeddings)."""
    X = check_array(X, "X", 2, dtype=np.float64)
    return representation_entropy(X, alpha, normalization, preprocess=True, clamp=clamp)


# ------------------------------------------------------------------------------------------------
# effective rank, curvature
# ------------------------------------------------------------------------------------------------
def effective_rank(X, *, preprocess: bool = True) -> float:
    """Roy & Vetterli (2007) effective rank ``exp(-sum p log p)``, ``p_i = s_i / sum s`` over the
    singular values of X [N, D] (not squared: this is not ``exp`` of the entropy above, which uses
    ``s^2``). ``preprocess`` centres and row-normalises as for the entropies. Range [1, min(N, D)].
    """
    X = check_array(X, "X", 1, dtype=np.float64)
    if preprocess:
        X = normalize_rows(X)
    s = np.linalg.svd(X, compute_uv=False)
    s = s[s > 0]
    if s.size == 0:
        return float("nan")
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def curvature(Z, variant: str = "paper") -> float:
    """Mean curvature of a token trajectory Z [N, D] (Hosseini & Fedorenko 2023).

    ``v_k = z_{k+1} - z_k``; the curvature is the mean over k of the angle between ``v_{k+1}`` and
    ``v_k``. ``variant="paper"``: ``arccos(cos)`` in [0, pi]; pairs with a zero step are skipped;
    NaN if no pair remains (N < 3). ``variant="abs_cos"``: the newer reference code,
    ``arccos(|cos|)`` in [0, pi/2], a zero step counts as 0, and 0 for N < 3.
    A straight path gives 0; a random walk in high dimension pi/2; i.i.d. random points 2*pi/3.
    """
    if variant not in CURVATURE_VARIANTS:
        raise WorkbenchError(f"curvature variant must be one of {CURVATURE_VARIANTS}; got {variant!r}.")
    Z = check_array(Z, "Z", 1, dtype=np.float64)
    V = np.diff(Z, axis=0)
    if V.shape[0] < 2:
        return float("nan") if variant == "paper" else 0.0
    a, b = V[:-1], V[1:]
    dots = np.einsum("ij,ij->i", a, b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    valid = norms > 0
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=valid)
    if variant == "paper":
        if not valid.any():
            return float("nan")
        return float(np.mean(np.arccos(np.clip(cos[valid], -1.0, 1.0))))
    angles = np.where(valid, np.arccos(np.clip(np.abs(cos), 0.0, 1.0)), 0.0)
    return float(np.mean(angles))


def prompt_curvature(prompts: Iterable, variant: str = "paper") -> float:
    """Mean over prompts of :func:`curvature` of each prompt's token states (NaN prompts skipped)."""
    values = np.asarray([curvature(Z, variant) for Z in prompts], dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


# ------------------------------------------------------------------------------------------------
# augmentation-based metrics
# ------------------------------------------------------------------------------------------------
def _two_views(A, B) -> tuple[np.ndarray, np.ndarray]:
    A, B = check_array(A, "view A", 2, dtype=np.float64), check_array(B, "view B", 2, dtype=np.float64)
    if A.shape != B.shape:
        raise WorkbenchError(f"the two views must have the same shape; got {A.shape} and {B.shape}.")
    return A, B


def infonce(A, B, temperature: float = 0.1, *, normalize: bool = True) -> tuple[float, float]:
    """InfoNCE loss between two views A, B [N, D] (row i of A and of B: two augmentations of prompt i).

    Cross-entropy of the logits ``A B^T / temperature`` with the diagonal as targets (mean over rows),
    after L2-normalising the rows (``normalize``; the reference function expects normalised input).
    Returns ``(loss, mi_lower_bound)`` with ``mi_lower_bound = 1 - loss / log N`` (the reference's
    normalised bound; the InfoNCE bound itself is ``I >= log N - loss``).
    """
    A, B = _two_views(A, B)
    if not temperature > 0:
        raise WorkbenchError(f"temperature must be > 0; got {temperature}.")
    if normalize:
        A, B = l2_normalize(A), l2_normalize(B)
    logits = (A @ B.T) / temperature
    m = logits.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
    loss = float(np.mean(lse - np.diag(logits)))
    return loss, 1.0 - loss / math.log(A.shape[0])


def lda_matrix(V, delta: float = 1e-4) -> np.ndarray:
    """LiDAR's LDA matrix ``Sw^-1/2 Sb Sw^-1/2`` [D, D] (Thilak et al. 2023, arXiv 2312.04000).

    V: [N, A, D], A augmentations of each of N prompts. ``Sb = (1/N) sum_i (mu_i - mu)(mu_i - mu)^T``,
    ``Sw = (1/(N A)) sum_ij (x_ij - mu_i)(x_ij - mu_i)^T + delta I``.
    """
    V = np.asarray(V, dtype=np.float64)
    if V.ndim != 3 or V.shape[0] < 2 or V.shape[1] < 2:
        raise WorkbenchError(f"LiDAR needs views shaped [prompts >= 2, augmentations >= 2, D]; got {V.shape}.")
    N, A, D = V.shape
    mu_i = V.mean(axis=1)
    Mb = mu_i - mu_i.mean(axis=0)
    Sb = Mb.T @ Mb / N
    W = (V - mu_i[:, None, :]).reshape(N * A, D)
    Sw = W.T @ W / (N * A) + delta * np.eye(D)
    w, U = np.linalg.eigh(Sw)
    inv_sqrt = (U / np.sqrt(w)) @ U.T
    L = inv_sqrt @ Sb @ inv_sqrt
    return (L + L.T) / 2


def lidar(V, alpha: float = 1.0, normalization: str = "maxEntropy", *, delta: float = 1e-4) -> float:
    """LiDAR: matrix entropy of :func:`lda_matrix` of V [N, A, D], divided per ``normalization``
    with N = prompts (as the reference). The original LiDAR paper reports ``exp`` of the raw entropy."""
    V = np.asarray(V, dtype=np.float64)
    H = matrix_entropy(lda_matrix(V, delta), alpha)
    return entropy_normalization(H, normalization, V.shape[0], V.shape[2])


def dime(A, B, alpha: float = 1.0, normalization: str = "maxEntropy", *, n_permutations: int = 10,
         seed: int = 0, normalize: bool = True, permutations: Sequence[Sequence[int]] | None = None) -> float:
    """DiME (Skean et al. 2023, arXiv 2301.08164): ``E_P[H(K_A o P K_B P^T)] - H(K_A o K_B)``.

    A, B: [N, D] two views (row i: prompt i); ``K = X X^T`` is always N x N (o = Hadamard product),
    rows L2-normalised first (``normalize``) so the Gram matrices have unit diagonal. The expectation
    is a mean over ``n_permutations`` random permutations drawn with ``seed`` (or the given
    ``permutations``). Larger = the views identify their prompt better.
    """
    A, B = _two_views(A, B)
    if normalize:
        A, B = l2_normalize(A), l2_normalize(B)
    N, D = A.shape
    KA, KB = A @ A.T, B @ B.T
    if permutations is None:
        if n_permutations < 1:
            raise WorkbenchError(f"n_permutations must be >= 1; got {n_permutations}.")
        rng = np.random.default_rng(seed)
        permutations = [rng.permutation(N) for _ in range(n_permutations)]
    H0 = matrix_entropy(KA * KB, alpha)
    Hp = np.mean([matrix_entropy(KA * KB[np.ix_(p, p)], alpha) for p in map(np.asarray, permutations)])
    return entropy_normalization(float(Hp - H0), normalization, N, D)
