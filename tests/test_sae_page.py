"""The SAE page under AppTest: a small SAE trained beforehand is found by its settings (not retrained),
a feature opens with its examples, a family member opens in the feature browser, steering shows both
rankings. The analyses end to end on tiny models, the train-sae command, and bad inputs."""

import json
import shlex
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench.analysis import run_analysis
from workbench.data import load_dataset
from workbench.errors import WorkbenchError
from workbench.models import load_model

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "app_pages" / "9_SAE_features.py")
SMALL = {"steps": 30, "max_texts": 40, "max_length": 32, "d_sae": 64, "k": 4}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    return tmp_path


def _page(model_dir: Path, view: str, target: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["model"] = str(model_dir)
    at.session_state["model_other"] = str(model_dir)
    for key, value in {"sae_steps": SMALL["steps"], "sae_texts": SMALL["max_texts"], "sae_len": SMALL["max_length"],
                       "sae_d": SMALL["d_sae"], "sae_k": SMALL["k"], "sae_target": target, "sae_view": view}.items():
        at.session_state[key] = value
    return at.run()


def test_page_finds_a_trained_sae_and_opens_a_feature(cache, tiny_bert_dir):
    from analyses.sae import train_sae

    folder = train_sae(load_model(str(tiny_bert_dir)), load_dataset("abstracts"), target="sentence", **SMALL)
    at = _page(tiny_bert_dir, "Features", "sentence")
    assert not at.exception, [e.value for e in at.exception]
    listed = at.selectbox(key="sae_folder")
    assert listed.label == "SAE (1 trained for this model)" and "sentence · k=4 · 64 latents" in listed.options[1]
    at.button(key="run_sae_features").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (result,) = at.session_state["_results"].values()
    assert result.summary["sae"]["trained_now"] is False and result.summary["sae"]["folder"] == str(folder)
    at.number_input(key="sae_feature").set_value(3).run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(m.value for m in at.markdown)
    assert "Feature 3" in text and "Top-activating examples" in text
    assert any("workbench run sae_features" in c.value for c in at.code)
    assert len(at.get("plotly_chart")) == 2  # the feature map and this feature's histogram


def test_family_member_opens_in_the_browser_and_steering_shows_both_rankings(cache, tiny_llama_dir, tiny_bert_dir):
    at = _page(tiny_llama_dir, "Families", "layer:1")
    at.button(key="run_sae_families").click().run()
    assert not at.exception, [e.value for e in at.exception]
    opens = [b for b in at.button if b.key and b.key.startswith("sae_open_")]
    assert opens, "no family found on the tiny model"
    assert len(at.get("plotly_chart")) == 2  # the families overview and the clickable tree of one family
    member = int(opens[1].key.rsplit("_", 1)[1])
    opens[1].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["sae_view"] == "Features" and at.session_state["sae_feature"] == member
    assert any(f"Feature {member}" in m.value for m in at.markdown)

    at = _page(tiny_bert_dir, "Steered search", "sentence")
    at.button(key="run_sae_steering").click().run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(m.value for m in at.markdown)
    assert "**Before**" in text and "**After**" in text


def test_analyses_end_to_end_on_tiny_models(cache, tiny_llama_dir, tiny_bert_dir, capsys):
    sentence = run_analysis("sae_quality", model=str(tiny_bert_dir), data="abstracts", params=SMALL)
    assert set(sentence.table["split"]) == {"train", "heldout"}
    down = sentence.summary["downstream"]
    assert down["kind"] == "retrieval" and down["n_pairs"] == 400 and 0 < down["mrr_original"] <= 1
    residual = run_analysis("sae_quality", model=str(tiny_llama_dir), data="abstracts",
                            params={**SMALL, "target": "layer:1"})
    down = residual.summary["downstream"]
    assert down["kind"] == "spliced next-token loss" and down["ce_clean"] > 0 and down["n_texts"] > 0
    assert residual.summary["sae"]["trained_now"] is True
    features = run_analysis("sae_features", model=str(tiny_llama_dir), data="abstracts",
                            params={**SMALL, "target": "layer:1"})
    assert features.summary["sae"]["trained_now"] is False  # found by its settings
    assert len(features.table) == 64 and json.loads(features.table["promoted"][0])
    examples = json.loads(features.table.sort_values("density")["examples"].iloc[-1])
    assert examples and {"before", "token", "after", "activation"} <= set(examples[0])
    for result in (sentence, residual, features):
        result.figure()
    # the page's train-sae line names the same SAE (same identity, so the same cache folder)
    from workbench.cli import main

    command = residual.summary["sae"]["train_command"]
    assert command.startswith(f"workbench train-sae --model {tiny_llama_dir} --data abstracts --target layer:1")
    main(shlex.split(command)[1:])
    assert residual.summary["sae"]["folder"] in capsys.readouterr().out


def test_train_sae_command_writes_saelens_files(cache, tiny_llama_dir, tiny_bert_dir, capsys):
    from workbench.cli import main

    out = cache / "my_sae"
    argv = ["train-sae", "--model", str(tiny_llama_dir), "--data", "abstracts", "--target", "layer:2", "--steps", "20",
            "--max-texts", "20", "--max-length", "16", "--d-sae", "64", "--k", "4", "--out", str(out)]
    main(argv)
    printed = capsys.readouterr().out
    assert "FVU" in printed and str(out) in printed
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["hook_name"] == "blocks.1.hook_resid_post" and cfg["workbench"]["target"] == "layer:2"
    assert cfg["workbench"]["model_fingerprint"] == load_model(str(tiny_llama_dir), lazy=True).fingerprint
    assert not (out / "checkpoint.json").exists()
    # the same width (32), another model: refused by its fingerprint
    with pytest.raises(WorkbenchError, match="was trained on .*, not on"):
        run_analysis("sae_features", model=str(tiny_bert_dir), data="abstracts", params={"sae": str(out)})


def test_bad_inputs_of_the_analyses(cache, tiny_llama_dir, tiny_bert_dir):
    with pytest.raises(WorkbenchError, match="k = 80 is greater than the dictionary size d_sae = 64"):
        run_analysis("sae_quality", model=str(tiny_bert_dir), data="abstracts", params={**SMALL, "k": 80})
    with pytest.raises(WorkbenchError, match=r"has residual layers 0\.\.2; target=layer:7 does not exist"):
        run_analysis("sae_quality", model=str(tiny_llama_dir), data="abstracts", params={**SMALL, "target": "layer:7"})
    with pytest.raises(WorkbenchError, match="target=sentence needs a sentence embedder"):
        run_analysis("sae_quality", model=str(tiny_llama_dir), data="abstracts", params={**SMALL, "target": "sentence"})
    with pytest.raises(WorkbenchError, match="parameter target must be"):
        run_analysis("sae_quality", model=str(tiny_llama_dir), data="abstracts", params={"target": "layer three"})
    with pytest.raises(WorkbenchError, match="No SAE with these settings"):
        run_analysis("sae_features", model=str(tiny_bert_dir), data="abstracts", params={**SMALL, "train_missing": False})
