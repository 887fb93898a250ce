"""The analysis registry and the one way to run an analysis.

A back-end is one module under ``analyses/`` that calls :func:`register` with an
:class:`AnalysisSpec`, declaring each parameter once as a :class:`Param` (default, help, type, bounds).
The core never imports a back-end by name: :func:`list_analyses` imports every module under
``analyses/`` on first use. :func:`run_analysis` validates the parameters against their declarations
before any input is loaded, resolves the model, the dataset or vectors, gives the back-end a
:class:`RunContext` (parameters, seed, progress, the activation store), and wraps its table into a
:class:`~workbench.results.Result` with a full manifest.

Example::

    from workbench.analysis import run_analysis
    result = run_analysis("layer_stats", model="smollm2-135m", data="abstracts", params={"max_texts": 64})
    result.table.head(); result.figure().show(); result.save("out/layer_stats")
"""

from __future__ import annotations

import importlib
import json
import math
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
from .models import LazyModel, LoadedModel, ModelInfo, load_model
from .results import Result, cli_command, package_versions
from .store import ActivationStore, CacheEntry, Progress

RunFn = Callable[["RunContext"], "pd.DataFrame | tuple[pd.DataFrame, dict]"]
FigureFn = Callable[[Result], Any]

_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
          object: "a value"}


def _show(value: Any) -> str:
    """A value as the user wrote it (YAML/JSON spelling: true, null, "text"), for error messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _coerce_int(value: Any) -> int:
    # 64.0 from a number widget or a YAML plan is 64; 2.5, "64" and true are not integers
    if _is_number(value) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError("not an integer")


def _coerce_float(value: Any) -> float:
    if _is_number(value) and math.isfinite(value):
        return float(value)
    raise ValueError("not a finite number")


def _coerce_bool(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError("not true or false")


def _coerce_str(value: Any) -> str:
    # YAML reads `--set layers=3` or `--set target=1` as a number: a string parameter takes it as text
    if isinstance(value, str) or _is_number(value):
        return str(value)
    raise ValueError("not a string")


def _coerce_list(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError("not a list")


_COERCE = {int: _coerce_int, float: _coerce_float, bool: _coerce_bool, str: _coerce_str, list: _coerce_list,
           object: lambda value: value}


def _matches(value: Any, choice: Any) -> bool:
    """Equal and of the same kind: 1 is not the choice true, "1" not the choice 1."""
    if isinstance(choice, bool) or isinstance(value, (bool, np.bool_)):
        return isinstance(choice, bool) and isinstance(value, (bool, np.bool_)) and bool(value) == choice
    return isinstance(value, type(choice)) and value == choice


@dataclass(frozen=True)
class Param:
    """One parameter of an analysis: its default, its help and the values it accepts.

    Declared once by the back-end, it drives validation in :func:`run_analysis` (CLI, Python, batch
    plans and the app alike), ``workbench analyses`` and the app's widgets (:func:`workbench.ui.param_widget`),
    so that a default or a range cannot drift between them.

    ``type`` is int, float, bool, str, list or object (any value; with a ``check``), inferred from the
    default when not given. ``min``/``max`` bound numbers; ``closed`` says which bounds are included, as in
    scikit-learn's ``Interval``: "both" (default), "left", "right" or "neither". ``choices``: the only
    values allowed (then ``type`` is not checked). ``nullable``: None is allowed (always when the default
    is None). ``check``: for formats the rules above cannot express (a comma-separated estimator list,
    "all" / "0,3,6" layer lists), a function of the value after the type and bound checks that returns the
    value to use or raises ValueError; ``allowed`` then says in words what it accepts.
    """

    default: Any
    help: str = ""
    type: type | None = None
    min: float | None = None
    max: float | None = None
    closed: str = "both"
    choices: tuple = ()
    nullable: bool = False
    check: Callable[[Any], Any] | None = None
    allowed: str = ""

    def __post_init__(self) -> None:
        if self.type is None:
            if self.default is None and not self.choices:
                raise TypeError("a Param whose default is None needs its type")
            inferred = type(self.choices[0] if self.default is None else self.default)
            object.__setattr__(self, "type", inferred)
        if self.type not in _KINDS:
            raise TypeError(f"Param type must be one of {[t.__name__ for t in _KINDS]}, got {self.type!r}")
        if self.closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"Param closed must be both, left, right or neither, got {self.closed!r}")
        if self.default is None:
            object.__setattr__(self, "nullable", True)

    @property
    def min_inclusive(self) -> bool:
        return self.closed in ("both", "left")

    @property
    def max_inclusive(self) -> bool:
        return self.closed in ("both", "right")

    def describe(self) -> str:
        """What the parameter accepts, in words: "an integer >= 0", "one of "pca", "umap"", ..."""
        if self.allowed:
            text = self.allowed
        elif self.choices:
            text = "one of " + ", ".join(_show(c) for c in self.choices)
        elif self.type is bool:
            return "true, false or null" if self.nullable else "true or false"
        else:
            text = _KINDS[self.type] + self._bounds_text()
        return text + (" or null" if self.nullable else "")

    def _bounds_text(self) -> str:
        if self.min is not None and self.max is not None:
            return (f" in {'[' if self.min_inclusive else '('}{_number_text(self.min)}, "
                    f"{_number_text(self.max)}{']' if self.max_inclusive else ')'}")
        if self.min is not None:
            return f" {'>=' if self.min_inclusive else '>'} {_number_text(self.min)}"
        if self.max is not None:
            return f" {'<=' if self.max_inclusive else '<'} {_number_text(self.max)}"
        return ""

    def coerce(self, value: Any) -> Any:
        """The value to use for ``value`` (64.0 -> 64 for an integer); ValueError(describe()) if not allowed."""
        try:
            return self._coerce(value)
        except (ValueError, TypeError, WorkbenchError) as exc:
            raise ValueError(self.describe()) from exc

    def _coerce(self, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ValueError("null")
        if self.choices:
            for choice in self.choices:
                if _matches(value, choice):
                    return choice
            raise ValueError("not a choice")
        value = _COERCE[self.type](value)
        if self.type in (int, float) and not self._within_bounds(value):
            raise ValueError("out of bounds")
        return value if self.check is None else self.check(value)

    def _within_bounds(self, value: float) -> bool:
        if self.min is not None and (value < self.min or (value == self.min and not self.min_inclusive)):
            return False
        if self.max is not None and (value > self.max or (value == self.max and not self.max_inclusive)):
            return False
        return True


#: parameters every analysis understands
COMMON_PARAMS = {"seed": Param(0, "random seed (subsamples, bootstraps, augmentations, initialisations)",
                               min=0, max=2**32 - 1)}


def defaults_of(params: dict[str, Param]) -> dict:
    """``{name: default}`` of a parameter declaration."""
    return {name: param.default for name, param in params.items()}


def validate_params(analysis: str, declared: dict[str, Param], given: dict | None) -> dict:
    """Every declared parameter, from ``given`` or its default, checked and coerced.

    Raises WorkbenchError on one line naming the analysis, the parameter, the value given and what
    is allowed, e.g. ``geometry: parameter max_texts must be an integer >= 0; got -1``.
    """
    if given is not None and not isinstance(given, dict):
        raise WorkbenchError(f"{analysis}: parameters must be a mapping of name: value; got {_show(given)}")
    given = dict(given or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise WorkbenchError(f"{analysis} has no parameter(s) {unknown}; its parameters are {sorted(declared)}.")
    values = {}
    for name, param in declared.items():
        value = given.get(name, param.default)
        try:
            values[name] = param.coerce(value)
        except ValueError:
            raise WorkbenchError(f"{analysis}: parameter {name} must be {param.describe()}; "
                                 f"got {_show(value)}") from None
    return values


def int_list(value: Any) -> list[int]:
    """``3``, ``[0, 3, 6]`` or ``"0,3,6"`` as a list of ints; ValueError for anything else."""
    if _is_number(value):
        return [_coerce_int(value)]
    if isinstance(value, str):
        return [int(part) for part in value.replace(" ", "").split(",") if part]
    if isinstance(value, (list, tuple)):
        return [_coerce_int(v) for v in value]
    raise ValueError("not a list of integers")


@dataclass(frozen=True)
class AnalysisSpec:
    """What a back-end registers.

    ``params`` declares every parameter (:class:`Param`); ``defaults`` and ``param_help`` are derived
    from it. ``check_params`` optionally checks constraints between parameters (validated values in,
    WorkbenchError out), before any input is loaded.
    ``inputs`` says what it runs on: "model" (a model and a text dataset), "vectors" (a user matrix
    of embeddings, no model), "task" (a model and a task the back-end generates itself).
    ``figures`` optionally maps extra figure names to functions of the result.
    """

    name: str
    title: str
    question: str
    run: RunFn
    figure: FigureFn
    params: dict[str, Param] = field(default_factory=dict)
    inputs: tuple[str, ...] = ("model",)
    page: str | None = None
    figures: dict[str, FigureFn] = field(default_factory=dict)
    check_params: Callable[[dict], None] | None = None
    readme_tables: tuple = ()  # workbench.reproduce.ReadmeTable: README results made by this analysis
    default_model: str | None = None  # the model of the right kind when none is named (None: DEFAULT_MODEL)
    default_data: str | None = None  # the dataset when none is named (None: DEFAULT_DATASET)

    @property
    def all_params(self) -> dict[str, Param]:
        """The common parameters (seed) and the analysis's own."""
        return {**COMMON_PARAMS, **self.params}

    @property
    def defaults(self) -> dict:
        return defaults_of(self.params)

    @property
    def param_help(self) -> dict[str, str]:
        return {name: param.help for name, param in self.params.items()}


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
        t0 = time.time()
        entry = store.get_or_extract(model, ds, hooks, max_length=max_length, prepend_bos=prepend_bos,
                                     batch_size=batch_size, progress=self.progress_fn)
        self.cache_events.append({"key": entry.key, "hit": not entry.extracted, "dataset": ds.name,
                                  "seconds": round(time.time() - t0, 3)})
        return entry


def _memory_text(max_memory) -> str | None:
    if isinstance(max_memory, dict):
        return ",".join(f"{k}={v}" for k, v in max_memory.items())
    return max_memory


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_analysis(name: str, model: str | LoadedModel | None = None, data: str | TextDataset | None = None,
                 vectors: str | np.ndarray | None = None, params: dict | None = None,
                 progress: Progress | None = None, store: ActivationStore | None = None,
                 text_column: str | None = None, label_column: str | None = None,
                 vector_column: str | None = None, device: str | None = "auto", dtype: str | None = "auto",
                 device_map: str | None = None, max_memory: str | dict | None = None) -> Result:
    """Run a registered analysis and return its :class:`Result` (table + manifest).

    ``model`` is a name (built-in, folder or hub id) or a loaded model; by name it is opened lazily
    (:class:`~workbench.models.LazyModel`): when every activation the analysis needs is in the store,
    the weights are never loaded. ``device``, ``dtype``, ``device_map`` and ``max_memory`` are passed
    to :func:`~workbench.models.load_model`.
    """
    spec = get_analysis(name)
    declared = spec.all_params
    # validated before any input is read, so a bad value fails fast and the back-end gets clean types
    merged = validate_params(name, declared, params)
    if spec.check_params is not None:
        spec.check_params(merged)
    if vectors is not None and "vectors" not in spec.inputs:
        raise WorkbenchError(f"{name} does not run on vectors; it needs {' or '.join(spec.inputs)}.")
    t0 = time.time()
    data_obj = data_ref = None
    if data is not None:
        data_obj = data if isinstance(data, TextDataset) else load_dataset(data, text_column, label_column)
        data_ref = data_obj.source if isinstance(data, TextDataset) else str(data)
    vec_obj = vec_ref = None
    if vectors is not None:
        vec_obj = vectors if isinstance(vectors, np.ndarray) else load_vectors(vectors, vector_column)
        vec_ref = None if isinstance(vectors, np.ndarray) else str(vectors)
    # inputs are checked cheapest first, so a bad file fails before a model is loaded
    model_obj = model_ref = None
    if model is not None:
        model_obj = model if isinstance(model, ModelInfo) else load_model(
            model, device=device, dtype=dtype, device_map=device_map, max_memory=max_memory, lazy=True)
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
            "device": model_obj.device, "dtype": model_obj.dtype, "n_layers": model_obj.n_layers,
            "d_model": model_obj.d_model, "load_report": model_obj.load_report,
            # False: every activation came from the store and the weights were never loaded
            "weights_loaded": not isinstance(model_obj, LazyModel) or model_obj.loaded},
        "dataset": None if data_obj is None else {
            "name": data_obj.name, "source": data_obj.source, "content_hash": data_obj.content_hash,
            "n_texts": len(data_obj), "text_column": data_obj.text_column, "label_column": data_obj.label_column},
        "vectors": None if vec_obj is None else {
            "source": vec_ref, "column": vector_column, "shape": list(vec_obj.shape),
            "sha256": vectors_hash(vec_obj)},
        "cache": ctx.cache_events,
        "timings": {"inputs_s": round(t_inputs, 3), "run_s": round(t_run, 3), "total_s": round(time.time() - t0, 3)},
        "versions": package_versions(),
        "cli": cli_command(name, model_ref, data_ref if data_ref and not data_ref.startswith("<") else None,
                           vec_ref, merged, defaults_of(declared),
                           options={"--text-column": text_column, "--label-column": label_column,
                                    "--vector-column": vector_column,
                                    "--device": None if device in (None, "auto") else device,
                                    "--dtype": None if dtype in (None, "auto") else dtype,
                                    "--device-map": device_map, "--max-memory": _memory_text(max_memory)}),
        "summary": summary,
    }
    return Result(name, table.reset_index(drop=True), merged, summary, manifest)
