"""Analysis parameters, declared once: :class:`Param` and their validation.

A back-end declares each parameter of its analysis once, as a :class:`Param` (default, help, type,
bounds, choices), in the spirit of scikit-learn's ``_parameter_constraints``. The same declaration
drives validation in :func:`workbench.analysis.run_analysis` (CLI, Python, batch plans and the app
alike), ``workbench analyses`` and the app's widgets (:func:`workbench.ui.param_widget`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import WorkbenchError

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
