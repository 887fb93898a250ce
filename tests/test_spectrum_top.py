"""top_eigenpair (block subspace iteration) against the full LAPACK decomposition, anisotropic and near-isotropic."""

import numpy as np
import pytest

from workbench.stats import top_eigenpair, top_pc_share


@pytest.mark.parametrize("scale", ["anisotropic", "isotropic", "tiny"])
def test_top_eigenpair_equals_full_eigh(scale):
    rng = np.random.default_rng(1)
    d = {"anisotropic": 576, "isotropic": 200, "tiny": 5}[scale]
    X = rng.standard_normal((3 * d, d))
    if scale == "anisotropic":
        X *= np.linspace(0.1, 3, d)
    G = X.T @ X
    w_all, V = np.linalg.eigh(G)
    w, v = top_eigenpair(G)
    assert w == pytest.approx(w_all[-1], rel=1e-12)
    assert abs(v @ V[:, -1]) == pytest.approx(1.0, abs=1e-6 if scale == "isotropic" else 1e-10)
    w2, v2 = top_eigenpair(G)
    assert w2 == w and np.array_equal(v2, v)  # a fixed start vector: runs repeat bit for bit
    w3, none = top_eigenpair(G, vector=False)
    assert none is None and w3 == pytest.approx(w, rel=1e-12)


def test_top_pc_share_equals_svd():
    rng = np.random.default_rng(2)
    X = (rng.standard_normal((4000, 96)) * np.linspace(0.2, 2, 96)).astype(np.float32)
    s = np.linalg.svd(X.astype(np.float64) - X.astype(np.float64).mean(0), compute_uv=False)
    share, n = top_pc_share(lambda: [X[:1500], X[1500:]])
    assert n == 4000 and share == pytest.approx(s[0] ** 2 / (s ** 2).sum(), rel=1e-12)


def test_top_eigenpair_of_degenerate_matrices():
    # a zero matrix, then a rank-one one whose eigenvector is orthogonal to the all-ones vector
    G = np.zeros((64, 64))
    w, v = top_eigenpair(G)
    assert w == 0.0 and v.shape == (64,)
    G[0, 0], G[1, 1], G[0, 1], G[1, 0] = 1.0, 1.0, -1.0, -1.0  # eigenvector (1, -1, 0, ...) ⟂ ones
    w, v = top_eigenpair(G)
    assert w == pytest.approx(2.0) and abs(v[0]) == pytest.approx(2 ** -0.5)


def test_top_eigenpair_of_a_tied_top():
    # lambda_1 = lambda_2: any unit vector of their plane is an eigenvector; the value must be exact
    rng = np.random.default_rng(3)
    V, _ = np.linalg.qr(rng.standard_normal((100, 100)))
    w_true = np.concatenate([[5.0, 5.0], np.linspace(0.1, 1.0, 98)])
    G = (V * w_true) @ V.T
    w, v = top_eigenpair(G)
    assert w == pytest.approx(5.0, rel=1e-12)
    assert np.linalg.norm(G @ v - w * v) < 1e-8 and np.linalg.norm(v) == pytest.approx(1.0)
