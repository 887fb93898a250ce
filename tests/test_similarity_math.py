"""Layer similarity math (workbench.stats.similarity): known answers, a direct transcription of Kornblith
et al. (2019)'s CKA formula, and LLM-Microscope's Procrustes / linearity functions on the same inputs.

llm-microscope's package ``__init__`` fails to import, so its ``functions.py`` is loaded from the
installed file (as in tests/test_geometry_estimators.py). Its ``procrustes_similarity_centered`` (0.0.7)
ends in ``sim = float`` and returns None, so the linearity score with the residual removed is checked
against ``procrustes_similarity(x, y - x)``, which is what that function computes before the slip.
"""

import numpy as np
import pytest
from scipy.stats import ortho_group

from workbench.errors import WorkbenchError
from workbench.stats import (consecutive_linearity, linear_cka, linear_fit_similarity, linearity_score,
                             procrustes_similarity, similarity_matrices)
from workbench.stats.similarity import best_match, feature_bank, parse_metrics

from test_geometry_estimators import _microscope  # llm-microscope's functions.py, loaded from the installed file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- Kornblith et al. (2019), transcribed from the paper: HSIC(K, L) = tr(K H L H) / (n - 1)^2,
# CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T, H = I - 11^T / n; the debiased
# variant replaces HSIC by the unbiased estimator of Song et al. (2012):
# HSIC_u = [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n - 3)), K~ = K, diag 0.
def kornblith_cka(X, Y, debiased=False):
    K, L = X @ X.T, Y @ Y.T
    n = K.shape[0]
    if debiased:
        def hsic(A, B):
            A, B = A.copy(), B.copy()
            np.fill_diagonal(A, 0)
            np.fill_diagonal(B, 0)
            one = np.ones(n)
            return (np.trace(A @ B) + (one @ A @ one) * (one @ B @ one) / ((n - 1) * (n - 2))
                    - 2.0 / (n - 2) * one @ A @ B @ one) / (n * (n - 3))
    else:
        H = np.eye(n) - np.ones((n, n)) / n

        def hsic(A, B):
            return np.trace(A @ H @ B @ H) / (n - 1) ** 2
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 12)) + 3.0
    Y = X @ rng.standard_normal((12, 9)) + 0.7 * rng.standard_normal((80, 9))
    return X, Y


def test_cka_of_a_representation_with_itself_is_one(pair):
    X, _ = pair
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X, debiased=True) == pytest.approx(1.0, abs=1e-12)
    assert procrustes_similarity(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_fit_similarity(X, X) == pytest.approx(1.0, abs=1e-12)


def test_cka_invariances(pair):
    X, Y = pair
    Q = ortho_group.rvs(X.shape[1], random_state=1)
    base = linear_cka(X, Y)
    assert linear_cka(X @ Q, Y) == pytest.approx(base, rel=1e-10)       # orthogonal transform
    assert linear_cka(7.5 * X, 0.01 * Y) == pytest.approx(base, rel=1e-10)  # isotropic scaling
    assert linear_cka(X + 100.0, Y - 5.0) == pytest.approx(base, rel=1e-10)  # translation (centred)
    assert linear_cka(X @ Q, Y, debiased=True) == pytest.approx(linear_cka(X, Y, debiased=True), rel=1e-10)
    assert procrustes_similarity(3 * X @ Q, Y) == pytest.approx(procrustes_similarity(X, Y), rel=1e-10)
    A = np.diag(np.geomspace(1, 100, X.shape[1])) @ ortho_group.rvs(X.shape[1], random_state=2)
    assert abs(linear_cka(X @ A, Y) - base) > 0.05  # not invariant to an arbitrary linear map


def test_cka_equals_kornblith_formula(pair):
    X, Y = pair
    assert linear_cka(X, Y) == pytest.approx(kornblith_cka(X, Y), rel=1e-10)
    assert linear_cka(X, Y, debiased=True) == pytest.approx(kornblith_cka(X, Y, debiased=True), rel=1e-9)
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((80, 30))
    assert linear_cka(X, Z) == pytest.approx(kornblith_cka(X, Z), rel=1e-10)
    assert linear_cka(X, Z, debiased=True) == pytest.approx(kornblith_cka(X, Z, debiased=True), rel=1e-9)


def test_linear_fit_and_linearity_equal_llm_microscope(pair):
    torch = pytest.importorskip("torch")
    ref = _microscope()
    rng = np.random.default_rng(4)
    X = rng.standard_normal((200, 16))
    Y = np.tanh(X @ rng.standard_normal((16, 16))) + 0.2 * rng.standard_normal((200, 16))
    tx, ty = torch.tensor(X), torch.tensor(Y)
    assert linear_fit_similarity(X, Y) == pytest.approx(ref.procrustes_similarity(tx, ty), rel=1e-9)
    assert linearity_score(X, Y) == pytest.approx(ref.procrustes_similarity(tx, ty), rel=1e-9)
    assert linearity_score(X, Y, remove_residual=True) == pytest.approx(
        ref.procrustes_similarity(tx, ty - tx), rel=1e-9)
    # float32 torch input, as LLM-Microscope is used on activations
    assert linear_fit_similarity(X.astype(np.float32), Y.astype(np.float32)) == pytest.approx(
        ref.procrustes_similarity(tx.float(), ty.float()), rel=1e-4)


def test_orthogonal_procrustes_known_answer():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((100, 6))
    Q = ortho_group.rvs(6, random_state=6)
    assert procrustes_similarity(X, X @ Q) == pytest.approx(1.0, abs=1e-10)
    # against the definition: max over orthogonal Q of <XQ, Y> for unit-norm centred X, Y (scipy's solver)
    from scipy.linalg import orthogonal_procrustes

    Y = X @ rng.standard_normal((6, 6)) + rng.standard_normal((100, 6))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Xc, Yc = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
    R, _ = orthogonal_procrustes(Xc, Yc)
    assert procrustes_similarity(X, Y) == pytest.approx(float(np.sum((Xc @ R) * Yc)), rel=1e-10)


def _layers(n=120, d=10, L=5, seed=7):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, d))
    out = [h.copy()]
    for _ in range(L - 1):
        h = h + 0.5 * np.tanh(h @ rng.standard_normal((d, d)) / np.sqrt(d))
        out.append(h.copy())
    return out


@pytest.mark.parametrize("precision,tol", [("float64", 1e-10), ("float32", 2e-5)])
def test_matrices_equal_the_pairwise_functions(precision, tol):
    layers = _layers()
    M = similarity_matrices(layers, metrics="cka,cka_debiased,procrustes,linear_fit,linearity,"
                                            "linearity_residual_removed", precision=precision)
    L = len(layers)
    for i in range(L):
        for j in range(L):
            assert M["cka"][i, j] == pytest.approx(linear_cka(layers[i], layers[j]), abs=tol)
            assert M["cka_debiased"][i, j] == pytest.approx(linear_cka(layers[i], layers[j], debiased=True), abs=tol)
            assert M["procrustes"][i, j] == pytest.approx(procrustes_similarity(layers[i], layers[j]), abs=tol)
            assert M["linear_fit"][i, j] == pytest.approx(linear_fit_similarity(layers[i], layers[j]), abs=tol)
    assert np.allclose(np.diag(M["cka"]), 1.0, atol=tol)
    assert np.allclose(M["cka"], M["cka"].T)
    for k in range(L - 1):
        assert M["linearity"][k] == pytest.approx(linearity_score(layers[k], layers[k + 1]), abs=tol)
        assert M["linearity_residual_removed"][k] == pytest.approx(
            linearity_score(layers[k], layers[k + 1], remove_residual=True), abs=tol)


def test_two_sets_of_layers_of_different_widths():
    a = _layers(d=10, L=3)
    rng = np.random.default_rng(8)
    b = [x @ rng.standard_normal((10, 14)) for x in _layers(d=10, L=4, seed=7)]
    M = similarity_matrices(a, b, metrics="cka,cka_debiased,procrustes,linear_fit", precision="float64")
    assert M["cka"].shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert M["cka"][i, j] == pytest.approx(linear_cka(a[i], b[j]), abs=1e-10)
            assert M["procrustes"][i, j] == pytest.approx(procrustes_similarity(a[i], b[j]), abs=1e-10)
            assert M["linear_fit"][i, j] == pytest.approx(linear_fit_similarity(a[i], b[j]), abs=1e-10)
    # b[j] is a linear map of a[j]: CKA is not 1 (not orthogonal), the linear fit is
    assert M["linear_fit"][1, 1] == pytest.approx(1.0, abs=1e-8)
    assert list(best_match(M["linear_fit"])[:3]) == [0, 1, 2]
    assert similarity_matrices(a, b, metrics="cka,linearity")["linearity"].size == 0


def test_lazy_layers_and_consecutive_linearity_alone():
    layers = _layers()
    bank = feature_bank([lambda x=x: x for x in layers], precision="float64")
    assert bank.Z.shape == (120, 50) and bank.n_layers == 5
    lin = consecutive_linearity(bank)
    assert lin.shape == (4,) and np.all((lin > 0.5) & (lin <= 1 + 1e-9))


def test_bad_inputs_are_user_errors():
    with pytest.raises(WorkbenchError, match="same inputs"):
        linear_cka(np.ones((5, 2)) + np.arange(5)[:, None], np.random.default_rng(0).standard_normal((6, 2)))
    with pytest.raises(WorkbenchError, match="constant"):
        linear_cka(np.ones((5, 3)), np.random.default_rng(0).standard_normal((5, 2)))
    with pytest.raises(WorkbenchError, match="same 120 rows"):
        similarity_matrices([_layers()[0], _layers(n=100)[0]])
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metrics("cka,svcca")
