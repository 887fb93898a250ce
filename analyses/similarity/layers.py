"""The ``layer_similarity`` analysis: CKA (and debiased), orthogonal Procrustes, LLM-Microscope's linear
fit between every pair of layers of one model, or between the layers of two models on the same texts, and
the linearity score of consecutive layers (docs/methods.md, "Outliers, whitening and layer similarity").

Two models are compared token by token when both tokenise the texts into the same token ids (the same
tokenizer), and on one mean-pooled vector per text otherwise. The math is
:func:`workbench.stats.similarity_matrices` (each layer centred once, each pair's cross-product once).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from workbench.analysis import Param
from workbench.errors import WorkbenchError
from workbench.stats import check_array, layer_request, parse_layers, similarity_matrices, subsample_rows
from workbench.stats.similarity import CONSECUTIVE_METRICS, DEFAULT_METRICS, DEFINITIONS, METRICS, parse_metrics
from workbench.stats.similarity import best_match

REPRESENTATIONS = ("auto", "token", "mean_pooled")


def _metrics_format(spec) -> str:
    return ",".join(parse_metrics(spec))


def _layers_format(spec: str) -> str:
    layer_request(spec)
    return spec


_LAYERS = dict(check=_layers_format, allowed="comma-separated layer numbers such as 0,3,-1, or blank or 'all' for all")

SIMILARITY_PARAMS = {
    "other_model": Param("", "a second model compared layer by layer on the same texts (blank: this model's "
                         "layers against each other)"),
    "metrics": Param(",".join(DEFAULT_METRICS), "measures, comma-separated: " + ", ".join(METRICS), type=object,
                     check=_metrics_format, allowed="a comma-separated list of " + ", ".join(METRICS)),
    "representation": Param("auto", "token: every token vector (two models need the same tokenizer); mean_pooled: "
                            "one mean vector per text; auto: tokens unless two models tokenise differently",
                            choices=REPRESENTATIONS),
    "skip_first": Param(False, "leave out position 0 of every text (BOS / [CLS])"),
    "max_texts": Param(64, "use the first N texts of the dataset (0 = all)", min=0),
    "max_length": Param(128, "tokens per text (longer texts are truncated)", min=1),
    "max_tokens": Param(8000, "seeded subsample of token rows, the same rows at every layer (0 = all)", min=0),
    "layers": Param("", "this model's layers (blank or 'all' = all)", **_LAYERS),
    "other_layers": Param("", "the other model's layers (blank or 'all' = all)", **_LAYERS),
    "precision": Param("float32", "cross-products in float32 (about 1e-6 relative) or float64",
                       choices=("float32", "float64")),
}


def _activations(ctx, model, hooks, dataset):
    """``ctx.activations`` for another model (its cache events and truncation warnings in this run's manifest)."""
    own = ctx.model
    ctx.model = model
    try:
        return ctx.activations(hooks, max_length=int(ctx.params["max_length"]), dataset=dataset)
    finally:
        ctx.model = own


def _same_tokens(a, b) -> bool:
    if a.n_texts != b.n_texts or not np.array_equal(a.lengths, b.lengths):
        return False
    return all(np.array_equal(a.token_ids(i), b.token_ids(i)) for i in range(a.n_texts))


def _representation(ctx, entry, other_entry) -> tuple[str, str]:
    """The representation used and why."""
    asked = ctx.params["representation"]
    if other_entry is None:
        return ("token" if asked == "auto" else asked), "one model"
    aligned = _same_tokens(entry, other_entry)
    if asked == "token" and not aligned:
        raise WorkbenchError("representation=token needs both models to tokenise the texts into the same tokens; "
                             f"{ctx.model.name} and {ctx.params['other_model']} do not (different tokenizers). "
                             "Use representation=mean_pooled (or auto).")
    if asked != "auto":
        return asked, "as asked"
    return ("token", "same tokens in both models") if aligned else \
        ("mean_pooled", "the tokenizers differ: one mean-pooled vector per text")


def _loaders(entry, hooks, layer_ids, rep, skip, rows):
    if rep == "mean_pooled":
        return [(lambda h=hooks[l]: entry.mean_pooled(h, skip_first=skip)) for l in layer_ids]
    if rows is None:
        return [(lambda h=hooks[l]: entry.layer(h, skip_first=skip)) for l in layer_ids]
    return [(lambda h=hooks[l]: entry.layer(h, skip_first=skip)[rows]) for l in layer_ids]


def _model_inputs(ctx):
    """Layers of the run's model (and of the other model) as loaders, their ids, names and the notes."""
    from workbench.models import load_model

    p = ctx.params
    model = ctx.require_model()
    ds = ctx.require_dataset()
    ds = ds.subset(int(p["max_texts"])) if int(p["max_texts"]) > 0 else ds
    entry = ctx.activations(model.resid_hooks(), max_length=int(p["max_length"]), dataset=ds)
    other = other_entry = None
    if str(p["other_model"]).strip():
        other = load_model(str(p["other_model"]).strip(), lazy=True, device=model.device)
        other_entry = _activations(ctx, other, other.resid_hooks(), ds)
    rep, why = _representation(ctx, entry, other_entry)
    skip = bool(p["skip_first"])
    n_rows = entry.n_texts if rep == "mean_pooled" else int(entry.n_tokens - (entry.n_texts if skip else 0))
    rows = subsample_rows(n_rows, int(p["max_tokens"]), ctx.seed) if rep == "token" else None
    ids_a = parse_layers(p["layers"], model.n_layers)
    sides = [(model, entry, ids_a)]
    if other is not None:
        sides.append((other, other_entry, parse_layers(p["other_layers"], other.n_layers, owner=other.name)))
    loaders = [_loaders(e, m.resid_hooks(), ids, rep, skip, rows) for m, e, ids in sides]
    info = {"representation": rep, "representation_reason": why, "n_texts": int(entry.n_texts),
            "n_rows": int(n_rows if rows is None else rows.size), "subsampled": rows is not None,
            "n_layers": model.n_layers, "skip_first": skip}
    if other is not None:
        info["other_model"] = {"name": other.name, "fingerprint": other.fingerprint, "kind": other.kind,
                               "n_layers": other.n_layers, "d_model": other.d_model}
    return sides, loaders, info


def _vector_inputs(ctx):
    V = ctx.vectors
    if getattr(V, "ndim", 2) != 3:
        raise WorkbenchError("layer_similarity compares layers: a vectors input is one [N, D] matrix, a single "
                             "layer. Run it on a model (--model), or pass an array of shape [layers, N, D] from "
                             "Python (run_analysis('layer_similarity', vectors=stack)).")
    if V.shape[0] < 2:
        raise WorkbenchError(f"layer_similarity needs at least 2 layers; the vectors hold {V.shape[0]}.")
    layers = [check_array(V[k], f"vectors layer {k}", min_rows=4) for k in range(V.shape[0])]
    ids = list(range(len(layers)))
    info = {"representation": "vectors", "representation_reason": "a [layers, N, D] array", "n_rows": int(V.shape[1]),
            "n_layers": len(layers) - 1, "subsampled": False, "skip_first": False}
    return [(None, None, ids)], [layers], info


def run_layer_similarity(ctx):
    p = ctx.params
    metrics = parse_metrics(p["metrics"])
    sides, loaders, info = _vector_inputs(ctx) if ctx.vectors is not None else _model_inputs(ctx)
    two = len(sides) == 2
    if two:
        dropped = [m for m in metrics if m in CONSECUTIVE_METRICS]
        if dropped:
            ctx.warn(f"{', '.join(dropped)}: consecutive layers of one model only; left out for two models.")
        metrics = [m for m in metrics if m not in CONSECUTIVE_METRICS]
    if not metrics:
        raise WorkbenchError("no measure left to compute: for two models choose cka, cka_debiased, procrustes or "
                             "linear_fit.")
    dims = [len(ld) for ld in loaders]
    if info["n_rows"] <= 1 + max(_width(ctx, s) for s in sides) and {"linear_fit", "linearity",
                                                                    "linearity_residual_removed"} & set(metrics):
        ctx.warn(f"{info['n_rows']} rows for up to {max(_width(ctx, s) for s in sides)} dimensions: a least-squares "
                 "fit of one layer from another is exact with so few points, so linear_fit / linearity are 1 by "
                 "construction. Use more texts or token rows.")
    t0 = time.perf_counter()
    device = getattr(ctx.model, "device", "cpu") if ctx.model is not None else "cpu"
    device = device if device.startswith(("cpu", "cuda", "mps")) else "cpu"
    mats = similarity_matrices(loaders[0], loaders[1] if two else None, metrics=metrics, device=device,
                               precision=p["precision"], progress=ctx.progress)
    seconds = time.perf_counter() - t0
    names = [("vectors" if m is None else m.name) for m, _, _ in sides]
    table = _table(mats, sides, names, info, two)
    info.update({"metrics": metrics, "definitions": {m: DEFINITIONS[m] for m in metrics}, "seconds": round(seconds, 3),
                 "shape": dims, **_headline(mats, sides, two)})
    return table, info


def _width(ctx, side) -> int:
    model = side[0]
    return int(model.d_model) if model is not None else int(ctx.vectors.shape[2])


def _depths(ids, n_layers):
    return [i / n_layers if n_layers else np.nan for i in ids]


def _table(mats: dict, sides, names, info, two: bool) -> pd.DataFrame:
    ids_a = sides[0][2]
    ids_b, name_b = (sides[1][2], names[1]) if two else (ids_a, names[0])
    la = sides[0][0].n_layers if sides[0][0] is not None else info["n_layers"]
    lb = sides[1][0].n_layers if two else la
    da, db = _depths(ids_a, la), _depths(ids_b, lb)
    parts = []
    for metric, M in mats.items():
        if M.ndim == 2:
            ii, jj = np.meshgrid(np.arange(len(ids_a)), np.arange(len(ids_b)), indexing="ij")
            ii, jj = ii.ravel(), jj.ravel()
        else:
            ii, jj = np.arange(M.size), np.arange(M.size) + 1
        parts.append(pd.DataFrame({
            "model": names[0], "layer": np.asarray(ids_a)[ii], "depth": np.asarray(da)[ii], "other_model": name_b,
            "other_layer": np.asarray(ids_b)[jj], "other_depth": np.asarray(db)[jj], "metric": metric,
            "value": M.ravel() if M.ndim == 2 else M}))
    return pd.concat(parts, ignore_index=True)


def _headline(mats: dict, sides, two: bool) -> dict:
    out = {}
    ids_a, ids_b = sides[0][2], (sides[1][2] if two else sides[0][2])
    key = "cka" if "cka" in mats else next((m for m in mats if mats[m].ndim == 2), None)
    if key is not None and two:
        best = best_match(mats[key])
        out["best_match"] = {"metric": key, "path": [[int(a), int(ids_b[b])] for a, b in zip(ids_a, best) if b >= 0]}
    for m in CONSECUTIVE_METRICS:
        if m in mats and mats[m].size:
            v = mats[m]
            out[m] = {"mean": float(np.nanmean(v)), "min": float(np.nanmin(v)),
                      "min_at_layer": int(ids_a[int(np.nanargmin(v))]), "max": float(np.nanmax(v))}
    if key is not None and not two and len(ids_a) > 1:
        out["consecutive_" + key] = float(np.nanmean(np.diagonal(mats[key], 1)))
    return out
