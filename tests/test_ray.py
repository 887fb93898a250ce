"""Extraction and batch jobs on a real local Ray cluster started by the tests (loopback, no dashboard).

The entry built by Ray workers must equal, array for array, the one built in one process; a worker
killed mid-task is retried by Ray and the entry is still exact; a driver killed mid-run leaves no
visible entry and the next run completes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from workbench.data import TextDataset  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.store import ActivationStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("_ray_driver.py")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    os.environ["WORKBENCH_RAY_THREADS"] = "1"  # workers and the reference compute with the same threads
    from workbench.distributed import connect

    connect(workers=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _texts(n: int) -> list[str]:
    return [f"the cat sat on the mat {i % 7} one two three {'red blue green ' * (i % 5)}" for i in range(n)]


def _same_entries(a, b, hooks) -> None:
    assert a.n_texts == b.n_texts and a.n_tokens == b.n_tokens
    np.testing.assert_array_equal(a.lengths, b.lengths)
    for i in range(a.n_texts):
        assert a.token_ids(i).tolist() == b.token_ids(i).tolist()
        assert a.token_strings(i) == b.token_strings(i)
    for h in hooks:
        np.testing.assert_array_equal(a.layer(h), b.layer(h))


@pytest.fixture()
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_workers_make_the_single_process_entry(cluster, tiny_llama_dir, tmp_path, one_thread):
    model = load_model(str(tiny_llama_dir))
    ds = TextDataset.from_texts(_texts(300))
    local = ActivationStore(root=tmp_path / "local").get_or_extract(model, ds, batch_size=8)
    store = ActivationStore(root=tmp_path / "ray", shard_bytes=200_000)
    remote = store.get_or_extract(model, ds, batch_size=8, engine="ray", workers=2)
    assert remote.extracted and remote.meta["engine"] == "ray" and len(remote.meta["shards"]) >= 2
    assert remote.key == local.key and store.verify(remote.key) is None
    _same_entries(local, remote, model.resid_hooks())
    assert not list(store.root.glob(".tmp-*"))


def test_a_killed_worker_is_retried_and_the_entry_is_exact(cluster, tiny_llama_dir, tmp_path, one_thread):
    model = load_model(str(tiny_llama_dir))
    ds = TextDataset.from_texts(_texts(6000))
    root = tmp_path / "ray"
    store = ActivationStore(root=root, shard_bytes=500_000)
    killed = {}

    def kill_one_worker() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for marker in root.glob(".tmp-*/slice_*.pid-*"):
                pid = int(marker.name.rsplit("-", 1)[1])
                slice_dir = marker.parent / marker.name.split(".pid-")[0]
                if not slice_dir.exists():  # still working on its slice
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid
                    return
            time.sleep(0.05)

    import threading

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    remote = store.get_or_extract(model, ds, batch_size=1, engine="ray", workers=2)
    killer.join()
    assert killed, "no worker was caught mid-task (the slices finished too fast)"
    local = ActivationStore(root=tmp_path / "local").get_or_extract(model, ds, batch_size=1)
    _same_entries(local, remote, model.resid_hooks())
    assert store.verify(remote.key) is None


def test_a_killed_driver_leaves_no_entry_and_the_next_run_completes(cluster, tiny_llama_dir, tmp_path):
    root = tmp_path / "ray"
    out = tmp_path / "driver.json"
    env = {**os.environ, "WORKBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, str(DRIVER), cluster, str(tiny_llama_dir), str(root), "6000", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(root.glob(".tmp-*/slice_*.pid-*")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = ActivationStore(root=root)
    assert store.entries() == [], "a killed driver must leave no visible entry"
    assert not out.exists()
    model = load_model(str(tiny_llama_dir))
    entry = store.get_or_extract(model, TextDataset.from_texts(_texts(6000)), batch_size=1, engine="ray", workers=2)
    assert entry.extracted and store.verify(entry.key) is None
    assert [r["key"] for r in store.entries()] == [entry.key]
    assert not list(root.glob(".tmp-*")), "the dead driver's temporary folder is removed by the next writer"


def test_batch_plan_on_ray_equals_local(cluster, tiny_llama_dir, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(_texts(20)) + "\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"analyses: [layer_stats, geometry]\nmodels: ['{tiny_llama_dir}']\ndatasets: ['{texts}']\n"
                    "params: {layer_stats: {max_length: 16}, geometry: {estimators: 'svd,twonn', n_boot: 0, "
                    "n_boot_spectrum: 0}}\n")
    env = {**os.environ, "WORKBENCH_CACHE": str(tmp_path / "cache")}
    for engine, out in (("local", "a"), ("ray", "b")):
        proc = subprocess.run([sys.executable, "-m", "workbench.cli", "batch", str(plan), "--out", str(tmp_path / out),
                               "--no-static", "--engine", engine, "--address", cluster], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((tmp_path / "a" / "index.json").read_text())
    b = json.loads((tmp_path / "b" / "index.json").read_text())
    assert [r["status"] for r in a] == [r["status"] for r in b] == ["ok", "ok"]
    import pandas as pd

    for row in a:
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / row["job"] / "result.parquet"),
                                      pd.read_parquet(tmp_path / "b" / row["job"] / "result.parquet"))


def test_run_analysis_as_a_ray_task(cluster, tiny_llama_dir, tmp_path, monkeypatch):
    import pandas as pd

    from workbench.analysis import run_analysis

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(_texts(12)) + "\n")
    here = run_analysis("layer_stats", model=str(tiny_llama_dir), data=str(texts), params={"max_length": 16})
    there = run_analysis("layer_stats", model=str(tiny_llama_dir), data=str(texts), params={"max_length": 16},
                         engine="ray", address=cluster)
    pd.testing.assert_frame_equal(here.table, there.table)
