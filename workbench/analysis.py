"""Running an analysis: the one entry point for the CLI, the app, batch plans and Python.

:func:`run_analysis` validates the parameters against their declarations before any input is loaded
(:mod:`workbench.params`), resolves the model (lazily: weights load only when something needs
them), the dataset or vectors, gives the back-end a :class:`RunContext` (parameters, seed,
progress, the activation store) and wraps its table into a :class:`~workbench.results.Result` with a
full manifest. :func:`run_many` runs one analysis over several models into one Result. The registry
of back-ends is :mod:`workbench.registry`; its names are re-exported here.

Example::

    from workbench.analysis import run_analysis
    result = run_analysis("layer_stats", model="smollm2-135m", data="abstracts", params={"max_texts": 64})
    result.table.head(); result.figure().show(); result.save("out/layer_stats")
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from .data import (IN_MEMORY, MAX_TEXTS_IN_COMMAND, TextDataset, TokenDataset, load_dataset, load_vectors,
                   vectors_hash)
from .errors import TruncationWarning, WorkbenchError, truncation_message
from .models import LazyModel, ModelInfo, load_model
from .params import COMMON_PARAMS, Param, defaults_of, validate_params  # noqa: F401
from .registry import (AnalysisSpec, Command, _REGISTRY, get_analysis, list_analyses,  # noqa: F401
                       register)
from .results import Result, cli_command, package_versions, with_models
from .seeding import seed_everything
from .store import ActivationStore, CacheEntry, Progress

#: a structured step record for live views (e.g. {"item": 1, "step": 4, "best_text": ..., ...})
StepFn = Callable[[dict], None]


@dataclass
class RunContext:
    """What a back-end gets: parameters, inputs, the store, progress and step callbacks, a seed."""

    analysis: str
    params: dict
    model: ModelInfo | None = None
    dataset: TextDataset | TokenDataset | None = None
    vectors: np.ndarray | None = None
    store: ActivationStore | None = None
    progress_fn: Progress | None = None
    cache_events: list = field(default_factory=list)
    model_ref: str | None = None
    data_ref: str | None = None
    step_fn: StepFn | None = None
    warnings: list[str] = field(default_factory=list)
    #: the run's declared phases ``[(name, relative cost)]`` (:meth:`plan`) and the one under way
    phases: list[tuple[str, float]] = field(default_factory=list)
    phase_index: int = 0
    started: float = field(default_factory=time.time)

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    def plan(self, phases: list[tuple[str, float]]) -> None:
        """Declare the run's phases with their relative cost, e.g. ``[("extract texts", 3), ("metrics",
        1)]``: progress then runs once over the whole run (one bar, the phase named, an ETA for the
        whole) instead of restarting at every extraction. Enter each with :meth:`phase`."""
        if not phases or any(w <= 0 for _, w in phases):
            raise ValueError("plan() takes [(name, cost > 0), ...]")
        self.phases, self.phase_index = [(str(n), float(w)) for n, w in phases], 0

    def phase(self, name: str) -> None:
        """Enter the declared phase ``name`` (progress inside it then fills its share of the bar)."""
        names = [n for n, _ in self.phases]
        if name not in names:
            raise ValueError(f"phase {name!r} was not declared in plan(): {names}")
        self.phase_index = names.index(name)
        self.progress(0, 1)

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Progress of the current phase (``done`` of ``total``); reported as a fraction of the whole run,
        with the phase's name and an ETA of the whole when a plan is declared."""
        if self.progress_fn is None:
            return
        if not self.phases:
            self.progress_fn(done, total, message)
            return
        weights = [w for _, w in self.phases]
        inside = min(done / total, 1.0) if total else 0.0
        overall = (sum(weights[: self.phase_index]) + inside * weights[self.phase_index]) / sum(weights)
        overall = self._overall = max(overall, getattr(self, "_overall", 0.0))  # one bar never goes back
        message = re.sub(r",? about \d+ s left|, \d+ s left", "", message)  # the whole run's ETA replaces a part's
        name = self.phases[self.phase_index][0]
        elapsed = time.time() - self.started
        eta = f", about {elapsed / overall * (1 - overall):.0f} s left" if overall > 0.02 else ""
        text = f"{name} ({self.phase_index + 1}/{len(self.phases)})" + (f": {message}" if message else "")
        self.progress_fn(round(overall * 1000), 1000, f"{text} · {elapsed:.0f} s{eta}")

    def step(self, record: dict) -> None:
        """A structured record of one step (the back-end documents its keys), for live views."""
        if self.step_fn is not None:
            self.step_fn(record)

    def warn(self, message: str) -> None:
        """A warning that qualifies the result: shown beside it (page, CLI) and kept in the manifest."""
        if message not in self.warnings:
            self.warnings.append(message)

    def require_model(self) -> ModelInfo:
        if self.model is None:
            raise WorkbenchError(f"{self.analysis} needs a model: pass --model (and --data).")
        return self.model

    def require_dataset(self) -> TextDataset:
        if self.dataset is None:
            raise WorkbenchError(f"{self.analysis} needs a dataset: pass --data.")
        return self.dataset

    def activations(self, hooks: list[str] | None = None, max_length: int | None = None,
                    dataset: TextDataset | TokenDataset | None = None, prepend_bos: bool | None = None,
                    batch_size: int = 8) -> CacheEntry:
        """Activations of ``dataset`` (default: the run's) from the store; extracted once, then cached.

        A truncation warning of the extraction is recorded with :meth:`warn`."""
        import warnings as _warnings

        model = self.require_model()
        ds = dataset if dataset is not None else self.require_dataset()
        store = self.store or ActivationStore()
        t0 = time.time()
        with _warnings.catch_warnings(record=True) as caught:
            _warnings.simplefilter("always")
            entry = store.get_or_extract(model, ds, hooks, max_length=max_length, prepend_bos=prepend_bos,
                                         batch_size=batch_size,
                                         progress=self.progress if self.progress_fn is not None else None)
        for w in caught:
            if not issubclass(w.category, TruncationWarning):  # recorded below, hit or miss, once
                self.warn(str(w.message))
            _warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if entry.meta["n_truncated"]:
            self.warn(truncation_message(entry.meta["n_truncated"], entry.n_texts, entry.meta["max_length"],
                                         model.max_length, of=ds.name))
        event = {"key": entry.key, "hit": not entry.extracted, "dataset": ds.name, "seconds": round(time.time() - t0, 3)}
        if "view" in entry.meta:  # served from a larger entry that holds these texts first
            event["view_of"] = entry.meta["view"]
        self.cache_events.append(event)
        return entry


@dataclass
class Inputs:
    """What a run reads, resolved and checked (cheapest first, so a bad file fails before a model loads)."""

    model: ModelInfo | None = None
    model_ref: str | None = None
    data: TextDataset | None = None
    data_ref: str | None = None
    vectors: np.ndarray | None = None
    vectors_ref: str | None = None
    seconds: float = 0.0


def _memory_text(max_memory) -> str | None:
    if isinstance(max_memory, dict):
        return ",".join(f"{k}={v}" for k, v in max_memory.items())
    return max_memory


def _resolve_inputs(spec: AnalysisSpec, model, data, vectors, columns: dict, placement: dict) -> Inputs:
    t0 = time.time()
    inputs = Inputs()
    if vectors is not None and "vectors" not in spec.inputs:
        raise WorkbenchError(f"{spec.name} does not run on vectors; it needs {' or '.join(spec.inputs)}.")
    if data is not None:
        own = isinstance(data, (TextDataset, TokenDataset))
        inputs.data = data if own else load_dataset(data, columns.get("text_column"), columns.get("label_column"))
        inputs.data_ref = inputs.data.source if own else str(data)
    if vectors is not None:
        inputs.vectors = vectors if isinstance(vectors, np.ndarray) else load_vectors(vectors, columns.get("vector_column"))
        inputs.vectors_ref = None if isinstance(vectors, np.ndarray) else str(vectors)
    if model is not None:
        inputs.model = model if isinstance(model, ModelInfo) else load_model(model, lazy=True, **placement)
        inputs.model_ref = inputs.model.name
    if inputs.vectors is None and inputs.model is None:
        raise WorkbenchError(f"{spec.name} needs {'--model' if 'vectors' not in spec.inputs else '--model or --vectors'}.")
    inputs.seconds = time.time() - t0
    return inputs


def _model_block(model: ModelInfo) -> dict:
    return {"name": model.name, "fingerprint": model.fingerprint, "kind": model.kind, "device": model.device,
            "dtype": model.dtype, "n_layers": model.n_layers, "d_model": model.d_model,
            "load_report": model.load_report,
            # False: every activation came from the store and the weights were never loaded
            "weights_loaded": not isinstance(model, LazyModel) or model.loaded}


def _cli_options(columns: dict, placement: dict) -> dict:
    return {"--text-column": columns.get("text_column"), "--label-column": columns.get("label_column"),
            "--vector-column": columns.get("vector_column"),
            "--device": None if placement.get("device") in (None, "auto") else placement["device"],
            "--dtype": None if placement.get("dtype") in (None, "auto") else placement["dtype"],
            "--device-map": placement.get("device_map"), "--max-memory": _memory_text(placement.get("max_memory"))}


def _manifest(spec: AnalysisSpec, params: dict, ctx: RunContext, inputs: Inputs, summary: dict, t_run: float,
              t0: float, cli: str) -> dict:
    data, vec = inputs.data, inputs.vectors
    return {
        "analysis": spec.name, "title": spec.title, "params": params, "seed": ctx.seed,
        "model": None if inputs.model is None else _model_block(inputs.model),
        "dataset": None if data is None else {
            "name": data.name, "source": data.source, "content_hash": data.content_hash, "n_texts": len(data),
            "text_column": getattr(data, "text_column", None), "label_column": getattr(data, "label_column", None)},
        "vectors": None if vec is None else {"source": inputs.vectors_ref, "shape": list(vec.shape),
                                             "sha256": vectors_hash(vec)},
        "cache": ctx.cache_events, "warnings": ctx.warnings,
        "timings": {"inputs_s": round(inputs.seconds, 3), "run_s": round(t_run, 3),
                    "total_s": round(time.time() - t0, 3)},
        "versions": package_versions(), "cli": cli, "summary": summary,
    }


def run_analysis(name: str, model: str | ModelInfo | None = None, data: str | TextDataset | None = None,
                 vectors: str | np.ndarray | None = None, params: dict | None = None,
                 progress: Progress | None = None, store: ActivationStore | None = None,
                 text_column: str | None = None, label_column: str | None = None,
                 vector_column: str | None = None, device: str | None = "auto", dtype: str | None = "auto",
                 device_map: str | None = None, max_memory: str | dict | None = None,
                 on_step: StepFn | None = None, engine: str = "local", address: str | None = None) -> Result:
    """Run a registered analysis and return its :class:`Result` (table + manifest).

    ``model`` is a name (built-in, folder or hub id) or a loaded model; by name it is opened lazily
    (:class:`~workbench.models.LazyModel`): when every activation the analysis needs is in the store,
    the weights are never loaded. ``device``, ``dtype``, ``device_map`` and ``max_memory`` are passed
    to :func:`~workbench.models.load_model`. ``on_step`` gets the back-end's structured step records.
    ``engine="ray"`` runs the whole analysis as one Ray task (GPU-aware) on the cluster at ``address``
    (default: a local one) and returns its Result.
    """
    if engine == "ray":
        from .distributed import run_remote

        return run_remote(name, address=address, model=model, data=data, vectors=vectors, params=params,
                          store=store, text_column=text_column, label_column=label_column,
                          vector_column=vector_column, device=device, dtype=dtype, device_map=device_map,
                          max_memory=max_memory)
    if engine != "local":
        raise WorkbenchError(f"engine must be local or ray; got {engine!r}.")
    spec = get_analysis(name)
    declared = spec.all_params
    # validated before any input is read, so a bad value fails fast and the back-end gets clean types
    merged = validate_params(name, declared, params)
    if spec.check_params is not None:
        spec.check_params(merged)
    t0 = time.time()
    columns = {"text_column": text_column, "label_column": label_column, "vector_column": vector_column}
    placement = {"device": device, "dtype": dtype, "device_map": device_map, "max_memory": max_memory}
    inputs = _resolve_inputs(spec, model, data, vectors, columns, placement)
    ctx = RunContext(name, merged, inputs.model, inputs.data, inputs.vectors, store, progress,
                     model_ref=inputs.model_ref, data_ref=inputs.data_ref, step_fn=on_step)
    seed_everything(ctx.seed)
    t1 = time.time()
    out = spec.run(ctx)
    table, summary = (out if isinstance(out, tuple) else (out, {}))
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name}.run must return a DataFrame (or (DataFrame, dict)), got {type(table)}")
    data_ref = inputs.data_ref if inputs.data_ref and not inputs.data_ref.startswith("<") else None
    options = _cli_options(columns, placement)
    typed = inputs.data is not None and inputs.data.source == IN_MEMORY
    if typed and len(inputs.data) <= MAX_TEXTS_IN_COMMAND:
        options["--text"] = list(inputs.data.texts)  # typed input: the command carries the texts themselves
    elif typed:
        ctx.warn(f"{len(inputs.data)} texts were given in memory: save them to a file to reproduce this run "
                 "from the command line (--data FILE).")
    cli = cli_command(name, inputs.model_ref, data_ref, inputs.vectors_ref, merged, defaults_of(declared),
                      options=options)
    manifest = _manifest(spec, merged, ctx, inputs, summary, time.time() - t1, t0, cli)
    return Result(name, table.reset_index(drop=True), merged, summary, manifest)


def run_many(name: str, models: list[str | ModelInfo], **kwargs) -> Result:
    """One analysis over several models on the same inputs, as one Result.

    The tables are concatenated with a ``model`` column (kept when the back-end already writes one),
    the manifest names every model (``models``) and keeps each run's manifest (``runs``), and its CLI
    line repeats ``--model`` so that it reproduces the overlay. Figures that draw one line per model
    overlay them.
    """
    if not models:
        raise WorkbenchError(f"{name}: give at least one model.")
    progress = kwargs.pop("progress", None)
    results = []
    for k, model in enumerate(models):
        def scaled(done, total, message="", k=k):  # one bar over the whole run
            if progress is not None:
                progress(k * total + done, len(models) * total, f"model {k + 1}/{len(models)}: {message}")

        results.append(run_analysis(name, model=model, progress=scaled, **kwargs))
    tables = []
    for result in results:
        t = result.table.copy()
        if "model" not in t.columns:
            t.insert(0, "model", result.manifest["model"]["name"] if result.manifest["model"] else "vectors")
        tables.append(t)
    first = results[0]
    manifest = dict(first.manifest)
    manifest["models"] = [r.manifest["model"] for r in results]
    manifest["runs"] = [r.manifest for r in results]
    manifest["cache"] = [e for r in results for e in r.manifest["cache"]]
    manifest["warnings"] = [w for r in results for w in r.manifest.get("warnings", [])]
    names = [m["name"] for m in manifest["models"] if m]
    manifest["cli"] = with_models(first.manifest["cli"], names)
    summary = {**first.summary, "models": names, "per_model": {n: r.summary for n, r in zip(names, results)}}
    manifest["summary"] = summary
    return Result(name, pd.concat(tables, ignore_index=True), first.params, summary, manifest)
