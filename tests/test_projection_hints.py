"""The 2-D map says why a decoder's first positions lie far out (and how to leave them out), gives every
shown token its own colour, and the Geometry page only enables UMAP's neighbours under UMAP."""

from pathlib import Path

import pytest

from workbench.analysis import run_analysis

ROOT = Path(__file__).resolve().parent.parent
PARAMS = {"max_texts": 4, "max_length": 32, "layer": 12}


@pytest.fixture(scope="module")
def projection_runs(tmp_path_factory):
    from workbench.models import load_model
    from workbench.store import ActivationStore

    smollm2 = load_model("smollm2-135m", device="cpu", dtype="float32")
    store = ActivationStore(root=tmp_path_factory.mktemp("acts"))
    kept = run_analysis("projection", model=smollm2, data="abstracts", params=PARAMS, store=store)
    left_out = run_analysis("projection", model=smollm2, data="abstracts", params={**PARAMS, "skip_first": True},
                            store=store)
    by_token = run_analysis("projection", model=smollm2, data="abstracts", params={**PARAMS, "color": "token"},
                            store=store)
    return kept, left_out, by_token


def test_first_position_points_are_explained_on_a_decoder(projection_runs):
    kept, left_out, _ = projection_runs
    assert kept.summary["first_position_norm_ratio"] > 5
    assert any("first-position points" in w and "skip_first=true" in w for w in kept.manifest["warnings"])
    assert not any("first-position" in w for w in left_out.manifest.get("warnings", []))


def test_each_shown_token_has_its_own_colour(projection_runs):
    fig = projection_runs[2].figure()
    colours = [t.marker.color for t in fig.data if t.name != "other"]
    assert len(colours) > 10 and len(set(colours)) == len(colours)


def test_umap_neighbours_only_enabled_under_umap():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app_pages" / "4_Geometry.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="proj_nn").disabled
    at.selectbox(key="proj_method").set_value("umap").run()
    assert not at.number_input(key="proj_nn").disabled
