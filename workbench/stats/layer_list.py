"""The one parser of layer lists: ``layers=`` as users write it, checked against a model's depth.

Layers are numbered 0..L: 0 is the embeddings, l the output of block l-1. A layer list may be
written blank (``None``, ``""``, ``[]``), ``"all"``, one integer, a list of integers or a
comma-separated string such as ``"0,3,6"``; negative numbers count from the end where the caller
allows it (``-1`` = L, as Python indexing).

Two steps, so that a parameter can be checked before any model is loaded:

- :func:`layer_request` reads the format only (no depth needed; for a ``Param`` check);
- :func:`parse_layers` resolves it against ``n_layers`` and checks the range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError

FORMAT = "blank or 'all' for every layer, a layer number, or a list such as 0,3,6 or [0, 3, -1]"
NEGATIVE = ("from_end", "error", "as_none")


def _as_int(value: Any) -> int:
    # 3.0 from a number widget or a YAML plan is 3; 2.5 and true are not layer numbers
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"not an integer: {value!r}")
    if not (math.isfinite(value) and float(value).is_integer()):
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def layer_request(value: Any) -> str | list[int]:
    """The format of a layer list, without a model: ``"all"``, ``[]`` (blank) or the numbers given.

    ``None`` / ``""`` / ``[]`` -> ``[]``; ``"all"`` (any case) -> ``"all"``; ``3`` -> ``[3]``;
    ``[0, 3]`` -> ``[0, 3]``; ``"0, 3,-1"`` -> ``[0, 3, -1]``. Raises ValueError for anything else
    (the contract of a ``Param`` check).
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.replace(" ", "").strip()
        if text.lower() == "all":
            return "all"
        return [int(part) for part in text.split(",") if part]
    if isinstance(value, (list, tuple)):
        return [_as_int(v) for v in value]
    return [_as_int(value)]


def parse_layers(value: Any, n_layers: int, *, blank: str | list = "all", negative: str = "from_end",
                 owner: str = "this model") -> list:
    """Layer numbers in 0..n_layers for ``value``, duplicates dropped, order kept.

    ``blank``: what ``None`` / ``""`` / ``[]`` mean: ``"all"`` (every layer 0..n_layers) or a list
    returned as given (e.g. ``[None]``, "the sentence embedding"). ``"all"`` always means every layer.
    ``negative``: ``"from_end"`` (``-1`` = n_layers, ``-2`` = n_layers - 1, ...), ``"error"``
    (refused), or ``"as_none"`` (a negative number stands for None, e.g. the sentence embedding).
    ``owner`` names what has the layers in the out-of-range message ("the embedder", "this encoder").
    Raises WorkbenchError for a malformed list or a layer out of range.
    """
    if negative not in NEGATIVE:
        raise ValueError(f"negative must be one of {NEGATIVE}; got {negative!r}")
    try:
        requested = layer_request(value)
    except ValueError as exc:
        raise WorkbenchError(f"layers must be {FORMAT}; got {value!r}.") from exc
    if requested == "all" or (not requested and blank == "all"):
        return list(range(n_layers + 1))
    if not requested:
        return list(blank)
    out = []
    for v in requested:
        layer = v
        if v < 0 and negative == "as_none":
            layer = None
        elif v < 0 and negative == "from_end":
            layer = v + n_layers + 1
        if layer is not None and not 0 <= layer <= n_layers:
            raise WorkbenchError(f"Layer {v} is out of range: {owner} has layers 0..{n_layers}"
                                 + (" (negative numbers count from the end)." if negative == "from_end" else "."))
        out.append(layer)
    return list(dict.fromkeys(out))
