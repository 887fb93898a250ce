"""Batch plans: failures stay local to their job, the index is always written, vectors-only plans,
unique job folders, and `out:` relative to the plan file."""

import json

import numpy as np
import pandas as pd
import pytest

from workbench.analysis import AnalysisSpec, _REGISTRY, register
from workbench.cli import main, plan_jobs


@pytest.fixture()
def crashing_analysis():
    """An analysis with a bug (it raises something other than WorkbenchError)."""
    def run(ctx):
        raise ZeroDivisionError("a bug in the back-end")

    register(AnalysisSpec(name="crashes", title="crashes", question="?", run=run, figure=lambda r: None,
                          inputs=("model", "vectors")))
    yield "crashes"
    _REGISTRY.pop("crashes", None)


def _run_batch(plan_path, monkeypatch, cache):
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(plan_path), "--no-static"])
    return exc.value.code


def test_one_failing_job_does_not_stop_the_batch(tiny_llama_dir, tmp_path, monkeypatch, crashing_analysis):
    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat\na dog on the mat\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"analyses: [crashes, layer_stats]\nmodels: ['{tiny_llama_dir}', '{tmp_path / 'no-such-model'}']\n"
                    f"datasets: ['{texts}']\nparams: {{layer_stats: {{max_length: 8}}}}\nout: batch\n")
    assert _run_batch(plan, monkeypatch, tmp_path / "cache") == 1
    out = tmp_path / "batch"  # relative to the plan's folder
    index = {r["job"]: r for r in json.loads((out / "index.json").read_text())}
    assert len(index) == 4
    crashed = [r for r in index.values() if r["analysis"] == "crashes" and r["status"].startswith("failed")]
    assert crashed and "ZeroDivisionError" in crashed[0]["status"]
    assert "ZeroDivisionError" in (out / crashed[0]["job"] / "error.txt").read_text()
    ok = [r for r in index.values() if r["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["analysis"] == "layer_stats"  # it ran after the crash
    assert any(r["status"].startswith("error:") and "no-such-model" in r["status"] for r in index.values())
    assert "traceback" in (out / "index.html").read_text()


def test_vectors_only_plan_and_same_stem_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        np.save(tmp_path / sub / "emb.npy", rng.normal(size=(40, 6)).astype(np.float32))
    plan = tmp_path / "plan.yaml"
    plan.write_text("analyses: [geometry]\nvectors: [a/emb.npy, b/emb.npy]\n"
                    "params: {geometry: {estimators: svd, n_boot_spectrum: 0}}\nout: out\n")
    jobs = plan_jobs({"analyses": ["geometry"], "vectors": ["a/emb.npy", "b/emb.npy"]})
    assert [j[4] for j in jobs] == ["geometry__emb", "geometry__emb-2"]
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    main(["batch", str(plan), "--no-static"])  # every job ok: no SystemExit
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [r["status"] for r in index] == ["ok", "ok"]
    tables = [pd.read_parquet(tmp_path / "out" / r["job"] / "result.parquet") for r in index]
    assert not tables[0]["value"].equals(tables[1]["value"])  # two different files, two results
