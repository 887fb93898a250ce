"""Batch plans: a grid of analyses × models × datasets (and vectors files) run into one folder with an
index page. Used by ``workbench batch`` locally or on Ray (each job a task); a failing job records its
error (and its traceback) in the index, never stops the others.

A plan (YAML)::

    out: out/batch                 # relative to the plan file's folder
    analyses: [layer_stats, geometry]
    models: [smollm2-135m, {name: gemma3-270m, dtype: bfloat16}]
    datasets: [abstracts]
    vectors: [embeddings.npy]      # analyses that accept vectors run once per file
    params: {layer_stats: {max_texts: 32}}
"""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

import yaml

from .errors import WorkbenchError

def _default_model_for(analysis: str) -> str | None:
    from .analysis import get_analysis
    from .models import DEFAULT_MODEL

    spec = get_analysis(analysis)
    if "model" not in spec.inputs and "task" not in spec.inputs:
        return None
    return spec.default_model or DEFAULT_MODEL


def _default_data_for(analysis: str) -> str | None:
    from .analysis import get_analysis
    from .data import DEFAULT_DATASET

    spec = get_analysis(analysis)
    return (spec.default_data or DEFAULT_DATASET) if "model" in spec.inputs else None


def _read_plan(plan_path: Path) -> dict:
    if not plan_path.exists():
        raise WorkbenchError(f"No plan file at {plan_path}.")
    try:
        plan = yaml.safe_load(plan_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise WorkbenchError(f"{plan_path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(plan, dict):
        raise WorkbenchError(f"{plan_path} must be a mapping with keys analyses, models, datasets, vectors, params, out.")
    if not plan.get("analyses"):
        raise WorkbenchError(f"{plan_path} names no analyses (key 'analyses: [layer_stats, ...]').")
    return plan


def plan_jobs(plan: dict) -> list[tuple[str, str | None, str | None, str | None, str]]:
    """(analysis, model, dataset, vectors, label) for every job of a batch plan.

    Models × datasets for every analysis; each vectors file once per analysis. A plan with only
    ``vectors`` makes no model jobs. Labels are unique folder names (a counter is added when two
    jobs would share one, e.g. two vectors files with the same stem)."""
    models, datasets, vectors = plan.get("models"), plan.get("datasets"), plan.get("vectors") or []
    model_jobs = bool(models or datasets or not vectors)
    jobs, seen = [], {}
    for analysis in plan["analyses"]:
        grid = [(m, d, None) for m in (models or [None]) for d in (datasets or [None])] if model_jobs else []
        for model, data, vec in grid + [(None, None, v) for v in vectors]:
            parts = (analysis, model or "", data or "", Path(vec).stem if vec else "")
            label = "__".join(re.sub(r"[^\w.-]+", "_", str(x)) for x in parts if x)
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label}-{seen[label]}"
            jobs.append((analysis, model, data, vec, label))
    return jobs


def run_batch_job(job: dict, out: Path, static: bool, progress=None) -> dict:
    """One job of a batch plan: run, save into ``out/<label>``, and return its index row. A job that
    fails gets its error in the row (with the traceback in its folder); it never raises."""
    import traceback

    from .analysis import run_analysis
    from .paths import atomic_write

    t0 = time.time()
    row = {"job": job["label"], "analysis": job["analysis"], "model": job["model"],
           "data": job["data"] or job["vectors"], "rows": 0}
    try:
        vec = job["vectors"]
        result = run_analysis(job["analysis"], model=job["model"] or (None if vec else _default_model_for(job["analysis"])),
                              data=job["data"] or (None if vec else _default_data_for(job["analysis"])), vectors=vec,
                              params=job["params"], progress=progress, **job["placement"])
        result.save(out / job["label"], static=static)
        row.update(status="ok", rows=len(result.table))
    except WorkbenchError as exc:
        row["status"] = f"error: {exc}"
    except Exception as exc:  # a bug in one job must not stop the others; its traceback is kept
        folder = out / job["label"]
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / "error.txt") as handle:
            handle.write(traceback.format_exc())
        row["status"] = f"failed: {exc.__class__.__name__}: {str(exc)[:200]} (traceback in {job['label']}/error.txt)"
    row["seconds"] = round(time.time() - t0, 1)
    return row


def _model_entries(plan: dict) -> list[tuple[str | None, dict]]:
    """``models:`` entries as (name, placement): a name, or a mapping {name, device, dtype, device_map, max_memory}."""
    out = []
    for entry in plan.get("models") or []:
        if isinstance(entry, dict):
            if "name" not in entry:
                raise WorkbenchError(f"a model entry of the plan needs a name: {entry}")
            unknown = set(entry) - {"name", "device", "dtype", "device_map", "max_memory"}
            if unknown:
                raise WorkbenchError(f"a model entry of the plan has unknown keys {sorted(unknown)}: {entry}")
            out.append((str(entry["name"]), {k: v for k, v in entry.items() if k != "name"}))
        else:
            out.append((str(entry), {}))
    return out


def _write_index(out: Path, rows: list[dict], plan_path: Path) -> None:
    from .paths import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    body = ["<table><tr><th>job</th><th>analysis</th><th>model</th><th>data</th><th>status</th>"
            "<th>seconds</th><th>files</th></tr>"]
    for r in rows:
        job = html.escape(r["job"])
        if r["status"] == "ok":
            link = (f'<a href="{job}/figure.html">figure</a> · <a href="{job}/result.csv">csv</a> · '
                    f'<a href="{job}/manifest.json">manifest</a>')
        else:
            link = f'<a href="{job}/error.txt">traceback</a>' if (out / r["job"] / "error.txt").exists() else ""
        body.append("<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in
                                     ("job", "analysis", "model", "data", "status", "seconds")) + f"<td>{link}</td></tr>")
    body.append("</table>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>workbench batch</title><style>"
            "body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}"
            f"</style></head><body><h1>Batch: {html.escape(plan_path.name)}</h1>" + "".join(body) + "</body></html>")
    with atomic_write(out / "index.html") as handle:
        handle.write(page)
    with atomic_write(out / "index.json") as handle:
        json.dump(rows, handle, indent=2)
