"""Parameters are declared once (``Param``) and validated the same way for the CLI, Python, batch plans
and the app: one error line before any input is loaded, coerced values in the manifest, widgets bounded
by the declarations."""

from pathlib import Path

import numpy as np
import pytest

from workbench.analysis import Param, get_analysis, list_analyses, run_analysis, validate_params
from workbench.errors import WorkbenchError

ROOT = Path(__file__).resolve().parent.parent

#: every analysis's defaults before parameters were declared with Param: none may be lost or changed
DEFAULTS_BEFORE_PARAM = {
    "circuits": {"task": "ioi", "task_file": "", "n_examples": 250, "position": "mean", "n_features": 200,
                 "lambda": None, "n_epochs": 500, "lr": 0.001, "n_sae_examples": 10, "seeds": 5, "edges": True,
                 "ablation": "mean", "ablation_examples": None, "circuit_threshold": 0.02, "period": 50,
                 "prepend_bos": True, "batch_size": 32, "attention_scores": None},
    "decoder_lens": {"source_column": "source", "reference_column": "reference", "task_column": "task",
                     "apply_final_norm": "auto", "layers": None, "max_new_tokens": 32, "num_beams": 1,
                     "batch_size": 32, "max_examples": 500, "examples_per_task_in_table": 1},
    "geometry": {"estimators": "svd,cosine,twonn,twonn_microscope,mle_mg,pca,participation_ratio",
                 "representation": "token", "skip_first": False, "max_texts": 64, "max_length": 128,
                 "layers": "", "max_points": 5000, "max_points_spectrum": 0, "n_boot": 50, "n_boot_spectrum": 20,
                 "ci_level": 0.95, "mle_k": 20, "discard_fraction": 0.1, "reduction_factor": 5,
                 "pca_variance": 0.9, "n_pairs": 10000},
    "inversion": {"embedder": "minilm-l6", "proposer": "smollm2-135m", "beam_width": 10, "top_k": 10,
                  "top_p": 1.0, "repetition_penalty": 1.5, "max_steps": 32, "refine_steps": 32, "stages": 2,
                  "threshold": 0.99, "randomness": False, "prompt": "Write a sentence.",
                  "refine_prompt": "write a sentence similar to this: {text}", "layers": None, "max_items": 20,
                  "batch_size": 128, "check_norms": True},
    "layer_quality": {"max_texts": 200, "max_length": 128, "skip_first": False, "pooling": "mean", "alpha": 1.0,
                      "normalization": "maxEntropy", "clamp": False, "curvature": "paper", "aug_texts": 32,
                      "n_augmentations": 16, "aug_max_words": 32, "aug_word_p": 0.3, "aug_char_p": 0.3,
                      "temperature": 0.1, "dime_permutations": 10, "lidar_delta": 0.0001, "probe_data": "auto",
                      "probe_max_texts": 0, "probe_folds": 5, "retrieval_data": "abstracts",
                      "retrieval_query_column": "title", "retrieval_doc_column": "abstract", "retrieval_pairs": 200},
    "layer_stats": {"max_texts": 64, "max_length": 128, "skip_first": False},
    "logit_lens": {"max_texts": 16, "max_length": 64, "top_k": 5, "target": "final_top1", "resid_mid": False},
    "projection": {"layer": -1, "method": "pca", "representation": "token", "skip_first": False, "color": "",
                   "max_texts": 64, "max_length": 128, "max_points": 5000, "umap_n_neighbors": 15,
                   "umap_min_dist": 0.1, "umap_metric": "euclidean"},
    "tuned_lens": {"max_texts": 16, "max_length": 64, "top_k": 5, "target": "final_top1", "compare_logit": True},
}


def _error_line(analysis: str, params: dict) -> str:
    """The error of a run whose inputs do not exist: a parameter error proves it came before any loading."""
    with pytest.raises(WorkbenchError) as info:
        run_analysis(analysis, model="no-such-model", data="no-such-dataset.txt", params=params)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------ inputs that misbehaved before


def test_negative_max_texts_is_refused():
    # layer_stats took max_texts=-1 as texts[:-1], silently dropping the last text
    assert _error_line("layer_stats", {"max_texts": -1}) == \
        "layer_stats: parameter max_texts must be an integer >= 1; got -1"
    assert _error_line("geometry", {"max_texts": -1}) == \
        "geometry: parameter max_texts must be an integer >= 0; got -1"


def test_fractional_max_texts_is_refused():
    assert _error_line("geometry", {"max_texts": 2.5}) == "geometry: parameter max_texts must be an integer >= 0; got 2.5"


def test_boolean_max_texts_is_refused():
    assert _error_line("layer_stats", {"max_texts": True}) == \
        "layer_stats: parameter max_texts must be an integer >= 1; got true"


def test_ci_level_outside_zero_one_is_refused():
    assert _error_line("geometry", {"ci_level": 5}) == "geometry: parameter ci_level must be a number in (0, 1); got 5"


def test_negative_n_boot_is_refused():
    assert _error_line("geometry", {"n_boot": -5}) == "geometry: parameter n_boot must be an integer >= 0; got -5"


def test_negative_max_points_is_refused():
    assert _error_line("geometry", {"max_points": -1}) == \
        "geometry: parameter max_points must be an integer >= 0; got -1"
    assert _error_line("projection", {"max_points": -1}).startswith("projection: parameter max_points must be")


# ------------------------------------------------------------ what is accepted, and how it arrives


def test_text_for_a_number_choices_and_custom_formats_are_one_line_errors():
    assert _error_line("layer_stats", {"max_texts": "many"}) == \
        'layer_stats: parameter max_texts must be an integer >= 1; got "many"'
    assert "one of \"token\", \"mean_pooled\"" in _error_line("geometry", {"representation": "sentence"})
    assert "comma-separated list of svd" in _error_line("geometry", {"estimators": "twonn,bogus"})
    assert "containing {text}" in _error_line("inversion", {"refine_prompt": "no placeholder"})
    assert "parameter layers" in _error_line("inversion", {"layers": "0,x"})
    assert "0 (skip) or an integer >= 2" in _error_line("layer_quality", {"aug_texts": 1})
    line = _error_line("circuits", {"n_examples": 4, "n_sae_examples": 9})
    assert line.startswith("circuits: ") and "n_sae_examples = 9" in line and "n_examples = 4" in line
    assert "has no parameter" in _error_line("layer_stats", {"bogus": 1})


def test_integral_floats_become_ints_and_the_manifest_records_coerced_values():
    X = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)
    result = run_analysis("geometry", vectors=X, params={"estimators": "svd", "n_boot_spectrum": 0,
                                                          "max_points": 30.0, "seed": 3.0})
    assert result.manifest["params"]["max_points"] == 30 and type(result.manifest["params"]["max_points"]) is int
    assert type(result.manifest["params"]["seed"]) is int and result.manifest["seed"] == 3
    assert "--set max_points=30 " in result.manifest["cli"] + " "


def test_param_rules():
    count = Param(64, min=0)
    assert count.coerce(64.0) == 64 and type(count.coerce(np.int64(3))) is int
    for bad in (-1, 2.5, True, "64", None, float("nan")):
        with pytest.raises(ValueError):
            count.coerce(bad)
    level = Param(0.95, min=0, max=1, closed="neither")
    assert type(level.coerce(0.5)) is float and type(Param(1.5).coerce(2)) is float
    for bad in (0, 1.0, 5):
        with pytest.raises(ValueError):
            level.coerce(bad)
    norm = Param("auto", choices=("auto", True, False, "both"))
    assert norm.coerce(True) is True and norm.coerce("both") == "both"
    with pytest.raises(ValueError):
        norm.coerce(1)  # 1 == True, but it is not the choice true
    assert Param("", type=str).coerce(3) == "3"  # YAML reads `--set layers=3` as a number
    assert Param(None, type=float, min=0).coerce(None) is None
    with pytest.raises(TypeError):
        Param(None)  # the type cannot be inferred
    assert validate_params("x", {"n": count}, {"n": 8.0}) == {"n": 8}


# ------------------------------------------------------------ the declarations themselves


def test_every_analysis_declares_every_parameter_it_had():
    specs = {spec.name: spec for spec in list_analyses()}
    assert set(DEFAULTS_BEFORE_PARAM) <= set(specs)
    for name, before in DEFAULTS_BEFORE_PARAM.items():
        spec = specs[name]
        assert all(isinstance(p, Param) for p in spec.params.values()), name
        # none lost or changed; parameters added since (e.g. geometry's transform) are declared like the rest
        assert before.items() <= spec.defaults.items(), (name, {k: v for k, v in before.items()
                                                                 if spec.defaults.get(k, object()) != v})
        assert set(spec.param_help) == set(spec.params) and all(spec.param_help.values()), name
        assert isinstance(spec.all_params["seed"], Param)


def test_every_default_passes_its_own_validation():
    for spec in list_analyses():
        for name, param in spec.all_params.items():
            assert param.coerce(param.default) == param.default, f"{spec.name}.{name}"
        assert validate_params(spec.name, spec.all_params, {}) == {**{"seed": 0}, **spec.defaults}


# ------------------------------------------------------------ CLI


def test_set_with_a_yaml_tag_is_one_error_line(tmp_path, capsys):
    from workbench.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "layer_stats", "--out", str(tmp_path / "out"), "--set", "x=!!python/object:os.system"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --set x:") and "Traceback" not in err[0]


def test_analyses_command_lists_type_bounds_default_and_help(capsys):
    from workbench.cli import main

    main(["analyses"])
    out = capsys.readouterr().out
    assert "--set ci_level=0.95   [a number in (0, 1)]  confidence level of the intervals" in out
    assert '--set representation="token"   [one of "token", "mean_pooled"]' in out
    assert "--set seed=0   [an integer in [0, 4294967295]]" in out


# ------------------------------------------------------------ app widgets


def _page(name: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app_pages" / name), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("page, analysis, keys", [
    ("6_Circuits.py", "circuits", {"circ_n": "n_examples", "circ_seeds": "seeds", "circ_seed": "seed",
                                   "circ_thr": "circuit_threshold", "circ_period": "period", "circ_feat": "n_features",
                                   "circ_epochs": "n_epochs", "circ_nsae": "n_sae_examples"}),
    ("4_Geometry.py", "geometry", {"geo_texts": "max_texts", "geo_pts": "max_points", "geo_boot": "n_boot",
                                   "geo_k": "mle_k", "geo_len": "max_length", "geo_pairs": "n_pairs"}),
])
def test_page_number_widgets_have_the_declared_bounds(page, analysis, keys):
    at = _page(page)
    declared = get_analysis(analysis).all_params
    # bounds that follow another widget (the SAE draws its examples from 2 x prompts per side)
    dependent_max = {"circ_nsae": lambda: 2 * at.number_input(key="circ_n").value}
    for key, name in keys.items():
        widget = at.number_input(key=key)
        expected_max = dependent_max[key]() if key in dependent_max else declared[name].max
        assert (widget.min, widget.max) == (declared[name].min, expected_max), key
        declared[name].coerce(widget.value)


def test_open_bounds_give_widgets_only_accepted_values():
    at = _page("4_Geometry.py")
    discard = get_analysis("geometry").params["discard_fraction"]  # [0, 1)
    widget = at.number_input(key="geo_discard")
    assert widget.min == 0 and widget.max < 1
    assert discard.coerce(widget.max) == widget.max
