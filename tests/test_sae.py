"""The SAE back-end's math: a planted dictionary recovered, unit-norm atoms, seeded and resumable
training, SAELens's file layout, feature families on a planted hierarchy, steering, and one clear
error for each bad input (the reference-loop comparison is in test_sae_reference.py)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from analyses.sae import files, load_sae, train_on_array
from analyses.sae.families import family_stats, find_families
from analyses.sae.inputs import ArrayRows
from analyses.sae.sae import SparseAutoencoder
from analyses.sae.settings import resolve, settings_from
from analyses.sae.steering import steered_search
from analyses.sae.train import fit
from workbench.errors import WorkbenchError

from test_sae_reference import planted

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_planted_dictionary_is_recovered_at_the_right_k():
    X, D = planted()
    sae, record = train_on_array(X, k=3, d_sae=128, steps=1500, batch_size=256, lr=1e-3)
    best = (D @ sae.W_dec.detach().numpy().T).max(axis=1)
    assert best.mean() >= 0.9, best.mean()
    assert record["log"][-1]["recon"] < 0.2


def test_training_is_seeded_and_keeps_atoms_at_unit_norm():
    X, _ = planted(n=1000)
    a, _ = train_on_array(X, k=3, d_sae=64, steps=40, batch_size=100, seed=3)
    b, _ = train_on_array(X, k=3, d_sae=64, steps=40, batch_size=100, seed=3)
    c, _ = train_on_array(X, k=3, d_sae=64, steps=40, batch_size=100, seed=4)
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.b_enc, b.b_enc)
    assert not torch.equal(a.W_dec, c.W_dec)
    np.testing.assert_allclose(a.W_dec.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)


def test_an_interrupted_run_resumes_to_identical_weights(tmp_path):
    X, _ = planted(n=1200)
    s = resolve(settings_from({"k": 3, "d_sae": 64, "steps": 40, "batch_size": 100, "checkpoint_every": 10}),
                32, target_token_level=False)
    config = {"data": "planted", "settings": s}
    whole, _ = fit(ArrayRows(X), s)

    def stop(step, out):
        if step == 24:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(ArrayRows(X), s, folder=tmp_path, config=config, on_step=stop)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 20
    resumed, record = fit(ArrayRows(X), s, folder=tmp_path, config=config)
    assert record["resumed_from_step"] == 20
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(whole, name), getattr(resumed, name)), name
    # another identity never resumes from this checkpoint
    _, fresh = fit(ArrayRows(X), s, folder=tmp_path, config={**config, "data": "other"})
    assert fresh["resumed_from_step"] == 0


def test_relu_architecture_trains_sparse_codes():
    X, _ = planted(n=2000)
    sae, record = train_on_array(X, architecture="relu", d_sae=64, steps=300, batch_size=200, l1_coef=0.05)
    z = sae.encode(torch.as_tensor(X[:200]))
    assert sae.architecture == "relu" and record["log"][-1]["recon"] < 0.5
    assert float((z > 0).float().sum(1).mean()) < 40


def test_saelens_layout_round_trip_and_formula(tmp_path):
    X, _ = planted(n=500)
    sae, _ = train_on_array(X, k=3, d_sae=64, steps=20, batch_size=100)
    info = {"sae_fingerprint": "m@x:float32|sentence|abc|def", "model": "m", "hook": "sentence_embedding",
            "layer": None, "data": {"name": "planted"}, "settings": {"max_length": 0}}
    files.save_sae(tmp_path, sae, info, torch.zeros(64))
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["d_in"] == 32 and cfg["d_sae"] == 64 and cfg["k"] == 3
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "sentence_embedding" and cfg["hook_name"] == "sentence_embedding"
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in w.items()} == {"W_enc": (32, 64), "b_enc": (64,), "W_dec": (64, 32),
                                                         "b_dec": (32,)}
    assert tuple(load_file(str(tmp_path / "sparsity.safetensors"))["sparsity"].shape) == (64,)
    # SAELens's TopK SAE, written out: encode = ReLU(TopK((x - b_dec) W_enc + b_enc)), decode = z W_dec + b_dec
    x = torch.as_tensor(X[:16])
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = torch.topk(pre, 3, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))
    loaded, _ = load_sae(tmp_path)
    torch.testing.assert_close(loaded.encode(x), z)
    torch.testing.assert_close(loaded(x), z @ w["W_dec"] + w["b_dec"])


def test_bad_sae_inputs_give_one_clear_error(tmp_path):
    with pytest.raises(WorkbenchError, match="k = 70 must be between 1 and the dictionary size d_sae = 64"):
        SparseAutoencoder(32, 64, k=70)
    X, _ = planted(n=300)
    with pytest.raises(WorkbenchError, match="k = 99 is greater than the dictionary size d_sae = 40"):
        train_on_array(X, k=99, d_sae=40, steps=2)
    sae = SparseAutoencoder(32, 64, k=4)
    with pytest.raises(WorkbenchError, match="reads vectors of dimension 32; got 7") as err:
        sae.encode(torch.zeros(3, 7))
    assert "\n" not in str(err.value)
    with pytest.raises(WorkbenchError, match="No SAE at"):
        load_sae(tmp_path / "nothing")


def _hierarchy(n=4000, seed=0):
    """Binary codes: 3 parents with 5 children each (a child fires only with its parent, one child at a
    time); a fifth of the rows hold one of 10 unrelated features instead."""
    rng = np.random.default_rng(seed)
    A = np.zeros((n, 3 + 15 + 10), np.float32)
    for i in range(n):
        if rng.random() < 0.2:
            A[i, 18 + rng.integers(10)] = 1
            continue
        p = rng.integers(3)
        A[i, p] = 1
        if rng.random() < 0.8:
            A[i, 3 + 5 * p + rng.integers(5)] = 1
    return A


def test_families_recover_a_planted_hierarchy():
    A = _hierarchy()
    cooc, counts = A.T.astype(np.float64) @ A, A.sum(0)
    fams = find_families(cooc, counts, len(A), max_density=0.5, min_children=4)
    found = {f["parent"]: sorted(f["children"]) for f in fams}
    for p in range(3):
        assert found.get(p) == list(range(3 + 5 * p, 8 + 5 * p)), found
    stats = family_stats(cooc, fams, seed=0)
    assert stats["median_parent_child_ratio"] > 1 and stats["block_share"] > stats["block_share_random_order"]


def test_steering_moves_results_toward_the_feature():
    X, D = planted(n=400, seed=1)
    sae, _ = train_on_array(X, k=3, d_sae=64, steps=300, batch_size=200)
    codes = sae.encode(torch.as_tensor(X)).detach().numpy()
    f = int(np.argmax((codes > 0).mean(0) * (codes.max(0) > 0)))
    q = X[int(np.argmin(codes[:, f]))]
    res = steered_search(q, X, codes[:, f], sae, f, 3.0, "add", 10, 20, np.array([0.0, 3.0]))
    assert res["moved_after"]["share_in_feature_top"] > res["moved_before"]["share_in_feature_top"]
    assert res["moved_after"]["mean_feature_activation"] > res["moved_before"]["mean_feature_activation"]
    assert res["sweep"][0]["share_in_feature_top"] == res["moved_before"]["share_in_feature_top"]


def test_spliced_loss_of_an_exact_reconstruction_is_the_clean_loss(tiny_llama_dir):
    from analyses.sae.quality import spliced_loss
    from workbench.models import load_model

    model = load_model(str(tiny_llama_dir))
    seqs = [model.tokenizer(t)["input_ids"] for t in ("the cat sat on the mat", "paris is the capital of france")]
    out = spliced_loss(model, torch.nn.Identity(), seqs, "blocks.0.hook_resid_post", skip_first=True, batch_size=1)
    assert out["n_predictions"] == sum(len(s) - 1 for s in seqs)
    assert out["ce_sae"] == pytest.approx(out["ce_clean"], abs=1e-5) and abs(out["ce_zero"] - out["ce_clean"]) > 1e-3


def test_word_contrast_label_discounts_features_with_few_examples():
    from collections import Counter

    from analyses.sae.features import contrast_words, wilson_lower

    assert wilson_lower(2, 2) == pytest.approx(0.425, abs=1e-3) and wilson_lower(8, 8) == pytest.approx(0.747, abs=1e-3)
    assert wilson_lower(2, 2) < wilson_lower(7, 8)  # 2 of 2 is a larger share than 7 of 8, but weaker evidence
    background = Counter({"graph": 10, "neural": 80, "nets": 5})
    examples = [{"snippet": "graph neural nets"}] * 3 + [{"snippet": "graph neural"}] * 3 + [{"snippet": "graph"}] * 2
    words = contrast_words(examples, background, 100, frozenset())
    # graph: 8/8 vs 10%; nets: 3/8 vs 5%; neural: 6/8 vs 80% (no contrast, left out)
    assert [w for w, _, _ in words] == ["graph", "nets"] and words[0][1:] == [1.0, 0.1]
    assert contrast_words(examples[:1], background, 100, frozenset()) == []  # one example: no label


def test_family_tree_figure_nodes_carry_their_feature_ids():
    import pandas as pd

    from analyses.sae.figures import family_tree_figure
    from workbench.results import Result

    rows = [dict(family=0, root=5, feature=5, tree_parent=None, depth=0, density=0.1, label="a", parent_child_ratio=2.0),
            dict(family=0, root=5, feature=7, tree_parent=5, depth=1, density=0.05, label="b", parent_child_ratio=2.0),
            dict(family=0, root=5, feature=9, tree_parent=7, depth=2, density=0.01, label="c", parent_child_ratio=2.0)]
    result = Result("sae_families", pd.DataFrame(rows), {})
    fig = family_tree_figure(result, 0)
    nodes = fig.data[1]
    assert dict(zip(nodes.customdata, nodes.x)) == {5: 0, 7: 1, 9: 2}  # feature id -> depth
