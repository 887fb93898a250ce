"""The analysis registry: what a back-end declares, and finding it.

A back-end is one package (or module) under ``analyses/`` that calls :func:`register` with an
:class:`AnalysisSpec`: its run and figure functions, its parameters (:class:`~workbench.params.Param`),
its extra CLI commands (:class:`Command`), its README results tables, its default model and data.
The core never imports a back-end by name: :func:`list_analyses` imports every module under
``analyses/`` on first use, and :func:`get_analysis` only the one ``analyses.HOMES`` names for it.
This module imports neither results nor the runner, so both can use it.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import WorkbenchError
from .params import COMMON_PARAMS, Param, defaults_of

RunFn = Callable[..., Any]
FigureFn = Callable[..., Any]


@dataclass(frozen=True)
class Command:
    """An extra ``workbench NAME`` subcommand of a back-end: ``setup(parser)`` adds its arguments and
    sets ``fn`` (``parser.set_defaults(fn=...)``), which gets the parsed arguments."""

    name: str
    help: str
    setup: Callable[[Any], None]


@dataclass(frozen=True)
class AnalysisSpec:
    """What a back-end registers.

    ``params`` declares every parameter (:class:`Param`); ``defaults`` and ``param_help`` are derived
    from it. ``check_params`` optionally checks constraints between parameters (validated values in,
    WorkbenchError out), before any input is loaded.
    ``inputs`` says what it runs on: "model" (a model and a text dataset), "vectors" (a user matrix
    of embeddings, no model), "task" (a model and a task the back-end generates itself).
    ``figures`` optionally maps extra figure names to functions of the result. ``readme_tables``:
    the README results this analysis makes (:class:`workbench.reproduce.ReadmeTable`).
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
    commands: tuple[Command, ...] = ()  # extra `workbench NAME` subcommands (e.g. train-lens)

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
#: back-ends that failed to import, with the error (``workbench analyses`` lists them)
BROKEN: dict[str, str] = {}
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
            _import_backend(info.name)


def _import_backend(module: str) -> None:
    """Import ``analyses.<module>``; one broken back-end must not take the others down, so its
    error is kept in :data:`BROKEN` (``workbench analyses`` lists it) and logged."""
    try:
        importlib.import_module(f"analyses.{module}")
    except Exception as exc:
        BROKEN[module] = f"{exc.__class__.__name__}: {exc}"
        logging.getLogger(__name__).warning("back-end analyses.%s failed to import: %s", module, exc)


def list_analyses() -> list[AnalysisSpec]:
    _discover()
    return sorted(_REGISTRY.values(), key=lambda s: s.name)


def _import_home(name: str) -> None:
    """Import only the back-end that registers ``name`` (``analyses.HOMES``), when it is known."""
    import analyses

    home = getattr(analyses, "HOMES", {}).get(name)
    if home is not None:
        _import_backend(home)


def get_analysis(name: str) -> AnalysisSpec:
    if name not in _REGISTRY and not _DISCOVERED:
        _import_home(name)
    if name not in _REGISTRY:
        _discover()
    if name not in _REGISTRY:
        broken = "".join(f" The back-end analyses.{b} failed to import ({e})." for b, e in BROKEN.items())
        raise WorkbenchError(f"No analysis {name!r}; available: {', '.join(sorted(_REGISTRY))}.{broken}")
    return _REGISTRY[name]
