"""Layer-quality metrics against an independent transcription of the official code, on real activations.

The reference package ``representation-itl`` on PyPI ships no code, so ``tests/test_layer_quality_metrics.py``
can only skip its repitl comparisons. Here the functions the paper's numbers come from are transcribed
plainly (float64, torch where the reference uses torch) from

- ``OFSkean/information_flow`` ``experiments/utils/metrics/metric_functions.py`` (newest; Skean et al.
  2025, "Layer by Layer", arXiv 2502.02013) and the older ``experiments/utils/misc/metric_utils.py``;
- ``uk-cliplab/representation-itl`` ``src/repitl/matrix_itl.py`` and ``src/repitl/difference_of_entropies.py``,

and compared with :mod:`analyses.layer_quality.metrics` (and the analysis' wiring,
:func:`~analyses.layer_quality.core.layer_row`) on the SAME arrays: residual states of 60 held-out
abstracts (``abstracts[300:360]``) read from the activation store for ``minilm-l6`` and ``smollm2-135m``,
layers 0 / middle / last, and the pooled states of seeded augmented copies made by the back-end's own
``augment.py``.

Agreement is required within 1e-6 relative. Where the workbench deviates from the reference on purpose
(docs/methods.md "Layer-wise quality", ``metrics.py`` module docstring), the workbench's reference variant
is called instead and must agree; the conventions are named in ``CONVENTIONS`` and in each comparison:

- ``clamp``: the reference clamps the Gram entries at 0 elementwise (``torch.clamp(cov, min=0)``);
  the workbench does so only with ``clamp=True``.
- ``vn1``: ``repitl.matrixAlphaEntropy(K, alpha=1)`` computes ``1.0 / (1.0 - alpha)`` and raises
  ZeroDivisionError, which ``compute_entropy`` / ``compute_lidar`` / ``compute_dime`` turn into NaN; the
  workbench's alpha = 1 is the von Neumann limit in nats, which is repitl's own ``vonNeumannEigenValues``
  (kept > 0, renormalised, natural log). At alpha = 1 the reference side uses that function; alpha = 2 is
  compared with no such substitution.
- ``abs_cos``: the newer reference curvature is ``arccos(|cos|)`` in [0, pi/2] with 0 for a zero step;
  the workbench's default is the paper's angle in [0, pi] (``curvature="abs_cos"`` is the reference).
- ``perm``: DiME's permutations are ``torch.randperm`` draws of the global RNG in the reference; both
  sides get the same permutations (the workbench's own seeded draws).
- ``nxn``: the reference switches DiME (and the entropy) to D x D matrices when N > D; the workbench's
  entropy follows the switch with ``clamp=True``, its DiME never switches (documented). On these
  data N < D everywhere except in the explicit D x D checks on truncated coordinates.

Effective rank has no function in the reference files; it is transcribed from its definition (Roy &
Vetterli 2007, singular values over their sum) on the reference's ``normalize``-d prompt vectors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from analyses.layer_quality import metrics as M  # noqa: E402
from analyses.layer_quality.augment import AugmentSettings, augment_texts  # noqa: E402
from analyses.layer_quality.core import layer_row  # noqa: E402

pytestmark = pytest.mark.slow

MODELS = ("minilm-l6", "smollm2-135m")
DATASET = "abstracts[300:360]"
MAX_LENGTH = 128
N_AUG_PROMPTS = 16      # prompts that get augmented copies
N_AUG = 4               # copies per prompt (LiDAR uses all, InfoNCE / DiME the first two)
AUG_MAX_WORDS = 32      # the back-end's default aug_max_words
SEED = 0
TEMPERATURE = 0.1
RTOL = 1e-6
DXD_COORDS = 48         # truncated width for the D x D branch checks (N tokens > 48)

CONVENTIONS = {
    "none": "reference code as is",
    "clamp": "workbench clamp=True (reference clamps Gram entries at 0)",
    "vn1": "alpha=1: reference side uses repitl vonNeumannEigenValues (matrixAlphaEntropy raises at alpha=1)",
    "abs_cos": "workbench curvature='abs_cos' (reference arccos|cos|, 0 for zero steps)",
    "perm": "same permutations on both sides (workbench's seeded draws)",
    "l2": "views L2-normalised before both sides (core.layer_row does this)",
    "definition": "no reference function: Roy & Vetterli definition on normalize()-d vectors",
}


# ================================================================================================
# Transcription of the reference (numbers only; no code is shared with the back-end)
# ================================================================================================
def ref_normalize(R):
    """information_flow experiments/utils/metrics/metric_functions.py ``normalize`` (also
    experiments/utils.py; "from waltonfuture/Matrix-Entropy"): subtract the mean over rows, divide each
    row by its L2 norm (no guard for a zero norm)."""
    R = torch.as_tensor(np.asarray(R), dtype=torch.float64)
    mean = R.mean(dim=0)
    R = R - mean
    norms = torch.norm(R, p=2, dim=1, keepdim=True)
    return R / norms


def ref_entropy_normalization(entropy, normalization, N, D):
    """metric_functions.py ``entropy_normalization``."""
    assert normalization in ["maxEntropy", "logN", "logD", "logNlogD", "raw", "length"]
    if normalization == "maxEntropy":
        entropy /= min(math.log(N), math.log(D))
    elif normalization == "logN":
        entropy /= math.log(N)
    elif normalization == "logD":
        entropy /= math.log(D)
    elif normalization == "logNlogD":
        entropy /= (math.log(N) * math.log(D))
    elif normalization == "raw":
        pass
    elif normalization == "length":
        entropy = N
    return entropy


def ref_generalized_information_potential(K, alpha):
    """repitl/matrix_itl.py ``generalizedInformationPotential`` (no Frobenius shortcut): eigenvalues of
    K (torch.linalg.eigh, lower triangle), those > 0 kept and renormalised to sum 1, sum of l^alpha."""
    ek, _ = torch.linalg.eigh(K)
    mk = torch.gt(ek, 0.0)
    mek = ek[mk]
    mek = mek / torch.sum(mek)
    return torch.sum(torch.exp(alpha * torch.log(mek)))


def ref_matrix_alpha_entropy(K, alpha):
    """repitl/matrix_itl.py ``matrixAlphaEntropy``: ``(1 / (1 - alpha)) * log(GIP)``. At alpha = 1 the
    Python division raises ZeroDivisionError, as in the reference."""
    GIP = ref_generalized_information_potential(K, alpha)
    return (1.0 / (1.0 - alpha)) * torch.log(GIP)


def ref_von_neumann_eigenvalues(Ev):
    """repitl/matrix_itl.py ``vonNeumannEigenValues`` (lowRank=False; in the file's older version, commit
    1773d1e): eigenvalues > 0, renormalised, ``-sum(l log l)`` in nats."""
    mk = torch.gt(Ev, 0.0)
    mek = Ev[mk]
    mek = mek / torch.sum(mek)
    return -1 * torch.sum(mek * torch.log(mek))


def ref_entropy(K, alpha, vn1=False):
    """The matrix entropy the reference's metric functions call: ``matrixAlphaEntropy``; with ``vn1``
    and alpha = 1 the named convention: repitl's von Neumann entropy of K's eigenvalues instead."""
    if vn1 and alpha == 1:
        return ref_von_neumann_eigenvalues(torch.linalg.eigh(K)[0])
    return ref_matrix_alpha_entropy(K, alpha)


def ref_matrix_alpha_joint_entropy(K_list, alpha, vn1=False):
    """repitl/matrix_itl.py ``matrixAlphaJointEntropy``: entropy of the Hadamard product of the list."""
    K = K_list[0]
    for other in K_list[1:]:
        K = K * other
    return ref_entropy(K, alpha, vn1)


def ref_compute_entropy(hidden_states, alpha=1, normalizations=("maxEntropy",), vn1=False):
    """metric_functions.py ``compute_entropy`` for one layer (hidden_states [N, D], already normalize()-d
    by the caller): Gram matrix H^T H if N > D else H H^T, clamped at 0 elementwise, divided by its
    trace, matrixAlphaEntropy; an exception gives NaN; then each normalisation with (N, D)."""
    H = torch.as_tensor(hidden_states, dtype=torch.float64)
    N, D = H.shape
    if N > D:
        cov = H.T @ H          # D x D
    else:
        cov = H @ H.T          # N x N
    cov = torch.clamp(cov, min=0)
    try:
        cov = cov.double() / torch.trace(cov.double())
        entropy = ref_entropy(cov, alpha, vn1).item()
    except Exception:
        entropy = np.nan
    return {norm: ref_entropy_normalization(entropy, norm, N, D) for norm in normalizations}


def ref_prompt_entropy(prompts, alpha, normalizations=("maxEntropy",), vn1=False):
    """metric_utils.py ``compute_per_forward_pass`` with ``compute_entropy``: each prompt's token states
    normalize()-d, the metric per prompt, then the plain mean over prompts."""
    results = {norm: [] for norm in normalizations}
    for Z in prompts:
        out = ref_compute_entropy(ref_normalize(Z), alpha, normalizations, vn1)
        for norm in normalizations:
            results[norm].append(out[norm])
    return {norm: float(np.array(v).mean()) for norm, v in results.items()}


def ref_compute_entropy_older(hidden_states, alpha=1, normalizations=("maxEntropy",), vn1=False):
    """experiments/utils/misc/metric_utils.py ``compute_entropy`` (older) for one layer: as the newer one
    but without the trace division and without the try/except."""
    H = torch.as_tensor(hidden_states, dtype=torch.float64)
    N, D = H.shape
    cov = H.T @ H if N > D else H @ H.T
    cov = torch.clamp(cov, min=0)
    entropy = ref_entropy(cov.double(), alpha, vn1).item()
    return {norm: ref_entropy_normalization(entropy, norm, N, D) for norm in normalizations}


def ref_concatenated_pass_means(prompts):
    """metric_utils.py ``compute_on_concatenated_passes`` (older), the prompt vectors it stacks: each
    text's token states normalize()-d, then their mean (no second normalisation before the metric)."""
    return torch.stack([ref_normalize(Z).mean(dim=0) for Z in prompts]).numpy()


def ref_compute_curvature(hidden_states):
    """metric_functions.py ``compute_curvature`` (k = 1, 'raw') for one prompt [N, D]: for k = 1..N-2,
    v_k = p_k - p_{k-1}, v_{k+1} = p_{k+1} - p_k, angle ``arccos(clamp(|v_{k+1}^T v_k| / (|v_{k+1}||v_k|)))``,
    0 when a norm is 0; the mean over k, 0 when there is no pair."""
    p = torch.as_tensor(np.asarray(hidden_states), dtype=torch.float64)
    summation, counter = 0.0, 0
    for k in range(1, p.shape[0] - 1):
        v_k = p[k] - p[k - 1]
        v_kplusone = p[k + 1] - p[k]
        dotproduct = torch.abs(v_kplusone @ v_k)
        norm_a, norm_b = torch.norm(v_kplusone), torch.norm(v_k)
        if norm_a == 0 or norm_b == 0:
            curvature = 0.0
        else:
            argument = torch.clamp(dotproduct / (norm_a * norm_b), min=-1, max=1)
            curvature = torch.arccos(argument).item()
        summation += curvature
        counter += 1
    return summation / counter if counter > 0 else 0


def ref_prompt_curvature(prompts):
    """``compute_curvature`` per prompt, mean over prompts (as ``compute_per_forward_pass``)."""
    return float(np.mean([ref_compute_curvature(Z) for Z in prompts]))


def ref_compute_infonce(view_a, view_b, temperature=0.1):
    """metric_functions.py ``compute_infonce`` for one layer: logits = A B^T, cross-entropy of
    logits / temperature against the diagonal (mean), and ``1 - loss / log N``."""
    A = torch.as_tensor(view_a, dtype=torch.float64)
    B = torch.as_tensor(view_b, dtype=torch.float64)
    logits = A @ B.T
    labels = torch.arange(len(A))
    loss = torch.nn.functional.cross_entropy(logits / temperature, labels, reduction="mean").item()
    return {"raw": loss, "mi-lower-bound": 1 - (loss / math.log(len(A)))}


def ref_compute_lda_matrix(augmented_prompt_tensors, delta=1e-4):
    """metric_functions.py ``compute_LDA_matrix`` ([N, A, D]): between-class scatter of the class means
    about the dataset mean / N, within-class scatter / (N A) + delta I, ``Sw^-1/2 Sb Sw^-1/2`` with the
    inverse square root from torch.linalg.eigh (no symmetrisation)."""
    X = torch.as_tensor(augmented_prompt_tensors, dtype=torch.float64)
    NUM_SAMPLES, NUM_AUGMENTATIONS, D = X.shape
    dataset_mean = torch.mean(X, dim=(0, 1)).squeeze()
    class_means = torch.mean(X, dim=1)
    between = torch.zeros((D, D), dtype=torch.float64)
    for i in range(NUM_SAMPLES):
        between += torch.outer(class_means[i] - dataset_mean, class_means[i] - dataset_mean)
    between /= NUM_SAMPLES
    within = torch.zeros((D, D), dtype=torch.float64)
    for i in range(NUM_SAMPLES):
        for j in range(NUM_AUGMENTATIONS):
            within += torch.outer(X[i, j] - class_means[i], X[i, j] - class_means[i])
    within /= (NUM_SAMPLES * NUM_AUGMENTATIONS)
    within += delta * torch.eye(D, dtype=torch.float64)
    eigs, eigvecs = torch.linalg.eigh(within)
    fractional_inverse = eigvecs @ torch.diag(eigs ** (-0.5)) @ eigvecs.T
    return fractional_inverse @ between @ fractional_inverse


def ref_compute_lidar(views, alpha=1, normalizations=("maxEntropy",), vn1=False):
    """metric_functions.py ``compute_lidar`` for one layer: matrixAlphaEntropy of the LDA matrix (NaN on
    an exception), each normalisation with (N = prompts, D)."""
    NUM_SAMPLES, _, D = np.shape(views)
    try:
        value = ref_entropy(ref_compute_lda_matrix(views), alpha, vn1).item()
    except Exception:
        value = np.nan
    return {norm: ref_entropy_normalization(value, norm, NUM_SAMPLES, D) for norm in normalizations}


def ref_permute_gram(K, idx=None):
    """repitl/difference_of_entropies.py ``permuteGram``: rows then columns by one permutation (the
    reference draws ``torch.randperm``; ``idx`` passes a given one)."""
    assert K.shape[0] == K.shape[1]
    if idx is None:
        idx = torch.randperm(K.shape[0])
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    K = K[idx, :]
    return K[:, idx]


def ref_doe(Kx, Ky, alpha, n_iters=10, perms=None, vn1=False):
    """repitl/difference_of_entropies.py ``doe``: mean over n_iters permutations of
    H(Kx o P Ky P^T), minus H(Kx o Ky) (accumulated as the reference: H_perm / n_iters summed)."""
    H = ref_matrix_alpha_joint_entropy([Kx, Ky], alpha, vn1)
    H_perm_avg = 0
    for i in range(n_iters):
        Kp = ref_permute_gram(Ky, None if perms is None else perms[i])
        H_perm = ref_matrix_alpha_joint_entropy([Kx, Kp], alpha, vn1)
        H_perm_avg = H_perm_avg + (H_perm / n_iters)
    return H_perm_avg - H


def ref_compute_dime(view_a, view_b, alpha=1, normalizations=("maxEntropy",), perms=None, vn1=False):
    """metric_functions.py ``compute_dime`` for one layer: Gram matrices of the two views, X^T X (D x D)
    if N > D else X X^T (N x N), doe with n_iters = 10 (NaN on an exception), normalised with (N, D)."""
    A = torch.as_tensor(view_a, dtype=torch.float64)
    B = torch.as_tensor(view_b, dtype=torch.float64)
    NUM_SAMPLES, D = A.shape
    if NUM_SAMPLES > D:
        KA, KB = A.T @ A, B.T @ B
    else:
        KA, KB = A @ A.T, B @ B.T
    try:
        value = ref_doe(KA, KB, alpha=alpha, n_iters=10, perms=perms, vn1=vn1).item()
    except Exception:
        value = np.nan
    return {norm: ref_entropy_normalization(value, norm, NUM_SAMPLES, D) for norm in normalizations}


def ref_effective_rank(X):
    """Effective rank by its definition (Roy & Vetterli 2007; not in the reference files): singular
    values s of the normalize()-d matrix, p = s / sum(s) over s > 0, ``exp(-sum p log p)``."""
    s = torch.linalg.svdvals(ref_normalize(X))
    s = s[s > 0]
    p = s / s.sum()
    return float(torch.exp(-torch.sum(p * torch.log(p))))


def ref_mean_pool(Z):
    """text_automodel_wrapper.py ``_get_pooled_hidden_states`` method 'mean': the mean over the text's
    tokens (here in float64 of the stored float32 states)."""
    return torch.as_tensor(np.asarray(Z), dtype=torch.float64).mean(dim=0).numpy()


def l2_rows(V):
    """Views scaled to unit L2 norm along the last axis (the input the reference functions expect and
    what core.layer_row feeds the workbench)."""
    V = np.asarray(V, dtype=np.float64)
    return V / np.linalg.norm(V, axis=-1, keepdims=True)


# ================================================================================================
# Real activations, through the store
# ================================================================================================
TABLE: list[dict] = []


def _layers(n_hooks: int) -> tuple[int, ...]:
    return (0, (n_hooks - 1) // 2, n_hooks - 1)


@pytest.fixture(scope="module")
def _one_thread():
    """One torch / BLAS thread for this module (restored after): on the project's 2 shared cores, two
    threads spin against each other and other jobs (measured: smollm2 extraction 4-5x slower, a 128 x 128
    eigh 25x). Only the speed changes, not a value beyond round-off."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        limits = None
    else:
        limits = threadpool_limits(limits=1)
    yield
    if limits is not None:
        limits.restore_original_limits()
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=MODELS)
def states(request, tmp_path_factory, _one_thread):
    """Per model: the 60 prompts' token states and the store's mean-pooled vectors at layers 0 / middle
    / last, and the pooled states of N_AUG seeded augmentations of the first N_AUG_PROMPTS prompts."""
    from workbench.data import TextDataset, load_dataset
    from workbench.models import load_model
    from workbench.store import ActivationStore

    name = request.param
    model = load_model(name)
    ds = load_dataset(DATASET)
    assert len(ds) == 60
    store = ActivationStore(root=tmp_path_factory.mktemp(f"lqref-{name}"))
    hooks = model.resid_hooks()
    entry = store.get_or_extract(model, ds, hooks, max_length=MAX_LENGTH)
    settings = AugmentSettings(max_words_per_text=AUG_MAX_WORDS)
    copies = augment_texts(ds.texts[:N_AUG_PROMPTS], N_AUG, seed=SEED, settings=settings)
    aug_ds = TextDataset.from_texts([t for row in copies for t in row], name="lqref-augmented")
    aug_entry = store.get_or_extract(model, aug_ds, hooks, max_length=MAX_LENGTH)
    out = {"model": name, "layers": {}}
    for layer in _layers(len(hooks)):
        hook = hooks[layer]
        prompts = [np.asarray(entry.text_activations(hook, i), dtype=np.float64) for i in range(entry.n_texts)]
        out["layers"][layer] = {
            "prompts": prompts,
            "pooled": np.asarray(entry.mean_pooled(hook), dtype=np.float64),
            "views": np.asarray(aug_entry.mean_pooled(hook), dtype=np.float64).reshape(N_AUG_PROMPTS, N_AUG, -1),
        }
    yield out
    entry.close()
    aug_entry.close()


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if TABLE:
        print("\n\nlayer-quality vs reference transcription (rel = |ours - ref| / |ref|)")
        print(f"{'metric':34s} {'model':13s} {'layer':>5s} {'ours':>16s} {'reference':>16s} {'rel':>9s}  convention")
        for r in TABLE:
            print(f"{r['metric']:34s} {r['model']:13s} {r['layer']:5d} {r['ours']:16.10g} {r['ref']:16.10g} "
                  f"{r['rel']:9.2e}  {r['convention']}")


def _rel(ours: float, ref: float) -> float:
    return abs(ours - ref) / max(abs(ref), 1e-300)


def compare(metric: str, st: dict, layer: int, ours: float, ref: float, convention: str = "none", *,
            expect_equal: bool = True):
    """Record one comparison; with ``expect_equal`` require relative agreement within RTOL."""
    assert convention in CONVENTIONS
    ours, ref = float(ours), float(ref)
    rel = _rel(ours, ref)
    TABLE.append({"metric": metric, "model": st["model"], "layer": layer, "ours": ours, "ref": ref, "rel": rel,
                  "convention": convention})
    if expect_equal:
        assert np.isfinite(ours) and np.isfinite(ref), (metric, ours, ref)
        assert rel <= RTOL, (f"{metric} ({st['model']}, layer {layer}): ours {ours!r} vs reference {ref!r}, "
                             f"rel {rel:.3e}")
    return rel


# ================================================================================================
# Comparisons
# ================================================================================================
def test_reference_alpha1_is_nan():
    """The faithful transcription at alpha = 1 (the reference's default) gives NaN: the reason for the
    ``vn1`` convention."""
    Z = np.random.default_rng(0).standard_normal((20, 8))
    with pytest.raises(ZeroDivisionError):
        ref_matrix_alpha_entropy(ref_normalize(Z) @ ref_normalize(Z).T, 1)
    assert np.isnan(ref_compute_entropy(ref_normalize(Z), alpha=1)["maxEntropy"])


@pytest.mark.parametrize("alpha", [2, 1])
def test_prompt_entropy(states, alpha):
    conv = "clamp" if alpha == 2 else "vn1"
    norms = M.ENTROPY_NORMALIZATIONS
    for layer, s in states["layers"].items():
        ref = ref_prompt_entropy(s["prompts"], alpha, norms, vn1=True)
        for norm in norms:
            ours = M.prompt_entropy(s["prompts"], alpha, norm, clamp=True)
            compare(f"prompt_entropy a={alpha} {norm}", states, layer, ours, ref[norm], conv)
        # the workbench default (no clamp) is a documented deviation: recorded, not required to agree
        compare(f"prompt_entropy a={alpha} (default clamp=False)", states, layer,
                M.prompt_entropy(s["prompts"], alpha), ref["maxEntropy"], conv, expect_equal=False)


@pytest.mark.parametrize("alpha", [2, 1])
def test_dataset_entropy(states, alpha):
    conv = "clamp" if alpha == 2 else "vn1"
    norms = M.ENTROPY_NORMALIZATIONS
    for layer, s in states["layers"].items():
        ref = ref_compute_entropy(ref_normalize(s["pooled"]), alpha, norms, vn1=True)
        for norm in norms:
            ours = M.dataset_entropy(s["pooled"], alpha, norm, clamp=True)
            compare(f"dataset_entropy a={alpha} {norm}", states, layer, ours, ref[norm], conv)
        compare(f"dataset_entropy a={alpha} (default clamp=False)", states, layer,
                M.dataset_entropy(s["pooled"], alpha), ref["maxEntropy"], conv, expect_equal=False)


def test_dataset_entropy_older_pipeline(states):
    """The older metric_utils pipeline: prompt vectors = mean of normalize()-d tokens (the workbench's
    ``pooling="normalized_mean"``), entropy on them as they are. The workbench matches it with
    ``representation_entropy(preprocess=False, clamp=True)``; its dataset_entropy (and layer_row with
    ``normalized_mean``) centres and row-normalises the pooled vectors again, which the older pipeline
    did not: recorded, not required (the docs follow the newer file)."""
    from analyses.layer_quality.core import pool

    for layer, s in states["layers"].items():
        X_ref = ref_concatenated_pass_means(s["prompts"])
        X = np.stack([pool(Z, "normalized_mean") for Z in s["prompts"]])
        np.testing.assert_allclose(X, X_ref, rtol=1e-12, atol=1e-12)
        ref = ref_compute_entropy_older(X_ref, 2)["maxEntropy"]
        compare("dataset_entropy a=2 older pipeline", states, layer,
                M.representation_entropy(X, 2, preprocess=False, clamp=True), ref, "clamp")
        row = layer_row(s["prompts"], params={"alpha": 2.0, "clamp": True, "pooling": "normalized_mean"},
                        metrics=("dataset_entropy",))
        compare("layer_row normalized_mean dataset_entropy", states, layer, row["dataset_entropy"], ref, "clamp",
                expect_equal=False)


def test_entropy_dxd_branch(states):
    """N > D: the reference forms H^T H (D x D) before clamping; ``clamp=True`` follows it. Exercised on
    the first DXD_COORDS coordinates of each prompt's real token states (N = 96..128 tokens)."""
    for layer, s in states["layers"].items():
        prompts = [Z[:, :DXD_COORDS] for Z in s["prompts"]]
        assert min(len(Z) for Z in prompts) > DXD_COORDS
        ref = ref_prompt_entropy(prompts, 2)["maxEntropy"]
        compare("prompt_entropy a=2 DxD branch", states, layer, M.prompt_entropy(prompts, 2, clamp=True), ref, "clamp")


def test_effective_rank(states):
    for layer, s in states["layers"].items():
        compare("effective_rank", states, layer, M.effective_rank(s["pooled"]), ref_effective_rank(s["pooled"]),
                "definition")


def test_curvature(states):
    for layer, s in states["layers"].items():
        ref = ref_prompt_curvature(s["prompts"])
        compare("curvature abs_cos", states, layer, M.prompt_curvature(s["prompts"], "abs_cos"), ref, "abs_cos")
        paper = M.prompt_curvature(s["prompts"], "paper")
        compare("curvature (default paper)", states, layer, paper, ref, "abs_cos", expect_equal=False)
        assert paper >= ref - 1e-12  # arccos(cos) >= arccos(|cos|) pair by pair


def test_infonce(states):
    for layer, s in states["layers"].items():
        V = l2_rows(s["views"])
        A, B = V[:, 0], V[:, 1]
        ref = ref_compute_infonce(A, B, TEMPERATURE)
        loss, bound = M.infonce(A, B, TEMPERATURE, normalize=False)
        compare("infonce", states, layer, loss, ref["raw"], "l2")
        compare("infonce_mi_lower_bound", states, layer, bound, ref["mi-lower-bound"], "l2")
        # the function's own normalisation of raw pooled views gives the same
        compare("infonce (normalize=True, raw views)", states, layer,
                M.infonce(s["views"][:, 0], s["views"][:, 1], TEMPERATURE)[0], ref["raw"], "l2")


@pytest.mark.parametrize("alpha", [2, 1])
def test_lidar(states, alpha):
    conv = "l2" if alpha == 2 else "vn1"
    norms = M.ENTROPY_NORMALIZATIONS
    for layer, s in states["layers"].items():
        V = l2_rows(s["views"])
        ref = ref_compute_lidar(V, alpha, norms, vn1=True)
        for norm in (norms if alpha == 2 else ("maxEntropy",)):
            compare(f"lidar a={alpha} {norm}", states, layer, M.lidar(V, alpha, norm, delta=1e-4), ref[norm], conv)


def _workbench_permutations(n: int, k: int = 10, seed: int = SEED):
    """The permutations ``metrics.dime`` draws itself with ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(k)]


@pytest.mark.parametrize("alpha", [2, 1])
def test_dime(states, alpha):
    conv = "perm" if alpha == 2 else "vn1"
    for layer, s in states["layers"].items():
        V = l2_rows(s["views"])
        A, B = V[:, 0], V[:, 1]
        assert A.shape[0] < A.shape[1]  # N < D: the reference's N x N branch, as the workbench
        perms = _workbench_permutations(A.shape[0])
        ref = ref_compute_dime(A, B, alpha, ("maxEntropy", "raw"), perms=perms, vn1=True)
        ours = M.dime(A, B, alpha, n_permutations=10, seed=SEED, normalize=False)  # its own seeded draws
        compare(f"dime a={alpha}", states, layer, ours, ref["maxEntropy"], conv)
        ours_raw = M.dime(A, B, alpha, "raw", permutations=perms, normalize=False)
        compare(f"dime a={alpha} raw", states, layer, ours_raw, ref["raw"], conv)


def test_dime_dxd_switch_is_not_reproduced(states):
    """Documented deviation: with N > D the reference's DiME forms D x D matrices (the Hadamard product
    then pairs coordinates, not samples); the workbench stays N x N. Both recorded on the first 8
    coordinates of the views; the workbench must equal the reference's own N x N formula there."""
    for layer, s in states["layers"].items():
        V = l2_rows(s["views"][:, :, :8])
        A, B = V[:, 0], V[:, 1]
        perms = _workbench_permutations(A.shape[0])
        ours = M.dime(A, B, 2, "raw", permutations=perms, normalize=False)
        At, Bt = torch.as_tensor(A), torch.as_tensor(B)
        nxn = ref_doe(At @ At.T, Bt @ Bt.T, 2, 10, perms).item()
        compare("dime a=2 raw, N>D, reference NxN formula", states, layer, ours, nxn, "perm")
        dxd = ref_compute_dime(A, B, 2, ("raw",), perms=_workbench_permutations(8))["raw"]  # permutes the D axis
        compare("dime a=2 raw, N>D, reference DxD switch", states, layer, ours, dxd, "perm", expect_equal=False)


def test_layer_row_matches_reference(states):
    """The analysis' own wiring (core.layer_row: pooling of the token states, L2-normalised views, seeded
    DiME) with the reference settings gives the reference numbers."""
    params = {"alpha": 2.0, "normalization": "maxEntropy", "clamp": True, "curvature": "abs_cos",
              "temperature": TEMPERATURE, "dime_permutations": 10, "lidar_delta": 1e-4, "seed": SEED}
    wanted = ("prompt_entropy", "dataset_entropy", "effective_rank", "curvature", "infonce",
              "infonce_mi_lower_bound", "lidar", "dime")
    for layer, s in states["layers"].items():
        row = layer_row(s["prompts"], None, s["views"], params=params, metrics=wanted)
        pooled = np.stack([ref_mean_pool(Z) for Z in s["prompts"]])
        V = l2_rows(s["views"])
        info = ref_compute_infonce(V[:, 0], V[:, 1], TEMPERATURE)
        ref = {
            "prompt_entropy": ref_prompt_entropy(s["prompts"], 2)["maxEntropy"],
            "dataset_entropy": ref_compute_entropy(ref_normalize(pooled), 2)["maxEntropy"],
            "effective_rank": ref_effective_rank(pooled),
            "curvature": ref_prompt_curvature(s["prompts"]),
            "infonce": info["raw"],
            "infonce_mi_lower_bound": info["mi-lower-bound"],
            "lidar": ref_compute_lidar(V, 2)["maxEntropy"],
            "dime": ref_compute_dime(V[:, 0], V[:, 1], 2, perms=_workbench_permutations(N_AUG_PROMPTS))["maxEntropy"],
        }
        conv = {"prompt_entropy": "clamp", "dataset_entropy": "clamp", "effective_rank": "definition",
                "curvature": "abs_cos", "infonce": "l2", "infonce_mi_lower_bound": "l2", "lidar": "l2", "dime": "perm"}
        for k in wanted:
            compare(f"layer_row {k}", states, layer, row[k], ref[k], conv[k])
