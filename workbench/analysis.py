"""The analysis registry and the one way to run an analysis.

A back-end is one module under ``analyses/`` that calls :func:`register` with an
:class:`AnalysisSpec`. The core never imports a back-end by name: :func:`list_analyses` imports every
module under ``analyses/`` on first use. :func:`run_analysis` resolves the model, the dataset or
vectors, gives the back-end a :class:`RunContext` (parameters, seed, progress, the activation store),
and wraps its table into a :class:`~workbench.results.Result` with a full manifest.

Example::

    from workbench.analysis import run_analysis
    result = run_analysis("layer_stats", model="smollm2-135m", data="abstracts", params={"max_texts": 64})
    result.table.head(); result.figure().show(); result.save("out/layer_stats")
"""

from __future__ import annotations

import importlib
import pkgutil
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from .data import TextDataset, load_dataset, load_vectors, vectors_hash
from .errors import WorkbenchError
from .models import LoadedModel, load_model
from .results import Result, cli_command, package_versions
from .store import ActivationStore, CacheEntry, Progress

RunFn = Callable[["RunContext"], "pd.DataFrame | tuple[pd.DataFrame, dict]"]
FigureFn = Callable[[Result], Any]

#: parameters every analysis understands
COMMON_DEFAULTS = {"seed": 0}


@dataclass(frozen=True)
class AnalysisSpec:
    """What a back-end registers.

    ``inputs`` says what it runs on: "model" (a model and a text dataset), "vectors" (a user matrix
    of embeddings, no model), "task" (a model and a task the back-end generates itself).
    ``figures`` optionally maps extra figure names to functions of the result.
    """

    name: str
    title: str
    question: str
    run: RunFn
    figure: FigureFn
    defaults: dict = field(default_factory=dict)
    inputs: tuple[str, ...] = ("model",)
    page: str | None = None
    figures: dict[str, FigureFn] = field(default_factory=dict)
    param_help: dict[str, str] = field(default_factory=dict)
    readme_tables: tuple = ()  # workbench.reproduce.ReadmeTable: README results made by this analysis


_REGISTRY: dict[str, AnalysisSpec] = {}
_DISCOVERED = False


def register(spec: AnalysisSpec) -> AnalysisSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import analyses

    for info in pkgutil.iter_modules(analyses.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"analyses.{info.name}")


def list_analyses() -> list[AnalysisSpec]:
    _discover()
    return sorted(_REGISTRY.values(), key=lambda s: s.name)


def get_analysis(name: str) -> AnalysisSpec:
    _discover()
    if name not in _REGISTRY:
        raise WorkbenchError(f"No analysis {name!r}; available: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


@dataclass
class RunContext:
    """What a back-end gets: parameters, inputs, the store, a progress callback and a seed."""

    analysis: str
    params: dict
    model: LoadedModel | None = None
    dataset: TextDataset | None = None
    vectors: np.ndarray | None = None
    store: ActivationStore | None = None
    progress_fn: Progress | None = None
    cache_events: list = field(default_factory=list)
    model_ref: str | None = None
    data_ref: str | None = None

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    def progress(self, done: int, total: int, message: str = "") -> None:
        if self.progress_fn is not None:
            self.progress_fn(done, total, message)

    def require_model(self) -> LoadedModel:
        if self.model is None:
            raise WorkbenchError(f"{self.analysis} needs a model: pass --model (and --data).")
        return self.model

    def require_dataset(self) -> TextDataset:
        if self.dataset is None:
            raise WorkbenchError(f"{self.analysis} needs a dataset: pass --data.")
        return self.dataset

    def activations(self, hooks: list[str] | None = None, max_length: int | None = None,
                    dataset: TextDataset | None = None, prepend_bos: bool | None = None,
                    batch_size: int = 8) -> CacheEntry:
        """Activations of ``dataset`` (default: the run's) from the store; extracted once, then cached."""
        model = self.require_model()
        ds = dataset if dataset is not None else self.require_dataset()
        store = self.store or ActivationStore()
        key = store.key_for(model, ds, list(dict.fromkeys(hooks or model.resid_hooks())),
                            min(max_length or model.max_length, model.max_length), prepend_bos)
        hit = store.open(key) is not None
        t0 = time.time()
        entry = store.get_or_extract(model, ds, hooks, max_length=max_length, prepend_bos=prepend_bos,
                                     batch_size=batch_size, progress=self.progress_fn)
        self.cache_events.append({"key": entry.key, "hit": hit, "dataset": ds.name,
                                  "seconds": round(time.time() - t0, 3)})
        return entry


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_analysis(name: str, model: str | LoadedModel | None = None, data: str | TextDataset | None = None,
                 vectors: str | np.ndarray | None = None, params: dict | None = None,
                 progress: Progress | None = None, store: ActivationStore | None = None,
                 text_column: str | None = None, label_column: str | None = None) -> Result:
    """Run a registered analysis and return its :class:`Result` (table + manifest)."""
    spec = get_analysis(name)
    defaults = {**COMMON_DEFAULTS, **spec.defaults}
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise WorkbenchError(f"{name} has no parameter(s) {unknown}; its parameters are {sorted(defaults)}.")
    merged = {**defaults, **params}
    for key, value in merged.items():
        default = defaults[key]
        if default is not None and value is not None and isinstance(default, (int, float)) \
                and not isinstance(default, bool) and not isinstance(value, (int, float)):
            raise WorkbenchError(f"Parameter {key} of {name} must be a number, got {value!r}.")
    if vectors is not None and "vectors" not in spec.inputs:
        raise WorkbenchError(f"{name} does not run on vectors; it needs {' or '.join(spec.inputs)}.")
    t0 = time.time()
    data_obj = data_ref = None
    if data is not None:
        data_obj = data if isinstance(data, TextDataset) else load_dataset(data, text_column, label_column)
        data_ref = data_obj.source if isinstance(data, TextDataset) else str(data)
    vec_obj = vec_ref = None
    if vectors is not None:
        vec_obj = vectors if isinstance(vectors, np.ndarray) else load_vectors(vectors)
        vec_ref = None if isinstance(vectors, np.ndarray) else str(vectors)
    # inputs are checked cheapest first, so a bad file fails before a model is loaded
    model_obj = model_ref = None
    if model is not None:
        model_obj = model if isinstance(model, LoadedModel) else load_model(model)
        model_ref = model_obj.name
    if vec_obj is None and model_obj is None and spec.inputs != ("none",):
        raise WorkbenchError(f"{name} needs {'--model' if 'vectors' not in spec.inputs else '--model or --vectors'}.")
    t_inputs = time.time() - t0
    ctx = RunContext(name, merged, model_obj, data_obj, vec_obj, store, progress, model_ref=model_ref, data_ref=data_ref)
    _seed_everything(ctx.seed)
    t1 = time.time()
    out = spec.run(ctx)
    table, summary = (out if isinstance(out, tuple) else (out, {}))
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name}.run must return a DataFrame (or (DataFrame, dict)), got {type(table)}")
    t_run = time.time() - t1
    manifest = {
        "analysis": name,
        "title": spec.title,
        "params": merged,
        "seed": ctx.seed,
        "model": None if model_obj is None else {
            "name": model_obj.name, "fingerprint": model_obj.fingerprint, "kind": model_obj.kind,
            "n_layers": model_obj.n_layers, "d_model": model_obj.d_model, "load_report": model_obj.load_report},
        "dataset": None if data_obj is None else {
            "name": data_obj.name, "source": data_obj.source, "content_hash": data_obj.content_hash,
            "n_texts": len(data_obj), "text_column": data_obj.text_column, "label_column": data_obj.label_column},
        "vectors": None if vec_obj is None else {
            "source": vec_ref, "shape": list(vec_obj.shape), "sha256": vectors_hash(vec_obj)},
        "cache": ctx.cache_events,
        "timings": {"inputs_s": round(t_inputs, 3), "run_s": round(t_run, 3), "total_s": round(time.time() - t0, 3)},
        "versions": package_versions(),
        "cli": cli_command(name, model_ref, data_ref if data_ref and not data_ref.startswith("<") else None,
                           vec_ref, merged, defaults),
        "summary": summary,
    }
    return Result(name, table.reset_index(drop=True), merged, summary, manifest)
