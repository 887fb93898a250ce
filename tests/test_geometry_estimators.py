"""Geometry estimators (workbench.stats): reference implementations, closed forms, synthetic manifolds.

Reference packages are optional: scikit-dimension (``skdim``) and llm-microscope. llm-microscope's
package ``__init__`` does ``from logit_lens import *`` (an absolute import that fails), so its
``functions.py`` is loaded from the installed file directly.
"""

import importlib.util
import warnings

import numpy as np
import pytest

from workbench.stats import (
    cosine_anisotropy,
    cosine_anisotropy_details,
    covariance_eigenvalues,
    knn_distances,
    mle,
    mle_details,
    participation_ratio,
    pca_dimension,
    pca_dimension_details,
    svd_anisotropy,
    svd_anisotropy_details,
    twonn,
    twonn_details,
    twonn_microscope,
    twonn_microscope_details,
)
from workbench.errors import WorkbenchError

N = 2000


def gaussian_5d_in_768(n=N, seed=0):
    """Acceptance data of docs/methods.md, "Anisotropy and intrinsic dimension": 5-d standard Gaussian
    times a Gaussian 5x768 map."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 5))
    A = rng.standard_normal((5, 768))
    return Z @ A


def cube_10_in_50(n=N, seed=0):
    """Uniform [0,1]^10 padded with 40 zero columns (reproduces the table row of docs/methods.md,
    "Anisotropy and intrinsic dimension")."""
    rng = np.random.default_rng(seed)
    return np.hstack([rng.uniform(size=(n, 10)), np.zeros((n, 40))])


@pytest.fixture(scope="module")
def gauss():
    return gaussian_5d_in_768()


@pytest.fixture(scope="module")
def cube():
    return cube_10_in_50()


def _skdim():
    skdim = pytest.importorskip("skdim")
    return skdim


def _microscope():
    pytest.importorskip("matplotlib")  # functions.py imports pyplot at module level
    spec = importlib.util.find_spec("llm_microscope")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-microscope not installed")
    path = list(spec.submodule_search_locations)[0] + "/functions.py"
    fspec = importlib.util.spec_from_file_location("_llm_microscope_functions", path)
    mod = importlib.util.module_from_spec(fspec)
    fspec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ reference implementations


@pytest.mark.parametrize("data", ["gauss", "cube"])
@pytest.mark.parametrize("discard", [0.1, 0.25])
def test_twonn_equals_skdim(data, discard, request):
    skdim = _skdim()
    X = request.getfixturevalue(data)[:1000]
    ref = skdim.id.TwoNN(discard_fraction=discard).fit(X).dimension_
    assert twonn(X, discard_fraction=discard) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("data", ["gauss", "cube"])
def test_mle_equals_skdim(data, request):
    skdim = _skdim()
    X = request.getfixturevalue(data)[:1000]
    assert mle(X) == pytest.approx(skdim.id.MLE().fit(X).dimension_, rel=1e-6)
    ref_mean = skdim.id.MLE().fit(X, comb="mean").dimension_
    assert mle(X, averaging="mean") == pytest.approx(ref_mean, rel=1e-6)
    ref_k10_unb = skdim.id.MLE(unbiased=True).fit(X, n_neighbors=10).dimension_
    assert mle(X, k=10, unbiased=True) == pytest.approx(ref_k10_unb, rel=1e-6)


def test_twonn_float32_input_equals_skdim(gauss):
    skdim = _skdim()
    X = gauss[:1000].astype(np.float32)
    assert twonn(X) == pytest.approx(skdim.id.TwoNN().fit(X.astype(np.float64)).dimension_, rel=1e-6)


def test_microscope_variant_equals_reference(gauss, cube):
    torch = pytest.importorskip("torch")
    ref = _microscope()
    for X in (gauss[:250], cube[:250]):
        expected = ref.intrinsic_dimension(torch.from_numpy(X), "cpu")
        assert twonn_microscope(X) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_svd_anisotropy_equals_microscope(dtype):
    torch = pytest.importorskip("torch")
    ref = _microscope()
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((1500, 96)) * np.linspace(0.2, 3.0, 96) + 2.0).astype(dtype)
    expected = ref.calculate_anisotropy_torch(torch.from_numpy(X))
    assert svd_anisotropy(X) == pytest.approx(expected, rel=1e-5)


def test_svd_anisotropy_equals_formula():
    """Without the reference package: the formula of calculate_anisotropy_torch, via full SVD."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((800, 64)) @ rng.standard_normal((64, 64)) + 3.0
    s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    assert svd_anisotropy(X) == pytest.approx(s[0] ** 2 / (s**2).sum(), rel=1e-10)
    # D > 2N takes the N x N kernel route
    Y = rng.standard_normal((40, 300))
    s = np.linalg.svd(Y - Y.mean(axis=0), compute_uv=False)
    assert svd_anisotropy(Y) == pytest.approx(s[0] ** 2 / (s**2).sum(), rel=1e-10)


def test_knn_is_exact_and_chunked():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    X = rng.standard_normal((700, 40)) * 10 + 100.0  # large offset: float32 cancellation risk
    ref, ref_idx = NearestNeighbors(n_neighbors=7, algorithm="brute").fit(X).kneighbors()
    d, idx = knn_distances(X, 7, max_chunk_bytes=50_000, return_indices=True)  # many chunks
    np.testing.assert_allclose(d, ref, rtol=1e-12)
    np.testing.assert_array_equal(idx, ref_idx)


@pytest.mark.parametrize("block_rows", [4, 13, 50, 203])
def test_knn_threshold_filter_any_block_size(block_rows):
    """Blocks smaller than the candidate count (rows start with no finite threshold), uneven
    blocks and a single block all give scikit-learn's exact neighbours."""
    from sklearn.neighbors import NearestNeighbors

    X = np.random.default_rng(4).standard_normal((203, 6))
    ref, ref_idx = NearestNeighbors(n_neighbors=9, algorithm="brute").fit(X).kneighbors()
    d, idx = knn_distances(X, 9, block_rows=block_rows, return_indices=True)
    np.testing.assert_allclose(d, ref, rtol=1e-12)
    np.testing.assert_array_equal(idx, ref_idx)


# --------------------------------------------------------------------------------- synthetic


def test_gaussian_5d_in_768(gauss):
    value = twonn(gauss)
    assert 4.7 <= value <= 5.4
    assert value == pytest.approx(5.083, abs=5e-4)  # docs/methods.md table, same data generation


def test_cube_10_in_50_matches_table(cube):
    """Table row of docs/methods.md, "Anisotropy and intrinsic dimension" (seed 0, N=2000): TwoNN 8.20,
    LLM-Microscope 8.62, MLE 8.21 / 8.64."""
    assert twonn(cube) == pytest.approx(8.20, abs=5e-3)
    assert twonn_microscope(cube) == pytest.approx(8.62, abs=5e-3)
    assert mle(cube) == pytest.approx(8.21, abs=5e-3)
    assert mle(cube, averaging="mean") == pytest.approx(8.64, abs=5e-3)
    # acceptance "within 20% of 10": every estimator passes; the plain-mean MLE is closest
    for v in (twonn(cube), twonn_microscope(cube), mle(cube), mle(cube, averaging="mean")):
        assert abs(v - 10) <= 2.0


def test_offset_changes_cosine_not_svd():
    rng = np.random.default_rng(0)
    G = rng.standard_normal((4096, 768))
    a0, a5 = svd_anisotropy(G), svd_anisotropy(G + 5.0)
    assert a5 == pytest.approx(a0, rel=1e-9)
    assert a0 == pytest.approx((1 + np.sqrt(768 / 4096)) ** 2 / 768, rel=0.02)  # ~0.00267
    c0, c5 = cosine_anisotropy(G), cosine_anisotropy(G + 5.0)
    assert abs(c0) < 0.01
    assert c5 == pytest.approx(25 / 26, abs=0.01)  # docs/methods.md: 0.96
    assert c5 > 0.95


def test_rotation_changes_neither_id_nor_svd(gauss):
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.standard_normal((768, 768)))
    X = gauss[:500]
    R = X @ Q
    assert twonn(R) == pytest.approx(twonn(X), rel=1e-6)
    assert mle(R) == pytest.approx(mle(X), rel=1e-6)
    assert twonn_microscope(R) == pytest.approx(twonn_microscope(X), rel=1e-6)
    assert svd_anisotropy(R) == pytest.approx(svd_anisotropy(X), rel=1e-8)
    assert pca_dimension(R) == pca_dimension(X)
    assert participation_ratio(R) == pytest.approx(participation_ratio(X), rel=1e-8)


# ----------------------------------------------------------------- duplicates, counts, errors


def test_duplicates_removed_and_counted(gauss):
    X = gauss[:500]
    Xd = np.vstack([X, X[:37], X[:5]])  # 42 extra copies
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero / NaN warnings
        for fn in (twonn_details, mle_details, twonn_microscope_details):
            det = fn(Xd)
            assert np.isfinite(det.value)
            assert det.n_duplicates_removed == 42
            assert det.n_points == 542
            assert det.value == pytest.approx(fn(X).value, rel=1e-12)


def test_constant_rows_and_bad_input():
    with pytest.raises(WorkbenchError):
        twonn(np.ones((50, 3)))  # one distinct point
    with pytest.raises(WorkbenchError):
        svd_anisotropy(np.ones((50, 3)))
    with pytest.raises(WorkbenchError):
        twonn(np.zeros(10))
    X = np.random.default_rng(0).standard_normal((20, 3))
    X[3, 1] = np.nan
    with pytest.raises(WorkbenchError):
        mle(X)
    with pytest.raises(WorkbenchError):
        mle(np.random.default_rng(0).standard_normal((10, 3)), k=20)


def test_pca_dimension_and_participation_ratio_closed_form():
    rng = np.random.default_rng(6)
    lam = np.array([50.0, 20.0, 10.0, 8.0, 6.0, 3.0, 2.0, 1.0])
    A = rng.standard_normal((500, 8))
    A -= A.mean(axis=0)
    Q, _ = np.linalg.qr(A)  # centred orthonormal columns
    X = (Q * np.sqrt(lam)) @ np.linalg.qr(rng.standard_normal((30, 8)))[0].T + 7.0
    np.testing.assert_allclose(covariance_eigenvalues(X)[:8], lam, rtol=1e-9)
    # cumulative share: .5, .7, .8, .88, .94 -> 5 components for 90%, 3 for 80%
    assert pca_dimension(X, 0.9) == 5
    assert pca_dimension(X, 0.8) == 3
    assert participation_ratio(X) == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-9)
    det = pca_dimension_details(X, n_boot=20)
    assert det.ci_low <= det.ci_high


def test_streamed_and_float32_scatter_agree():
    rng = np.random.default_rng(7)
    X = (rng.standard_normal((5000, 48)) * np.linspace(0.1, 4, 48) + 30.0).astype(np.float32)
    full = svd_anisotropy(X)
    chunks = (X[i : i + 777] for i in range(0, len(X), 777))
    assert svd_anisotropy(chunks) == pytest.approx(full, rel=1e-10)
    assert svd_anisotropy(X, precision="float32") == pytest.approx(full, rel=1e-5)


def test_bootstrap_intervals():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((1500, 6)) @ rng.standard_normal((6, 60))
    for det in (twonn_details(X, n_boot=60), mle_details(X, n_boot=60), twonn_microscope_details(X, n_boot=60)):
        assert det.ci_low < det.value < det.ci_high
        assert det.ci_high - det.ci_low < 0.3 * det.value
    # strongly anisotropic: the batched power-iteration bootstrap must agree with exact resamples
    Y = rng.standard_normal((1500, 30)) * np.r_[5.0, np.ones(29)]
    det = svd_anisotropy_details(Y, n_boot=200, seed=1)
    exact = []
    brng = np.random.default_rng(11)
    for _ in range(200):
        exact.append(svd_anisotropy(Y[brng.integers(0, 1500, 1500)]))
    assert det.ci_low < det.value < det.ci_high
    assert (det.ci_high - det.ci_low) == pytest.approx(2 * 1.96 * np.std(exact), rel=0.25)
    assert det.isotropic_baseline == pytest.approx((1 + np.sqrt(30 / 1500)) ** 2 / 30)


def test_cosine_anisotropy_details():
    rng = np.random.default_rng(9)
    X = np.abs(rng.standard_normal((300, 5))) * 0 + np.array([1.0, 2.0, 0.0, 0.0, 0.0])
    X *= rng.uniform(0.5, 2.0, size=(300, 1))  # same direction, different lengths
    assert cosine_anisotropy(X, n_pairs=500) == pytest.approx(1.0, abs=1e-12)
    Z = rng.standard_normal((200, 10))
    Z[:20] = 0.0
    det = cosine_anisotropy_details(Z, n_pairs=2000, seed=3, n_boot=50)
    assert det.n_pairs + det.n_pairs_dropped_zero_norm == 2000
    assert det.n_pairs_dropped_zero_norm > 0
    assert det.ci_low <= det.value <= det.ci_high
    assert det.value == cosine_anisotropy_details(Z, n_pairs=2000, seed=3).value  # seeded


# ------------------------------------------------------------------ shared core helpers


def test_parse_layers_serves_every_convention():
    from workbench.stats import layer_request, parse_layers

    for blank in ("", None, [], " "):
        assert parse_layers(blank, 3) == [0, 1, 2, 3]
    assert parse_layers("all", 3) == parse_layers(" ALL ", 3) == [0, 1, 2, 3]
    assert parse_layers("0, 2,-1", 3) == [0, 2, 3] and parse_layers([3, -1, 1], 3) == [3, 1]
    assert parse_layers(2, 3) == parse_layers(2.0, 3) == [2]
    # the inversion convention: blank / negative = the sentence embedding (None)
    assert parse_layers(None, 2, blank=[None], negative="as_none") == [None]
    assert parse_layers("1,-1", 2, blank=[None], negative="as_none") == [1, None]
    for bad, kw in ((5, {}), (-5, {}), (-1, {"negative": "error"}), ("1,x", {}), (True, {}), (2.5, {})):
        with pytest.raises(WorkbenchError):
            parse_layers(bad, 2, **kw)
    assert layer_request("all") == "all" and layer_request("") == [] and layer_request("0,-1") == [0, -1]
    with pytest.raises(ValueError):
        layer_request("0;1")


def test_l2_normalize_keeps_zero_rows_and_centres():
    from workbench.stats import l2_normalize

    X = np.array([[3.0, 4.0], [0.0, 0.0], [1e-100, 0.0]])
    np.testing.assert_array_equal(l2_normalize(X), [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]])
    Y = np.random.default_rng(0).standard_normal((5, 3, 4))
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(Y), axis=-1), 1.0, rtol=1e-15)
    Z = np.array([[1.0, 1.0], [3.0, 1.0]])
    np.testing.assert_array_equal(l2_normalize(Z, center_first=True), [[-1.0, 0.0], [1.0, 0.0]])


def test_top_pc_share_float32_products_are_exact():
    from workbench.stats import top_pc_share

    rng = np.random.default_rng(10)
    X = (rng.standard_normal((3000, 40)) * np.linspace(0.1, 3.0, 40) + 50.0).astype(np.float32)
    ev = covariance_eigenvalues(X.astype(np.float64))
    chunks = lambda: (X[i : i + 700] for i in range(0, len(X), 700))  # noqa: E731
    share, n = top_pc_share(chunks, precision="float32")
    assert n == 3000 and share == pytest.approx(ev[0] / ev.sum(), rel=1e-12)
    one_axis = np.outer(rng.standard_normal(500), rng.standard_normal(8))
    assert top_pc_share(lambda: [one_axis])[0] == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(top_pc_share(lambda: [np.ones((4, 3))])[0])
