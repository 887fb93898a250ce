"""Results, export and the CLI end to end on a tiny model (real files on disk)."""

import json
import shlex
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.analysis import get_analysis, list_analyses, run_analysis
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.results import Result
from analyses.layer_stats import layer_statistics

ROOT = Path(__file__).resolve().parent.parent


def test_layer_statistics_closed_forms():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 8))
    layers = [base, base * 3.0, -base]  # same direction ×3, then opposite
    t = layer_statistics(layers)
    norms = np.linalg.norm(base, axis=1).mean()
    np.testing.assert_allclose(t["mean_norm"], [norms, 3 * norms, norms], rtol=1e-5)
    np.testing.assert_allclose(t["cos_prev"].iloc[1:], [1.0, -1.0], atol=1e-6)
    # all variance on one axis -> top-PC share 1; isotropic Gaussian -> about 1/D
    one_axis = np.outer(rng.normal(size=500), rng.normal(size=8))
    assert layer_statistics([one_axis])["top_pc_variance"].iloc[0] == pytest.approx(1.0, abs=1e-9)
    iso = rng.normal(size=(20000, 8))
    assert layer_statistics([iso])["top_pc_variance"].iloc[0] == pytest.approx(1 / 8, abs=0.01)
    # the SVD definition: sigma_1^2 / sum sigma_i^2 of centred data
    x = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    assert layer_statistics([x])["top_pc_variance"].iloc[0] == pytest.approx(s[0] ** 2 / (s ** 2).sum(), rel=1e-6)  # inputs are cast to float32


def test_registry_lists_layer_stats_and_rejects_unknown():
    assert "layer_stats" in [s.name for s in list_analyses()]
    with pytest.raises(WorkbenchError, match="No analysis"):
        get_analysis("nope")


def test_run_analysis_manifest_and_params(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat\na dog on the mat\nred blue green big\n")
    r = run_analysis("layer_stats", model=str(tiny_llama_dir), data=str(texts), params={"max_length": 16})
    assert list(r.table["layer"]) == [0, 1, 2]
    m = r.manifest
    assert m["model"]["fingerprint"].startswith(str(tiny_llama_dir)) and m["dataset"]["n_texts"] == 3
    assert m["seed"] == 0 and m["versions"]["torch"].startswith("2.13.0")
    assert m["cli"].startswith("workbench run layer_stats --model") and "--set max_length=16" in m["cli"]
    assert m["cache"][0]["hit"] is False
    r2 = run_analysis("layer_stats", model=str(tiny_llama_dir), data=str(texts), params={"max_length": 16})
    assert r2.manifest["cache"][0]["hit"] is True
    pd.testing.assert_frame_equal(r.table, r2.table)
    with pytest.raises(WorkbenchError, match="no parameter"):
        run_analysis("layer_stats", model=str(tiny_llama_dir), data=str(texts), params={"bogus": 1})
    with pytest.raises(WorkbenchError, match="parameter max_texts must be an integer"):
        run_analysis("layer_stats", model=str(tiny_llama_dir), data=str(texts), params={"max_texts": "many"})


def test_save_and_load_result(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat\na dog\n")
    r = run_analysis("layer_stats", model=str(tiny_llama_dir), data=str(texts))
    paths = r.save(tmp_path / "out", static=False)
    assert {"parquet", "csv", "html", "manifest"} <= set(paths)
    html = (tmp_path / "out" / "figure.html").read_text()
    assert "<script src=\"http" not in html and len(html) > 1_000_000  # plotly.js embedded, no CDN script
    back = Result.load(tmp_path / "out")
    pd.testing.assert_frame_equal(back.table, r.table)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["analysis"] == "layer_stats"


def _cli(*args, env_cache):
    import os

    env = dict(os.environ, WORKBENCH_CACHE=str(env_cache))
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


def test_cli_run_cache_and_errors(tiny_llama_dir, tmp_path):
    cache = tmp_path / "cache"
    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat\na dog on the mat\n")
    out = tmp_path / "out"
    p = _cli("run", "layer_stats", "--model", str(tiny_llama_dir), "--data", str(texts), "--out", str(out),
             "--set", "max_length=16", "--no-static", env_cache=cache)
    assert p.returncode == 0, p.stderr
    assert "(extracted, now cached)" in p.stdout
    for name in ("result.parquet", "figure.html", "manifest.json"):
        assert (out / name).exists()
    p = _cli("run", "layer_stats", "--model", str(tiny_llama_dir), "--data", str(texts), "--out", str(out),
             "--set", "max_length=16", "--no-static", env_cache=cache)
    assert "(cache hit)" in p.stdout
    ls = _cli("cache", "ls", env_cache=cache)
    assert "1 entries" in ls.stdout
    key = ls.stdout.splitlines()[1].split()[0]
    assert _cli("cache", "verify", env_cache=cache).returncode == 0
    assert _cli("cache", "rm", key, env_cache=cache).returncode == 0
    assert "0 entries" in _cli("cache", "ls", env_cache=cache).stdout
    bad = _cli("run", "layer_stats", "--model", str(tiny_llama_dir), "--data", str(tmp_path / "missing.txt"),
               "--out", str(out), env_cache=cache)
    assert bad.returncode == 2 and bad.stderr.startswith("error: No dataset") and "Traceback" not in bad.stderr
    assert _cli("cache", "clear", env_cache=cache).returncode == 0


def test_cli_batch_writes_index(tiny_llama_dir, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat\na dog on the mat\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"analyses: [layer_stats]\nmodels: ['{tiny_llama_dir}']\ndatasets: ['{texts}']\n"
                    f"params: {{layer_stats: {{max_length: 8}}}}\nout: {tmp_path / 'batch'}\n")
    p = _cli("batch", str(plan), "--no-static", env_cache=tmp_path / "cache")
    assert p.returncode == 0, p.stderr
    index = json.loads((tmp_path / "batch" / "index.json").read_text())
    assert len(index) == 1 and index[0]["status"] == "ok"
    assert (tmp_path / "batch" / index[0]["job"] / "result.parquet").exists()
    assert "layer_stats" in (tmp_path / "batch" / "index.html").read_text()


def test_static_export_or_clear_message(tiny_llama_dir, tmp_path, monkeypatch):
    from workbench import results

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat\n")
    r = run_analysis("layer_stats", model=str(tiny_llama_dir), data=str(texts))
    if results.chromium_path() is None:
        with pytest.raises(WorkbenchError, match="chromium"):
            results.figure_image(r.figure(), "png")
    else:
        png = results.figure_image(r.figure(), "png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert b"<svg" in results.figure_image(r.figure(), "svg")[:500]
    monkeypatch.setattr(results, "chromium_path", lambda: None)
    with pytest.raises(WorkbenchError, match="apt-get install chromium"):
        results.figure_image(r.figure(), "png")


def test_cached_run_never_loads_the_weights(tiny_llama_dir, tmp_path, monkeypatch):
    """A second run whose activations are all in the store gets its key from the model's card."""
    from workbench.analysis import run_analysis
    from workbench.models import LazyModel, clear_loaded

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat\na dog on the mat\n")
    first = run_analysis("layer_stats", model=str(tiny_llama_dir), data=str(texts), params={"max_length": 8})
    assert first.manifest["model"]["weights_loaded"] is True
    clear_loaded()  # a fresh process: nothing loaded in memory
    second = run_analysis("layer_stats", model=str(tiny_llama_dir), data=str(texts), params={"max_length": 8})
    assert second.manifest["model"]["weights_loaded"] is False and second.manifest["cache"][0]["hit"]
    pd.testing.assert_frame_equal(first.table, second.table)
    # anything the card lacks loads the model on first use
    from workbench.models import load_model

    lazy = load_model(str(tiny_llama_dir), lazy=True)
    assert isinstance(lazy, LazyModel) and not lazy.loaded
    assert lazy.tokenizer is not None and lazy.loaded


def test_cached_run_in_a_fresh_process_never_imports_torch(tiny_llama_dir, tmp_path):
    """The cached-run benchmark's premise: a full store hit pays for neither the weights nor torch."""
    env = {**os.environ, "WORKBENCH_CACHE": str(tmp_path / "cache")}
    texts = tmp_path / "t.txt"
    texts.write_text("the cat sat\na dog on the mat\n")
    argv = ["run", "layer_stats", "--model", str(tiny_llama_dir), "--data", str(texts), "--set", "max_length=8",
            "--no-static"]
    probe = ("import sys; from workbench.cli import main; main(sys.argv[1:]); "
             "print('torch imported:', 'torch' in sys.modules)")
    outs = []
    for i in range(2):  # the first run extracts (torch, weights); the second is served from the store
        done = subprocess.run([sys.executable, "-c", probe, *argv, "--out", str(tmp_path / f"o{i}")],
                              cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        outs.append(done.stdout.strip().splitlines()[-1])
    assert outs == ["torch imported: True", "torch imported: False"]
    first, second = (pd.read_csv(tmp_path / f"o{i}" / "result.csv") for i in range(2))
    pd.testing.assert_frame_equal(first, second)


def test_the_seed_holds_for_torch_imported_after_it(tmp_path):
    """seed_everything before torch is imported: torch is seeded the moment its import finishes."""
    probe = ("import sys; from workbench.seeding import seed_everything; seed_everything(1234); "
             "assert 'torch' not in sys.modules; import torch; print(torch.initial_seed(), torch.rand(1).item())")
    late = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    early = subprocess.run([sys.executable, "-c", "import torch; from workbench.seeding import seed_everything; "
                            "seed_everything(1234); print(torch.initial_seed(), torch.rand(1).item())"],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    assert late.stdout.split()[0] == "1234" and late.stdout == early.stdout


def test_every_analysis_is_found_where_analyses_homes_says():
    import importlib

    import analyses
    from workbench import registry

    for spec in list_analyses():
        assert spec.name in analyses.HOMES, f"add {spec.name} to analyses.HOMES"
        home = importlib.import_module(f"analyses.{analyses.HOMES[spec.name]}")
        assert spec.run.__module__.startswith(home.__name__), spec.name
    assert set(analyses.HOMES) == {s.name for s in list_analyses()}
    assert registry.get_analysis("layer_stats").name == "layer_stats"


def test_each_analysis_has_a_default_model_of_its_kind():
    from workbench.cli import _default_data_for, _default_model_for

    assert _default_model_for("inversion") == "minilm-l6"
    assert (_default_model_for("decoder_lens"), _default_data_for("decoder_lens")) == ("t5-tasks", "seq2seq-tasks")
    assert _default_model_for("geometry") == "smollm2-135m"


def test_a_run_writes_only_its_cache_and_its_out_folder(tiny_llama_dir):
    """HOME, the working folder and TMPDIR are empty after a run: every file went to the cache or --out
    (PNG/SVG export included: Chromium's profile, config and sockets stay in the cache)."""
    import shutil
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="wbt-"))  # short, like a real cache path (see figure_images)
    home, cwd, tmpdir, cache, out = (tmp_path / n for n in ("home", "cwd", "tmpdir", "cache", "out"))
    for folder in (home, cwd, tmpdir):
        folder.mkdir()
    data = tmp_path / "t.txt"
    data.write_text("the cat sat\na dog on the mat\n")
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmpdir), "WORKBENCH_CACHE": str(cache)}
    for _ in range(2):  # extracting, then a cache hit
        proc = subprocess.run([sys.executable, "-m", "workbench.cli", "run", "layer_stats", "--model",
                               str(tiny_llama_dir), "--data", str(data), "--out", str(out)], cwd=cwd, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    leftovers = [str(p.relative_to(tmp_path)) for folder in (home, cwd, tmpdir) for p in folder.rglob("*")]
    manifest = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(tmp_path)
    assert leftovers == [], leftovers
    assert manifest["static_export"] == "png, svg"  # the export ran, and left nothing behind


def test_run_many_overlays_models_with_one_manifest_and_cli(tiny_llama_dir, tiny_bert_dir, tmp_path, monkeypatch):
    from workbench.analysis import run_many

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "t.txt"
    data.write_text("the cat sat\na dog on the mat\nred blue green\n")
    result = run_many("layer_stats", [str(tiny_llama_dir), str(tiny_bert_dir)], data=str(data),
                      params={"max_length": 8})
    assert set(result.table["model"]) == {str(tiny_llama_dir), str(tiny_bert_dir)}
    assert [m["name"] for m in result.manifest["models"]] == [str(tiny_llama_dir), str(tiny_bert_dir)]
    cli = result.manifest["cli"]
    assert cli.count("--model") == 2
    # the command line reproduces the overlay
    out = tmp_path / "out"
    argv = shlex.split(cli)[1:]
    argv[argv.index("--out") + 1] = str(out)
    assert "max_length=8" in argv
    main([*argv, "--no-static"])
    again = pd.read_parquet(out / "result.parquet")
    pd.testing.assert_frame_equal(again, result.table, check_dtype=False)
