"""Ray as the distributed engine (``--engine ray``): connecting, and running analyses as Ray tasks.

Ray is an optional dependency (``pip install -e .[distributed]``, pinned). A local cluster is started
on loopback with no dashboard when no ``address`` is given; ``address="auto"`` joins a running
cluster and ``ray://HOST:PORT`` a remote one. Tasks ask for one GPU each when the cluster has GPUs.
Extraction on Ray lives with the store (:mod:`workbench.store.distributed`).

Scaling model (what stays serial): the driver computes the key, splits the dataset into contiguous
slices (O(texts)), and at the end verifies every shard's checksum and merges the token metadata
(O(bytes written) of sequential reads) before the atomic commit. Workers load the model once per
task and extract their slice in parallel. With ``W`` workers, extraction time is about
``T_load + T_extract / W + T_verify``; ``T_verify`` reads every byte once (disk bandwidth), so it
bounds the speed-up at large ``W`` (see ``benchmarks/bench_ray.py`` for the measured numbers).
"""

from __future__ import annotations

import os

from .errors import WorkbenchError

ENGINES = ("local", "ray")


def require_ray():
    try:
        import ray
    except ImportError as exc:
        raise WorkbenchError("--engine ray needs Ray: pip install -e '.[distributed]' (make test installs it).") from exc
    return ray


def connect(address: str | None = None, workers: int | None = None):
    """Ray, initialised: joins ``address`` (``auto`` or ``ray://HOST:PORT``) or starts a local cluster on
    loopback with ``workers`` CPUs (default: this machine's), no dashboard, no usage reporting."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    if address:
        ray.init(address=address, **kwargs)
        return ray
    # a local cluster: token authentication with a token held in the environment (inherited by the
    # workers) rather than written to ~/.ray, and Ray's session files inside the cache when its path
    # is short enough for Ray's sockets (else Ray's own /tmp/ray)
    import secrets

    from .paths import cache_dir

    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    temp = cache_dir() / "ray"
    if len(str(temp)) <= 40:
        temp.mkdir(parents=True, exist_ok=True)
        kwargs["_temp_dir"] = str(temp)
    ray.init(num_cpus=workers or os.cpu_count(), _node_ip_address="127.0.0.1", **kwargs)
    return ray


def gpu_options(ray) -> dict:
    """One GPU per task when the cluster has GPUs, else a CPU."""
    return {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"num_cpus": 1}


def _run_analysis_task(name: str, kwargs: dict):
    from .analysis import run_analysis

    return run_analysis(name, **kwargs)


def run_remote(name: str, address: str | None = None, **kwargs):
    """:func:`workbench.analysis.run_analysis` as one Ray task (GPU-aware); returns its Result.

    Model objects and callbacks do not travel: give the model by name, as the CLI does."""
    ray = connect(address)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("progress", "on_step")}
    task = ray.remote(max_retries=2, **gpu_options(ray))(_run_analysis_task)
    return ray.get(task.remote(name, kwargs))


def _batch_job_task(job: dict, out: str, static: bool) -> dict:
    """One batch-plan job in a worker: run, save into the job's folder, return its index row."""
    from pathlib import Path

    from .batch import run_batch_job

    return run_batch_job(job, Path(out), static)


def run_jobs(jobs: list[dict], out, static: bool, address: str | None = None, log=print) -> list[dict]:
    """Every batch job as its own Ray task; rows come back in plan order as jobs finish."""
    ray = connect(address)
    task = ray.remote(max_retries=2, **gpu_options(ray))(_batch_job_task)
    pending = {task.remote(job, str(out), static): i for i, job in enumerate(jobs)}
    rows: list[dict | None] = [None] * len(jobs)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        rows[i] = ray.get(done[0])
        log(f"[{sum(r is not None for r in rows)}/{len(jobs)}] {rows[i]['job']}: {rows[i]['status']}")
    return rows
