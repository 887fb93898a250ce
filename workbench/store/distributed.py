"""Extraction on a Ray cluster: contiguous slices as tasks, one committed entry.

The driver holds the key's lock and its temporary folder ``.tmp-<key>-...`` (on a filesystem every
worker sees: the cache root). It splits the dataset into ``W`` contiguous slices whose boundaries
fall on batch boundaries, so every forward pass sees exactly the texts it would see in one process;
one Ray task per slice (one GPU each when the cluster has GPUs) loads the model, checks that its
fingerprint is the driver's, and writes its shards and token metadata into ``slice_NNNN.attempt-X/``,
renamed to ``slice_NNNN/`` when complete. A worker killed mid-task leaves only its attempt folder;
Ray retries the task. The driver then verifies every shard's checksum against what the worker
reported, renumbers the shards, merges the token metadata, and the store commits the entry with
one rename, exactly as a local extraction does. A killed driver leaves only its temporary folder.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from ..errors import WorkbenchError
from .extract import _Extraction, _TokenSpool
from .files import _xxh3_file, memmap_safetensors, write_safetensors_parts

TOKEN_COLUMNS = ("lengths", "ids", "char_offsets", "string_starts", "string_bytes", "truncated")


def slice_bounds(n: int, workers: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` slices of ``range(n)``, cut at multiples of ``batch_size``."""
    n_batches = -(-n // batch_size)
    workers = max(1, min(workers, n_batches))
    cuts = [round(k * n_batches / workers) * batch_size for k in range(workers + 1)]
    cuts[-1] = n
    return [(a, min(b, n)) for a, b in zip(cuts[:-1], cuts[1:]) if a < min(b, n)]


class _Rows:
    """A contiguous slice of a text or token dataset, with the attributes extraction reads."""

    def __init__(self, dataset, start: int, stop: int):
        self.name = dataset.name
        self.texts = None if dataset.texts is None else dataset.texts[start:stop]
        self.ids = None if dataset.texts is not None else dataset.ids[start:stop]

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.ids)


class _StoreSettings:
    """What an extraction reads from its store, sent to the workers."""

    def __init__(self, shard_bytes: int, dtype: str, batch_tokens: int):
        self.shard_bytes, self.dtype, self.batch_tokens = shard_bytes, dtype, batch_tokens


def extract_slice(job: dict) -> dict:
    """A Ray task: extract one slice into ``<tmp>/slice_NNNN/`` and describe what it wrote."""
    from ..models import load_model

    folder = Path(job["tmp"]) / f"slice_{job['index']:04d}"
    if (folder / "done.json").exists():  # an earlier attempt finished; Ray re-ran us anyway
        import json

        return json.loads((folder / "done.json").read_text())
    import torch

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    model = load_model(job["model"], **job["placement"])
    if model.fingerprint != job["fingerprint"]:
        raise WorkbenchError(f"worker loaded {model.fingerprint}, the driver {job['fingerprint']}: every worker "
                             "needs the same weights (the same model folder or hub revision).")
    attempt = folder.with_name(f"{folder.name}.attempt-{uuid.uuid4().hex[:8]}")
    attempt.mkdir(parents=True)
    Path(job["tmp"], f"{folder.name}.pid-{os.getpid()}").touch()  # for the fault tests: who works on what
    settings = _StoreSettings(job["shard_bytes"], job["dtype"], job["batch_tokens"])
    spool = _TokenSpool(attempt)
    run = _Extraction(settings, attempt, model, job["hooks"], spool, None)
    n_truncated = run.write(job["rows"], job["max_length"], job["prepend_bos"], job["batch_size"])
    spool.finish(attempt / "tokens.safetensors")
    report = {"index": job["index"], "start": job["start"], "shards": run.shards, "shapes": run.shapes,
              "n_truncated": n_truncated, "n_tokens": spool.n_tokens, "batch": run.batch_report()}
    import json

    (attempt / "done.json").write_text(json.dumps(report))
    try:
        os.replace(attempt, folder)
    except OSError:  # another attempt finished first: keep its result
        shutil.rmtree(attempt, ignore_errors=True)
        return json.loads((folder / "done.json").read_text())
    return report


def extract_on_ray(store, key: str, tmp: Path, model, dataset, hooks: list[str], max_length: int, prepend_bos,
                   batch_size: int, workers: int | None, address: str | None, progress=None) -> dict:
    """Run the slices on Ray and assemble them in ``tmp``; returns what the store's meta needs."""
    from ..distributed import connect, gpu_options

    ray = connect(address, workers)
    n_workers = workers or int(ray.cluster_resources().get("GPU") or ray.cluster_resources().get("CPU", 1))
    bounds = slice_bounds(len(dataset), n_workers, batch_size)
    placement = {"device": "auto" if model.device_kind != "cpu" else "cpu", "dtype": model.dtype}
    base = {"tmp": str(tmp), "model": model.name,
            "fingerprint": model.fingerprint, "placement": placement, "hooks": hooks, "max_length": max_length,
            "prepend_bos": prepend_bos, "batch_size": batch_size, "shard_bytes": store.shard_bytes,
            "dtype": store.dtype, "batch_tokens": store.batch_tokens,
            "threads": int(os.environ.get("WORKBENCH_RAY_THREADS", "0")) or None}
    task = ray.remote(max_retries=3, retry_exceptions=False, **gpu_options(ray))(extract_slice)
    t0 = time.perf_counter()
    refs = [task.remote({**base, "index": k, "start": a, "rows": _Rows(dataset, a, b)})
            for k, (a, b) in enumerate(bounds)]
    reports = []
    for done_n in range(len(refs)):
        ready, refs = ray.wait(refs, num_returns=1)
        reports.append(ray.get(ready[0]))
        if progress is not None:
            progress(done_n + 1, len(bounds), f"{done_n + 1}/{len(bounds)} slices extracted on Ray")
    t1 = time.perf_counter()
    out = _assemble(tmp, sorted(reports, key=lambda r: r["index"]))
    # the driver's serial part (verify + merge) beside the tasks' wall time: the scaling model's inputs
    out["timings"] = {"tasks_s": round(t1 - t0, 3), "verify_merge_s": round(time.perf_counter() - t1, 3),
                      "workers": len(bounds)}
    return out


def _assemble(tmp: Path, reports: list[dict]) -> dict:
    """Verify every shard, renumber them into ``tmp``, merge the token metadata of the slices."""
    shards, files = [], {}
    for report in reports:
        folder = tmp / f"slice_{report['index']:04d}"
        for shard in report["shards"]:
            source = folder / shard["file"]
            if source.stat().st_size != shard["bytes"] or _xxh3_file(source) != shard["xxh3"]:
                raise WorkbenchError(f"{source} does not match the checksum its worker reported: the shared "
                                     "filesystem lost data; nothing was kept.")
            name = f"shard_{len(shards):05d}.safetensors"
            os.replace(source, tmp / name)
            shards.append({**shard, "file": name, "text_start": shard["text_start"] + report["start"],
                           "text_end": shard["text_end"] + report["start"]})
            files[name] = {"bytes": shard["bytes"], "xxh3": shard["xxh3"]}
    files["tokens.safetensors"] = _merge_tokens(tmp, reports)
    for report in reports:
        shutil.rmtree(tmp / f"slice_{report['index']:04d}", ignore_errors=True)
    for leftover in tmp.glob("slice_*"):  # attempts of killed workers, pid markers
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
    shapes = {}
    for report in reports:
        for hook, shape in report["shapes"].items():
            shapes.setdefault(hook, shape)
    return {"shards": shards, "files": files, "shapes": shapes, "n_truncated": sum(r["n_truncated"] for r in reports),
            "n_tokens": sum(r["n_tokens"] for r in reports), "batch": [r["batch"] for r in reports]}


def _merge_tokens(tmp: Path, reports: list[dict]) -> dict:
    """One tokens.safetensors from the slices' (string starts shifted by the bytes before them)."""
    parts = {c: [] for c in TOKEN_COLUMNS}
    shift = 0
    for k, report in enumerate(reports):
        cols = memmap_safetensors(tmp / f"slice_{report['index']:04d}" / "tokens.safetensors")
        for c in ("lengths", "ids", "char_offsets", "string_bytes", "truncated"):
            parts[c].append(np.asarray(cols[c]))
        starts = np.asarray(cols["string_starts"]) + shift
        parts["string_starts"].append(starts if k == 0 else starts[1:])
        shift = int(starts[-1])
    return write_safetensors_parts(tmp / "tokens.safetensors", parts)
