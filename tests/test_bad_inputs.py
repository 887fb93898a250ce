"""Bad input files, vectors and model folders: one clear error each, or correct numbers."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.data import MAX_TEXT_CHARS, load_dataset, load_vectors
from workbench.errors import WorkbenchError
from workbench.models import load_model

ROOT = Path(__file__).resolve().parent.parent


# ---- text inputs ------------------------------------------------------------------------------
def test_huge_text_file_is_streamed_with_bounded_memory(tmp_path):
    """A 300 MB file of one line plus a few normal lines: read without holding it whole."""
    path = tmp_path / "huge.txt"
    with open(path, "w") as handle:
        handle.write("first text\n")
        chunk = "word " * 200_000
        for _ in range(300):
            handle.write(chunk)
        handle.write("\nlast text\n")
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) pytest process
    code = ("import re, sys; sys.path.insert(0, %r); from workbench.data import load_dataset; "
            "ds = load_dataset(%r); hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]; "
            "print(len(ds), max(map(len, ds.texts)), ds.warnings[0][:40], hwm)" % (str(ROOT), str(path)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    n, longest, peak_kb = int(out[0]), int(out[1]), int(out[-1])
    assert n == 3 and longest <= MAX_TEXT_CHARS
    assert peak_kb < 1_200_000, f"peak RSS {peak_kb / 1024:.0f} MiB reading a 300 MB file"


@pytest.mark.parametrize("line,match", [
    ('"just a string"', "line 2 is a JSON str, not an object"),
    ("[1, 2]", "line 2 is a JSON list, not an object"),
    ('{"text": "ok", ', "line 2 is not JSON"),
])
def test_jsonl_errors_name_the_file_line(tmp_path, line, match):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(WorkbenchError, match=match):
        load_dataset(path)


def test_dict_valued_text_is_refused(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "fine"}\n{"text": {"nested": "dict"}}\n')
    with pytest.raises(WorkbenchError, match="holds a dict in row 1"):
        load_dataset(path)


# ---- vector inputs ----------------------------------------------------------------------------
def test_npz_under_npy_name(tmp_path):
    path = tmp_path / "v.npy"
    with open(path, "wb") as handle:
        np.savez(handle, a=np.ones((3, 2)))
    with pytest.raises(WorkbenchError, match="npz archive"):
        load_vectors(path)


def test_text_disguised_as_parquet_and_empty_csv(tmp_path):
    (tmp_path / "v.parquet").write_text("this is not parquet\n")
    with pytest.raises(WorkbenchError, match="not a parquet file"):
        load_vectors(tmp_path / "v.parquet")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(WorkbenchError, match="no table"):
        load_vectors(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("a,b\n")
    with pytest.raises(WorkbenchError, match="no rows"):
        load_vectors(tmp_path / "h.csv")


def test_complex_vectors_are_refused(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((4, 3), dtype=np.complex64))
    with pytest.raises(WorkbenchError, match="complex"):
        load_vectors(tmp_path / "c.npy")


def test_csv_list_column_is_read(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    pd.DataFrame({"id": range(6), "embedding": [json.dumps(r.tolist()) for r in x]}).to_csv(tmp_path / "v.csv",
                                                                                         index=False)
    np.testing.assert_allclose(load_vectors(tmp_path / "v.csv"), x, rtol=1e-6)
    np.testing.assert_allclose(load_vectors(tmp_path / "v.csv", column="embedding"), x, rtol=1e-6)


def test_cli_vector_column_option(tmp_path, capsys):
    from workbench.cli import main

    x = np.random.default_rng(1).normal(size=(60, 5))
    frame = pd.DataFrame({"a": [json.dumps(r.tolist()) for r in x], "b": [json.dumps(r.tolist()) for r in -x]})
    frame.to_csv(tmp_path / "two.csv", index=False)
    main(["run", "geometry", "--vectors", str(tmp_path / "two.csv"), "--vector-column", "b", "--out",
          str(tmp_path / "out"), "--no-static", "--set", "estimators=svd", "--set", "n_boot_spectrum=0"])
    assert (tmp_path / "out" / "result.parquet").exists()


def test_id_estimators_are_scale_invariant_at_extreme_scales():
    from workbench.stats import mle, twonn, twonn_microscope

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(1500, 5)) @ rng.normal(size=(5, 40))).astype(np.float32)
    ref = (twonn(X), mle(X), twonn_microscope(X))
    for scale in (1e30, 1e-30):
        Y = (X.astype(np.float64) * scale).astype(np.float32)
        got = (twonn(Y), mle(Y), twonn_microscope(Y))
        np.testing.assert_allclose(got, ref, rtol=1e-6)


# ---- model inputs -----------------------------------------------------------------------------
def test_folder_with_only_config(tmp_path, tiny_llama_dir):
    (tmp_path / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    with pytest.raises(WorkbenchError, match="no weights"):
        load_model(str(tmp_path))


def test_corrupt_safetensors(tmp_path, tiny_llama_dir):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(WorkbenchError, match=r"Could not load the folder .*undamaged"):
        load_model(str(folder))


def test_mistyped_name_fails_fast_and_suggests(monkeypatch):
    t0 = time.time()
    with pytest.raises(WorkbenchError, match="Did you mean smollm2-135m"):
        load_model("smolm2-135m")
    assert time.time() - t0 < 2.0
    with pytest.raises(WorkbenchError, match="not a built-in model, an existing folder or a hub id"):
        load_model("no such model!")
