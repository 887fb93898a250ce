"""Representation transforms and outlier dimensions (workbench.stats.transforms / .outliers): known
answers on synthetic data."""

import numpy as np
import pytest

from workbench.errors import WorkbenchError
from workbench.stats import (apply_transform, cosine_anisotropy, dimension_stats, fit_transform, outlier_dimensions,
                             svd_anisotropy)
from workbench.stats.transform_params import LayerTransform


def planted(n=3000, d=48, dim=11, seed=0):
    """Isotropic noise plus one dimension far out of line for every token whose value follows position:
    the synthetic version of Luo et al.'s positional outlier neuron."""
    rng = np.random.default_rng(seed)
    pos = np.arange(n) % 40
    X = rng.standard_normal((n, d))
    X[:, dim] = 25.0 + 6.0 * np.sin(pos / 4.0) + 0.1 * rng.standard_normal(n)
    return X, pos


def test_planted_outlier_is_found_by_both_rules_and_carries_position():
    X, pos = planted()
    assert list(outlier_dimensions(X)) == [11]
    assert list(outlier_dimensions(X, "extreme_share")) == [11]
    st = dimension_stats([X[:1000], X[1000:]], [pos[:1000], pos[1000:]])  # streamed in chunks
    assert st.n == 3000 and st.extreme_share[11] == pytest.approx(1.0)
    assert st.position_r2[11] > 0.99
    assert np.median(st.position_r2) < 0.05  # noise: about (P - 1) / (N - 1) = 0.013
    np.testing.assert_allclose(st.mean, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.position_mean[3, 11], X[pos == 3, 11].mean(), rtol=1e-12)


def test_clipping_the_planted_outlier_lowers_svd_anisotropy():
    X, _ = planted()
    before = svd_anisotropy(X)
    clipped, fit = apply_transform(X, "clip_outliers")
    assert fit.describe()["outlier_dims"] == [11]
    assert np.all(clipped[:, 11] == 0) and np.array_equal(np.delete(clipped, 11, 1), np.delete(X, 11, 1))
    after = svd_anisotropy(clipped)
    assert before > 0.2 and after < 0.05 and after < before
    d = X.shape[1]
    assert after == pytest.approx((1 + np.sqrt(d / X.shape[0])) ** 2 / d, rel=0.3)  # the isotropic baseline
    assert cosine_anisotropy(clipped) < cosine_anisotropy(X)
    to_mean, fit = apply_transform(X, "clip_outliers", clip_value="mean")
    assert np.allclose(to_mean[:, 11], X[:, 11].mean())
    removed, _ = apply_transform(X, "remove_outliers")
    assert removed.shape == (X.shape[0], d - 1) and svd_anisotropy(removed) == pytest.approx(after, rel=1e-9)


def test_whitened_data_has_identity_covariance():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 30)) @ rng.standard_normal((30, 30)) + 4.0
    W, fit = apply_transform(X, "whiten")
    assert np.abs(W.mean(0)).max() < 1e-10
    assert np.abs(np.cov(W.T) - np.eye(30)).max() < 1e-6
    Wk, fit_k = apply_transform(X, "whiten_k", k=7)
    assert Wk.shape == (2000, 7) and np.abs(np.cov(Wk.T) - np.eye(7)).max() < 1e-6
    np.testing.assert_allclose(np.abs(Wk), np.abs(W[:, :7]), atol=1e-8)  # the first k whitened columns
    assert fit_transform(X, "whiten_k").k == 10  # k = 0: D // 3
    R, fit_r = apply_transform(X, "remove_top_pcs", k=2)
    ev = np.linalg.eigh(np.cov(X.T))[1][:, ::-1][:, :2]
    assert np.abs((R - R.mean(0)) @ ev).max() < 1e-8 and fit_r.describe()["k"] == 2


def test_fit_on_one_set_apply_to_another():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((500, 8)) * np.arange(1, 9)
    B = rng.standard_normal((40, 8)) * np.arange(1, 9) + 1.0
    Bt, fit = apply_transform(B, "whiten", fit=A)
    assert fit.n_fit == 500 and Bt.shape == (40, 8)
    np.testing.assert_allclose(Bt, (B - A.mean(0)) @ fit.basis)
    with pytest.raises(WorkbenchError, match="fit on 8-dimensional"):
        fit.apply(np.ones((3, 5)))
    lt = LayerTransform({"transform": "whiten"}, fit_rows=lambda layer: A, fit_label="A")
    lt(3, B)
    s = lt.summary()
    assert s["fit_on"] == "A" and s["per_layer"][0]["layer"] == 3 and s["per_layer"][0]["n_fit"] == 500


def test_whitening_more_dimensions_than_points_is_refused_or_shrunk():
    X = np.random.default_rng(3).standard_normal((50, 384))
    with pytest.raises(WorkbenchError, match=r"50 points in 384 dimensions give rank 49.*transform_shrinkage"):
        fit_transform(X, "whiten")
    W, fit = apply_transform(X, "whiten", shrinkage=0.1)
    assert W.shape == (50, 384) and np.isfinite(W).all() and fit.describe()["shrinkage"] == 0.1
    assert apply_transform(X, "whiten_k", k=20)[0].shape == (50, 20)  # k below the rank is fine
    with pytest.raises(WorkbenchError, match="transform_k"):
        fit_transform(X, "remove_top_pcs", k=60)
    with pytest.raises(WorkbenchError, match="transform must be one of"):
        fit_transform(X, "pca")


def test_whitening_a_layernorm_output_drops_its_null_direction():
    """Every layer of a BERT encoder is a LayerNorm output: (x - mean_d x) / std scaled by gamma, plus beta, so
    the vectors lie in a hyperplane (covariance rank D - 1) however many there are. Whitening keeps the D - 1
    directions that vary (identity covariance there) and says it dropped one, instead of dividing by zero."""
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((600, 40)) @ rng.standard_normal((40, 40))
    Z = (Z - Z.mean(1, keepdims=True)) / Z.std(1, keepdims=True)
    X = (Z * rng.uniform(0.5, 2.0, 40) + rng.standard_normal(40)).astype(np.float32)
    W, fit = apply_transform(X, "whiten")
    assert W.shape == (600, 39) and fit.describe()["null_directions_dropped"] == 1
    assert np.abs(np.cov(W.T) - np.eye(39)).max() < 1e-6
    full = rng.standard_normal((600, 40))
    assert "null_directions_dropped" not in fit_transform(full, "whiten").describe()
    with pytest.raises(WorkbenchError, match="rank 39"):
        fit_transform(X, "whiten_k", k=40)
