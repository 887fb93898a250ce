"""Layer-quality metrics against closed forms and the reference implementation (representation-itl)."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg

from analyses.layer_quality import metrics as M
from analyses.layer_quality.augment import KEYBOARD_NEIGHBOURS, AugmentSettings, augment_texts
from analyses.layer_quality.downstream import (best_vs_last, metric_correlations, recommend_layer,
                                               retrieval_scores, topic_probe)
from workbench.errors import WorkbenchError
from workbench.retrieval import mrr_standard_error, reciprocal_ranks


def _orthonormal_rows(n, d, seed=0):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, n)))
    return Q.T  # [n, d], Q Q^T = I


def _psd(n, seed=0, rank=None):
    X = np.random.default_rng(seed).standard_normal((n, rank or n + 3))
    return X @ X.T


# ---------------------------------------------------------------- matrix entropy: reference
@pytest.mark.parametrize("alpha", [1, 2])
def test_matrix_entropy_matches_repitl(alpha):
    torch = pytest.importorskip("torch")
    itl = pytest.importorskip("repitl.matrix_itl")
    for seed in range(3):
        K = _psd(40, seed, rank=25)
        K = K / np.trace(K)
        Kt = torch.tensor(K, dtype=torch.float64)
        if alpha == 1:
            # matrixAlphaEntropy(K, 1) divides by 1 - alpha = 0; the reference's alpha=1 is
            # vonNeumannEntropy, which is in bits.
            ref = itl.vonNeumannEntropy(Kt).item() * math.log(2)
        else:
            ref = itl.matrixAlphaEntropy(Kt, alpha=alpha).item()
        assert M.matrix_entropy(K, alpha) == pytest.approx(ref, abs=1e-8)


def test_clamped_prompt_entropy_matches_reference_pipeline():
    torch = pytest.importorskip("torch")
    itl = pytest.importorskip("repitl.matrix_itl")
    rng = np.random.default_rng(1)
    for N, D in ((30, 64), (80, 48)):  # both branches: ZZ^T (N <= D) and Z^T Z (N > D)
        Z = rng.standard_normal((N, D)) + 0.3
        Zt = torch.tensor(Z, dtype=torch.float64)
        Zt = Zt - Zt.mean(0)
        Zt = Zt / torch.norm(Zt, dim=1, keepdim=True)
        G = Zt.T @ Zt if N > D else Zt @ Zt.T
        G = torch.clamp(G, min=0)
        ref = itl.matrixAlphaEntropy(G / torch.trace(G), alpha=2).item() / min(math.log(N), math.log(D))
        assert M.representation_entropy(Z, alpha=2, clamp=True) == pytest.approx(ref, abs=1e-8)


# ---------------------------------------------------------------- matrix entropy: closed forms
def test_matrix_entropy_alpha2_is_frobenius_and_alpha1_is_logm():
    K = _psd(30, 3)
    rho = K / np.trace(K)
    assert M.matrix_entropy(K, 2) == pytest.approx(-math.log(np.sum(rho * rho)), abs=1e-10)
    von_neumann = -np.trace(rho @ scipy.linalg.logm(rho)).real
    assert M.matrix_entropy(K, 1) == pytest.approx(von_neumann, abs=1e-8)
    # alpha -> 1 is continuous with the von Neumann value
    assert M.matrix_entropy(K, 1 + 1e-6) == pytest.approx(von_neumann, abs=1e-4)


@pytest.mark.parametrize("alpha", [0.5, 1, 2, 3])
def test_orthonormal_rows_give_log_n_and_rank_one_gives_zero(alpha):
    Q = _orthonormal_rows(16, 50)
    assert M.matrix_entropy(Q @ Q.T, alpha) == pytest.approx(math.log(16), abs=1e-10)
    assert M.representation_entropy(Q, alpha, "raw", preprocess=False) == pytest.approx(math.log(16), abs=1e-10)
    assert M.representation_entropy(Q, alpha, "maxEntropy", preprocess=False) == pytest.approx(1.0, abs=1e-10)
    v = np.random.default_rng(0).standard_normal((1, 50))
    R = np.repeat(v, 10, axis=0) * np.arange(1, 11)[:, None]
    assert M.matrix_entropy(R @ R.T, alpha) == pytest.approx(0.0, abs=1e-10)


def test_entropy_is_scale_free_and_gram_side_free():
    Z = np.random.default_rng(2).standard_normal((20, 7))
    h = M.representation_entropy(Z, 1, "raw", preprocess=False)
    assert M.matrix_entropy(Z @ Z.T, 1) == pytest.approx(h, abs=1e-10)
    assert M.matrix_entropy(Z.T @ Z * 37.0, 1) == pytest.approx(h, abs=1e-10)


def test_normalizations():
    Z = np.random.default_rng(3).standard_normal((12, 30))
    raw = M.representation_entropy(Z, normalization="raw")
    for norm, denom in (("maxEntropy", math.log(12)), ("logN", math.log(12)), ("logD", math.log(30)),
                        ("logNlogD", math.log(12) * math.log(30))):
        assert M.representation_entropy(Z, normalization=norm) == pytest.approx(raw / denom)
    with pytest.raises(WorkbenchError, match="normalization"):
        M.representation_entropy(Z, normalization="bits")


def test_clamp_changes_gaussian_value_as_documented():
    # docs/methods.md, "Layer-wise quality": 0.9986 (reference clamp) vs 0.9867 (no clamp) on 50 x 768 Gaussian data
    Z = np.random.default_rng(0).standard_normal((50, 768))
    assert M.representation_entropy(Z) == pytest.approx(0.9867, abs=3e-3)
    assert M.representation_entropy(Z, clamp=True) == pytest.approx(0.9986, abs=3e-3)


def test_prompt_and_dataset_entropy():
    rng = np.random.default_rng(4)
    prompts = [rng.standard_normal((n, 16)) for n in (5, 9, 1, 12)]
    per = M.prompt_entropies(prompts)
    assert np.isnan(per[2])  # a 1-token prompt has no entropy
    assert M.prompt_entropy(prompts) == pytest.approx(np.nanmean(per))
    # centred orthonormal simplex: the centred rows span n-1 equal directions
    Q = _orthonormal_rows(8, 20)
    assert M.dataset_entropy(Q, normalization="raw") == pytest.approx(math.log(7), abs=1e-10)
    with pytest.raises(WorkbenchError, match="2-D"):
        M.dataset_entropy(np.zeros(5))


# ---------------------------------------------------------------- effective rank
def test_effective_rank_closed_form():
    X = np.zeros((3, 5))
    X[0, 0], X[1, 1], X[2, 2] = 3.0, 2.0, 1.0
    p = np.array([3, 2, 1]) / 6
    assert M.effective_rank(X, preprocess=False) == pytest.approx(math.exp(-np.sum(p * np.log(p))), abs=1e-12)
    assert M.effective_rank(_orthonormal_rows(10, 40), preprocess=False) == pytest.approx(10, abs=1e-9)
    assert M.effective_rank(np.outer(np.arange(1, 6), np.ones(4)), preprocess=False) == pytest.approx(1, abs=1e-9)
    # not exp(entropy): entropy uses s^2
    assert M.effective_rank(X, preprocess=False) != pytest.approx(
        math.exp(M.representation_entropy(X, normalization="raw", preprocess=False)))


# ---------------------------------------------------------------- curvature
def test_curvature_closed_forms():
    rng = np.random.default_rng(5)
    t = np.linspace(0, 3, 20)[:, None]
    line = rng.standard_normal(64) + t * rng.standard_normal(64)
    assert M.curvature(line) == pytest.approx(0.0, abs=1e-6)
    assert M.curvature(line, "abs_cos") == pytest.approx(0.0, abs=1e-6)
    walk = np.cumsum(rng.standard_normal((300, 4000)), axis=0)  # random step directions
    assert M.curvature(walk) == pytest.approx(math.pi / 2, abs=0.02)
    iid = rng.standard_normal((300, 4000))  # i.i.d. points: consecutive steps share a point
    assert M.curvature(iid) == pytest.approx(2 * math.pi / 3, abs=0.02)
    assert M.curvature(iid, "abs_cos") == pytest.approx(math.pi / 3, abs=0.02)
    zigzag = np.array([[0.0, 0], [1, 0], [0, 0], [1, 0]])
    assert M.curvature(zigzag) == pytest.approx(math.pi)
    assert M.curvature(zigzag, "abs_cos") == pytest.approx(0.0)
    square = np.array([[0.0, 0], [1, 0], [1, 1], [0, 1]])
    assert M.curvature(square) == pytest.approx(math.pi / 2)
    assert np.isnan(M.curvature(line[:2])) and M.curvature(line[:2], "abs_cos") == 0.0
    # repeated point: a zero step is skipped (paper) or counted as 0 (reference code)
    rep = np.array([[0.0, 0], [1, 0], [1, 0], [1, 1], [0, 1]])
    assert M.curvature(rep) == pytest.approx(math.pi / 2)
    assert M.curvature(rep, "abs_cos") == pytest.approx(math.pi / 2 / 3)
    assert M.prompt_curvature([line, square, line[:2]]) == pytest.approx(math.pi / 4, abs=1e-6)


# ---------------------------------------------------------------- InfoNCE, LiDAR, DiME
def test_infonce_identical_orthonormal_views():
    N = 8
    A = _orthonormal_rows(N, 32)
    loss, mi = M.infonce(A, A.copy(), temperature=0.1)
    expected = math.log(1 + (N - 1) * math.exp(-10))
    assert loss == pytest.approx(expected, rel=1e-10)
    assert mi == pytest.approx(1 - expected / math.log(N), rel=1e-12)
    loss_scaled, _ = M.infonce(5 * A, 0.2 * A)  # rows are L2-normalised first
    assert loss_scaled == pytest.approx(expected, rel=1e-10)
    # collapsed views: every logit equal -> loss = log N, bound 0
    C = np.ones((N, 4))
    loss_c, mi_c = M.infonce(C, C)
    assert loss_c == pytest.approx(math.log(N)) and mi_c == pytest.approx(0.0, abs=1e-12)


def test_lidar_closed_form():
    N, A, D = 6, 4, 10
    means = 3.0 * np.eye(N, D)
    V = np.repeat(means[:, None, :], A, axis=1)  # identical augmentations: Sw = delta I
    # Sb of N scaled basis vectors has N-1 equal nonzero eigenvalues -> entropy log(N-1)
    assert M.lidar(V, normalization="raw") == pytest.approx(math.log(N - 1), abs=1e-8)
    assert M.lidar(V) == pytest.approx(math.log(N - 1) / math.log(N), abs=1e-8)
    # with within-class noise: against a direct (loop) construction of the LDA matrix
    rng = np.random.default_rng(6)
    V = rng.standard_normal((N, A, D)) + rng.standard_normal((N, 1, D))
    mu_i, mu = V.mean(1), V.mean((0, 1))
    Sb = sum(np.outer(m - mu, m - mu) for m in mu_i) / N
    Sw = sum(np.outer(V[i, j] - mu_i[i], V[i, j] - mu_i[i]) for i in range(N) for j in range(A)) / (N * A)
    Sw += 1e-4 * np.eye(D)
    W = np.linalg.inv(scipy.linalg.sqrtm(Sw).real)
    assert np.allclose(M.lda_matrix(V), W @ Sb @ W, atol=1e-8)
    assert M.lidar(V, alpha=2, normalization="raw") == pytest.approx(M.matrix_entropy(W @ Sb @ W, 2), abs=1e-8)


def test_dime_closed_forms():
    # two clusters {0,1}, {2,3}: K o K is block diagonal (entropy log 2); the permutation (0 2 1 3)
    # pairs every sample with a partner from the other cluster, so K o PKP^T = I (entropy log 4)
    X = np.array([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    assert M.dime(X, X, normalization="raw", permutations=[[0, 2, 1, 3]]) == pytest.approx(math.log(2), abs=1e-10)
    assert M.dime(X, X, normalization="raw", permutations=[[1, 0, 3, 2]]) == pytest.approx(0.0, abs=1e-10)
    # a Gram matrix with equal off-diagonal entries is permutation invariant: DiME = 0
    rng = np.random.default_rng(7)
    simplex = _orthonormal_rows(6, 6) - 1 / 6 * _orthonormal_rows(6, 6).sum(0)
    assert M.dime(rng.standard_normal((6, 6)), simplex, n_permutations=10, seed=1) == pytest.approx(0.0, abs=1e-9)
    # matched noisy views carry information, independent views none; deterministic for a seed
    base = rng.standard_normal((40, 16))
    A, B = base + 0.1 * rng.standard_normal(base.shape), base + 0.1 * rng.standard_normal(base.shape)
    d = M.dime(A, B, seed=3)
    assert d > 0.02 and d == M.dime(A, B, seed=3)
    assert abs(M.dime(A, rng.standard_normal((40, 16)), seed=3)) < d / 10
    assert M.dime(A, B, seed=3, normalization="raw") == pytest.approx(d * math.log(16))


# ---------------------------------------------------------------- augmentations
def test_augmentations_are_seeded_and_in_spirit():
    text = "Intermediate representations outperform final layers across many embedding tasks"
    a = augment_texts([text, text], 3, seed=0)
    assert a == augment_texts([text, text], 3, seed=0)
    assert a[0][0] != a[0][1] and a[0] != a[1] and a[0][0] != augment_texts([text], 1, seed=1)[0][0]
    assert augment_texts([text], 1, seed=0)[0][0] == a[0][0]  # independent of other prompts and counts
    split_only = augment_texts([text], 4, seed=0, settings=AugmentSettings(steps=("split",)))[0]
    for s in split_only:
        assert s.replace(" ", "") == text.replace(" ", "") and len(s.split()) > len(text.split())
    kb = augment_texts([text], 4, seed=0, settings=AugmentSettings(steps=("keyboard",)))[0]
    for s in kb:
        assert len(s) == len(text) and s != text
        for c_new, c_old in zip(s, text):
            assert c_new == c_old or c_new.lower() in KEYBOARD_NEIGHBOURS[c_old.lower()]
    short = augment_texts([text], 1, settings=AugmentSettings(steps=(), max_words_per_text=3))[0][0]
    assert short == "Intermediate representations outperform"
    with pytest.raises(WorkbenchError, match="augmentation step"):
        AugmentSettings(steps=("synonym",))


# ---------------------------------------------------------------- downstream
def test_retrieval_scores_closed_form():
    X = _orthonormal_rows(5, 8)
    assert retrieval_scores(X, X, center=False) == (1.0, 1.0)
    Q = np.eye(3)
    Dm = np.array([[0.5, 1.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 1.0]])  # first two documents nearer the other query
    assert retrieval_scores(Q, Dm, center=False) == pytest.approx((1 / 3, (0.5 + 0.5 + 1) / 3))
    # a tie with the true document counts against it (query 0: rank 2; query 1: all-zero row, rank 3)
    Dt = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert retrieval_scores(Q, Dt, center=False) == pytest.approx((1 / 3, (1 / 2 + 1 / 3 + 1) / 3))
    rr = reciprocal_ranks(Q, Dt, center=False)
    np.testing.assert_allclose(rr, [1 / 2, 1 / 3, 1])
    # sample std (ddof 1) of the reciprocal ranks over sqrt(N), by hand
    m = (1 / 2 + 1 / 3 + 1) / 3
    by_hand = np.sqrt(((1 / 2 - m) ** 2 + (1 / 3 - m) ** 2 + (1 - m) ** 2) / 2) / np.sqrt(3)
    assert mrr_standard_error(rr) == pytest.approx(by_hand, rel=1e-12)
    assert np.isnan(mrr_standard_error(np.array([1.0])))


def test_topic_probe_separable_and_random():
    rng = np.random.default_rng(8)
    y = np.repeat(np.arange(4), 25)
    X = rng.standard_normal((100, 10)) * 0.1 + np.eye(4, 10)[y] * 5
    acc, sd = topic_probe(X, y)
    assert acc == 1.0 and sd == 0.0
    acc_random, _ = topic_probe(rng.standard_normal((100, 10)), y)
    assert acc_random < 0.5
    with pytest.raises(WorkbenchError, match="at least 5"):
        topic_probe(X[::10], y[::10])


def test_correlations_and_recommendation():
    t = pd.DataFrame({"layer": range(6), "probe_accuracy": [0.3, 0.5, 0.7, 0.8, 0.75, 0.6],
                      "probe_accuracy_std": [0.01] * 6, "up": range(6), "down": range(6, 0, -1),
                      "flat": [1.0] * 6})
    c = metric_correlations(t, "probe_accuracy", ["up", "down", "flat"])
    assert c["up"] == pytest.approx(-c["down"]) and np.isnan(c["flat"])
    rec = recommend_layer(t)
    assert rec["best_layer"] == 3 and rec["intermediate_beats_last"] and rec["last_layer"] == 5
    assert rec["beats_last_beyond_one_se"] and rec["best_minus_last"] == pytest.approx(0.2)
    assert "layer 3" in rec["reason"]
    # a gain smaller than one standard error (0.5 / sqrt 5 = 0.22) is not called a clear win
    noisy = t.assign(probe_accuracy_std=0.5)
    rec = recommend_layer(noisy)
    assert rec["intermediate_beats_last"] and not rec["beats_last_beyond_one_se"]
    assert 5 in rec["within_one_se"] and "not a clear win" in rec["reason"]
    assert recommend_layer(t[["layer", "up"]])["best_layer"] is None


def test_best_vs_last_uses_the_given_standard_error():
    t = pd.DataFrame({"layer": range(4), "mrr": [0.2, 0.5, 0.45, 0.4], "se": [0.01, 0.05, 0.2, 0.01]})
    v = best_vs_last(t, "mrr", "se")
    assert v["best_layer"] == 1 and v["last_layer"] == 3 and v["gain"] == pytest.approx(0.1)
    assert v["se"] == 0.05 and v["within_one_se"] == [1, 2] and v["beats_last_beyond_one_se"]
    # the divisor (the probe's sqrt(k)) scales the best layer's spread: 0.05 * 4 / 2 = 0.1 reaches the last
    v = best_vs_last(t.assign(se=t["se"] * 4), "mrr", "se", se_divisor=2.0)
    assert v["se"] == pytest.approx(0.1) and 3 in v["within_one_se"]
    assert v["intermediate_beats_last"] and not v["beats_last_beyond_one_se"]
    # the last layer best: no claim; no standard error: only ties are "close"; no score: None
    v = best_vs_last(t.assign(mrr=[0.1, 0.2, 0.3, 0.4]), "mrr")
    assert v["best_layer"] == 3 and not v["intermediate_beats_last"] and v["within_one_se"] == [3]
    assert best_vs_last(t, "missing") is None
