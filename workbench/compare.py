"""Comparing two models on the same data: a mode of every per-layer analysis.

Two models side by side is :func:`workbench.analysis.run_many` (one table with a ``model`` column, one
manifest naming every model, one CLI line with a repeated ``--model``). This module adds:

- :func:`run_compare`: ``run_many`` that refuses two models on different datasets (one clear error);
- :func:`combine`: results run separately, as one ``run_many``-shaped Result (same analysis, parameters and
  data, else refused);
- :func:`difference`: the difference view of such a Result, ``other - baseline`` per layer, in the table
  shape of the analysis (so its own figure draws it: one line named ``"B − A"``). Layers are matched by
  number when both models have the same layers, else by depth (layer / n_layers), the other model's values
  linearly interpolated at the baseline's depths (said in the summary);
- :func:`view`: the Result to show for a page's mode (``single``, ``side_by_side``, ``difference``);
- :func:`compare_command`: the one CLI line that reproduces a view, ``workbench compare ANALYSIS --model A
  --model B --data D [--mode difference] [--baseline A]`` (the command is declared by the similarity
  back-end, ``analyses/similarity/cli.py``);
- :func:`page_controls`: the comparison controls of a per-layer page.
"""

from __future__ import annotations

import copy
import shlex

import numpy as np
import pandas as pd

from .errors import WorkbenchError
from .results import Result, with_models

MODES = ("single", "side_by_side", "difference")
#: columns that describe a row rather than identify it (never keys, never differenced)
DESCRIPTIVE = ("definition", "hook", "text", "hover", "token")
#: numeric columns that are bookkeeping or uncertainty, not values to difference
_NOT_VALUES = ("layer", "depth", "seed")


def _dataset_of(manifest: dict) -> tuple | None:
    d = manifest.get("dataset")
    return None if d is None else (d.get("content_hash"), d.get("name"))


def check_same_data(manifests: list[dict], what: str = "the models") -> None:
    """One clear error when the runs were made on different datasets (content hashes differ)."""
    seen = {}
    for m in manifests:
        seen.setdefault(_dataset_of(m), (m.get("model") or {}).get("name", "vectors"))
    if len(seen) > 1:
        parts = ", ".join(f"{model} on {d[1] if d else 'vectors'}" for d, model in seen.items())
        raise WorkbenchError(f"Cannot compare {what} on different datasets ({parts}): run both on the same "
                             "data (one --data) so that their layers see the same texts.")


def run_compare(name: str, models: list, data=None, **kwargs) -> Result:
    """``run_many`` of ``models`` on one dataset. ``data`` may be a list with one dataset per model: they
    must be the same data (same texts), else WorkbenchError."""
    from .analysis import run_many
    from .data import TextDataset, load_dataset

    if len(models) < 2:
        raise WorkbenchError(f"comparing needs at least two models; got {len(models)}.")
    if isinstance(data, (list, tuple)):
        if len(data) != len(models):
            raise WorkbenchError(f"{len(models)} models but {len(data)} datasets: give one dataset for all.")
        columns = (kwargs.get("text_column"), kwargs.get("label_column"))
        loaded = [d if isinstance(d, TextDataset) else load_dataset(d, *columns) for d in data]
        hashes = {d.content_hash for d in loaded}
        if len(hashes) > 1:
            parts = ", ".join(f"{getattr(m, 'name', m)} on {d.name}" for m, d in zip(models, loaded))
            raise WorkbenchError(f"Cannot compare models on different datasets ({parts}): run both on the same "
                                 "data (one --data) so that their layers see the same texts.")
        data = loaded[0]
    return run_many(name, models, data=data, **kwargs)


def compare_command(cli: str, mode: str = "side_by_side", baseline: str | None = None) -> str:
    """The ``workbench compare`` line of a ``run_many`` result's ``workbench run`` line (repeated ``--model``),
    with the mode (and baseline) that reproduces the view."""
    parts = shlex.split(cli)
    if parts[:2] == ["workbench", "run"]:
        parts[1] = "compare"
    if mode != "side_by_side":
        parts += ["--mode", mode]
    if baseline:
        parts += ["--baseline", baseline]
    return " ".join(shlex.quote(p) for p in parts)


def combine(results: list[Result]) -> Result:
    """Separately run results of one analysis (same parameters, same data) as one ``run_many`` Result."""
    if len(results) < 2:
        raise WorkbenchError("combine needs at least two results.")
    first = results[0]
    if len({r.analysis for r in results}) > 1:
        raise WorkbenchError(f"Cannot combine different analyses: {sorted({r.analysis for r in results})}.")
    check_same_data([r.manifest for r in results])
    differ = sorted(k for r in results[1:] for k in set(r.params) | set(first.params)
                    if r.params.get(k) != first.params.get(k))
    if differ:
        raise WorkbenchError(f"Cannot combine runs with different parameters ({', '.join(dict.fromkeys(differ))}): "
                             "compare models under the same settings.")
    tables, names = [], []
    for r in results:
        name = (r.manifest.get("model") or {}).get("name", "vectors")
        names.append(name)
        t = r.table.copy()
        if "model" not in t:
            t.insert(0, "model", name)
        tables.append(t)
    manifest = dict(first.manifest)
    manifest.update({"models": [r.manifest.get("model") for r in results], "runs": [r.manifest for r in results],
                     "cli": with_models(first.manifest.get("cli", ""), names)})
    summary = {**first.summary, "models": names, "per_model": {n: r.summary for n, r in zip(names, results)}}
    manifest["summary"] = summary
    return Result(first.analysis, pd.concat(tables, ignore_index=True), first.params, summary, manifest)


def _columns(table: pd.DataFrame, keys, values) -> tuple[list[str], list[str]]:
    if values is None:
        values = [c for c in table.columns if pd.api.types.is_float_dtype(table[c]) and c not in _NOT_VALUES
                  and not c.startswith(("n_", "ci_")) and not c.endswith("_std") and c not in DESCRIPTIVE]
    if keys is None:
        keys = [c for c in table.columns if c not in values and c not in ("model", "depth") and c not in DESCRIPTIVE
                and (c == "layer" or pd.api.types.is_object_dtype(table[c]) or pd.api.types.is_string_dtype(table[c]))]
    missing = [c for c in list(keys) + list(values) if c not in table]
    if missing:
        raise WorkbenchError(f"difference: no column(s) {missing}; the table has {list(table.columns)}.")
    if "layer" not in keys:
        raise WorkbenchError("difference needs a per-layer table (a 'layer' column).")
    return list(keys), list(values)


def _depth(t: pd.DataFrame) -> pd.Series:
    if "depth" in t and t["depth"].notna().all():
        return t["depth"]
    top = max(float(t["layer"].max()), 1.0)
    return t["layer"] / top


def difference(result: Result, baseline: str | None = None, keys: list[str] | None = None,
               values: list[str] | None = None) -> Result:
    """``other - baseline`` for every value column, per layer (see the module docstring), as a Result of
    the same analysis whose ``model`` column reads ``"other − baseline"``."""
    t = result.table
    if "model" not in t or t["model"].nunique() < 2:
        raise WorkbenchError("difference needs a result of two models (run_many / --model A --model B).")
    if result.manifest.get("runs"):
        check_same_data(result.manifest["runs"])
    models = list(dict.fromkeys(t["model"]))
    base = models[0] if baseline is None else baseline
    if base not in models:
        raise WorkbenchError(f"baseline {base!r} is not one of the models {models}.")
    keys, values = _columns(t, keys, values)
    group_keys = [k for k in keys if k != "layer"]
    ref = t[t["model"] == base]
    same_layers = all(set(t.loc[t["model"] == m, "layer"]) == set(ref["layer"]) for m in models)
    parts = []
    for other in (m for m in models if m != base):
        part = _aligned(ref, t[t["model"] == other], group_keys, values, same_layers)
        part["model"] = f"{other} − {base}"
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    for col in [c for c in table.columns if c.startswith("ci_")]:
        table[col] = np.nan
    how = "by layer number" if same_layers else "by depth (layer / n_layers), the other model interpolated"
    comparison = {"baseline": base, "others": [m for m in models if m != base], "values": values, "keys": keys,
                  "alignment": how}
    summary = {k: v for k, v in result.summary.items() if k not in ("recommendation", "per_model")}
    summary["comparison"] = comparison
    manifest = copy.deepcopy(result.manifest)
    manifest["comparison"] = comparison
    return Result(result.analysis, table, result.params, summary, manifest)


def _aligned(ref: pd.DataFrame, other: pd.DataFrame, group_keys: list[str], values: list[str],
             same_layers: bool) -> pd.DataFrame:
    """The baseline's rows with each value replaced by other - baseline (matched or interpolated)."""
    out = []
    groups = ref.groupby(group_keys, sort=False, dropna=False) if group_keys else [((), ref)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        mask = np.ones(len(other), bool)
        for k, v in zip(group_keys, key):
            mask &= (other[k] == v).to_numpy() | (other[k].isna().to_numpy() & pd.isna(v))
        o = other[mask]
        g = g.sort_values("layer").copy()
        if g["layer"].duplicated().any() or o["layer"].duplicated().any():
            raise WorkbenchError(f"difference needs one row per layer and key; several rows share a layer for "
                                 f"{dict(zip(group_keys, key))}. Name the identifying columns with keys=[...].")
        if o.empty:
            g[values] = np.nan
            out.append(g)
            continue
        if same_layers:
            matched = o.set_index("layer").reindex(g["layer"])
            for v in values:
                g[v] = matched[v].to_numpy(dtype=float) - g[v].to_numpy(dtype=float)
        else:
            o = o.assign(_d=_depth(o)).sort_values("_d")
            x = _depth(g).to_numpy(dtype=float)
            for v in values:
                ok = o[v].notna().to_numpy()
                interp = np.interp(x, o["_d"].to_numpy(float)[ok], o[v].to_numpy(float)[ok]) if ok.any() else np.nan
                g[v] = interp - g[v].to_numpy(dtype=float)
        out.append(g)
    return pd.concat(out, ignore_index=True)


def view(result: Result | None, mode: str, baseline: str | None = None, **kwargs) -> Result | None:
    """The Result a page shows in ``mode``: as run (single, side_by_side) or its :func:`difference`."""
    if mode not in MODES:
        raise WorkbenchError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    if result is None or mode != "difference":
        return result
    return difference(result, baseline=baseline, **kwargs)


def page_controls(prefix: str, model: str | None, kinds: tuple[str, ...] = ("decoder", "encoder"),
                  container=None) -> tuple[list[str], str]:
    """The Streamlit controls of the comparison mode on a per-layer page: other built-in models to run on
    the same data and settings, and how to show them (side by side, or the difference to the sidebar's
    model). Returns ``(other models, mode)``; the mode is ``single`` while no other model is picked."""
    import streamlit as st

    from .ui import page_models

    where = container if container is not None else st
    names = [n for n in page_models(kinds, need_data=True) if n != model]
    left, right = where.columns([3, 2])
    others = left.multiselect("Compare with other models (same data and settings)", names, key=f"{prefix}_overlay")
    mode = right.radio("Show the models", ["side_by_side", "difference"], horizontal=True, key=f"{prefix}_mode",
                       disabled=not others, format_func=lambda m: {"side_by_side": "side by side",
                                                                   "difference": "difference (other − this)"}[m])
    return list(others), (mode if others else "single")
