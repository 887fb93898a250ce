"""The ``projection`` analysis: a 2-D PCA or UMAP map of one layer (or of a user matrix), coloured by
position, token, text or label; with a ``transform``, the transformed map beside the untransformed one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis import Param
from workbench.errors import WorkbenchError
from workbench.stats import check_array, parse_layers, scatter_matrix, subsample_rows
from workbench.stats.transform_params import TRANSFORM_PARAMS

from .analysis import REPRESENTATIONS, model_entry, with_transformed, layer_matrix, layer_transform

PROJECTION_PARAMS = {
    "layer": Param(-1, "layer to map (0 = embeddings, -1 = last)", min=-1),
    "method": Param("pca", "pca or umap", choices=("pca", "umap")),
    "representation": Param("token", "token or mean_pooled", choices=REPRESENTATIONS),
    "skip_first": Param(False, "leave out position 0 of every text"),
    "color": Param("", "column to colour by: position, token, text_id, label or any dataset column (blank: automatic)"),
    "max_texts": Param(64, "use the first N texts (0 = all)", min=0),
    "max_length": Param(128, "tokens per text", min=1),
    "max_points": Param(5000, "points sent to the browser: a seeded subsample above this size (0 = all)", min=0),
    "umap_n_neighbors": Param(15, "UMAP n_neighbors", min=2),
    "umap_min_dist": Param(0.1, "UMAP min_dist", min=0, max=1),
    "umap_metric": Param("euclidean", "UMAP metric (euclidean, cosine, ...)"),
    **TRANSFORM_PARAMS,
}



def _pca_2d(X: np.ndarray, sub: np.ndarray | None):
    """Fit PCA on all rows (streamed float64 scatter), project the shown rows. Returns (Y, ratios)."""
    G, n = scatter_matrix(X)
    evals, evecs = np.linalg.eigh(G)
    V = evecs[:, ::-1][:, :2]
    mean = X.astype(np.float64).mean(axis=0)
    Xs = X if sub is None else X[sub]
    Y = (Xs.astype(np.float64) - mean) @ V
    total = max(float(np.trace(G)), 1e-300)
    return Y, [float(evals[-1] / total), float(evals[-2] / total) if evals.size > 1 else 0.0]


def _umap_2d(X: np.ndarray, p: dict, seed: int) -> np.ndarray:
    try:
        import umap
    except ImportError as exc:  # pragma: no cover - umap-learn is a dependency
        raise WorkbenchError("UMAP needs the package umap-learn: pip install umap-learn.") from exc
    if X.shape[0] < 4:
        raise WorkbenchError("UMAP needs at least 4 points.")
    reducer = umap.UMAP(n_components=2, n_neighbors=int(min(p["umap_n_neighbors"], X.shape[0] - 1)),
                        min_dist=float(p["umap_min_dist"]), metric=str(p["umap_metric"]), random_state=seed,
                        n_jobs=1)
    return reducer.fit_transform(X.astype(np.float32))


def _short(s, n=80) -> str:
    s = str(s).replace("\n", " ")
    return s if len(s) <= n else s[: n - 1] + "…"


def run_projection(ctx):
    p = ctx.params
    method, rep = p["method"], p["representation"]
    skip = bool(p["skip_first"])
    if ctx.vectors is not None:
        X = check_array(ctx.vectors, "vectors", min_rows=3)
        meta = pd.DataFrame({"index": np.arange(X.shape[0])})
        meta["hover"] = [f"vector #{i}" for i in range(X.shape[0])]
        layer, summary = None, {"input": "vectors"}
        default_color = "index"
        rep, skip = "vectors", False
    else:
        model, dataset, entry = model_entry(ctx)
        layer = parse_layers(int(p["layer"]), model.n_layers)[0]
        hook = model.resid_hooks()[layer]
        X = layer_matrix(entry, hook, rep, skip)
        frame = dataset.frame.reset_index(drop=True)
        extra_cols = [c for c in frame.columns if c != dataset.text_column]
        if rep == "mean_pooled":
            meta = pd.DataFrame({"text_id": np.arange(entry.n_texts)})
            meta["text"] = [_short(t) for t in dataset.texts[: entry.n_texts]]
            for c in extra_cols:
                meta[c] = frame[c].iloc[: entry.n_texts].to_numpy()
            meta["hover"] = [f"#{i}: {t}" for i, t in zip(meta["text_id"], meta["text"])]
            default_color = dataset.label_column or "text_id"
        else:
            tid, pos = entry.text_ids(), entry.position_ids()
            toks = [s for i in range(entry.n_texts) for s in entry.token_strings(i)]
            meta = pd.DataFrame({"text_id": tid, "position": pos, "token": toks})
            if skip:
                meta = meta[meta["position"] != 0].reset_index(drop=True)
            for c in extra_cols:
                meta[c] = frame[c].to_numpy()[meta["text_id"].to_numpy()]
            meta["hover"] = [f"#{i} pos {q}: {t!r}" for i, q, t in zip(meta["text_id"], meta["position"], meta["token"])]
            default_color = "position"
        summary = {"input": "model", "layer": layer, "hook": hook, "n_layers": model.n_layers,
                   "n_texts": int(entry.n_texts)}
    n_total = X.shape[0]
    sub = subsample_rows(n_total, int(p["max_points"]), ctx.seed)
    shown = (meta if sub is None else meta.iloc[sub]).reset_index(drop=True)
    lt = layer_transform(ctx, None if ctx.vectors is not None else model, rep, skip)
    table = _projected(X, sub, shown, p, ctx.seed, summary, "explained_variance_ratio")
    if lt.active:
        after = _projected(lt(layer or 0, X), sub, shown, p, ctx.seed, summary, "explained_variance_ratio_transformed")
        table = with_transformed(table, after, lt.name)
    if ctx.vectors is None and rep == "token" and not skip:
        _note_first_position(ctx, X, meta["position"].to_numpy(), summary)
    color = str(p["color"]) or default_color
    if color not in table.columns:
        raise WorkbenchError(f"Cannot colour by {color!r}; columns are {[c for c in table.columns if c not in ('x', 'y', 'hover', 'transform')]}.")
    summary.update({"method": method, "representation": rep, "skip_first": skip, "color": color,
                    "n_total": int(n_total), "n_shown": int(len(shown)), "downsampled": sub is not None,
                    "transform": lt.summary()})
    return table, summary


def _note_first_position(ctx, X: np.ndarray, position: np.ndarray, summary: dict) -> None:
    """Decoders put a massive activation on position 0 (norm ~100x the others in SmolLM2): those points
    sit far out on PC1 and squeeze the rest of the map. Say so, with the fix, when it is the case."""
    first = position == 0
    if not first.any() or first.all():
        return
    norms = np.linalg.norm(X, axis=1)
    ratio = float(np.median(norms[first]) / max(np.median(norms[~first]), 1e-12))
    summary["first_position_norm_ratio"] = round(ratio, 2)
    if ratio > 5:
        ctx.warn(f"The {int(first.sum())} first-position points have a median norm {ratio:.0f}x the other "
                 "tokens' (the position-0 'massive activation' of decoders): they lie far out on the map and "
                 "squeeze the rest. Exclude the first position (skip_first=true) to see the other tokens.")


def _projected(X: np.ndarray, sub, shown: pd.DataFrame, p: dict, seed: int, summary: dict, ratio_key: str):
    """x, y of the shown rows (PCA fit on every row, or UMAP of the shown rows) beside their metadata."""
    if p["method"] == "pca":
        Y, summary[ratio_key] = _pca_2d(X, sub)
    else:
        Y = _umap_2d(X if sub is None else X[sub], p, seed)
    return pd.concat([pd.DataFrame({"x": Y[:, 0], "y": Y[:, 1]}), shown], axis=1)


#: categories shown in their own colour (the rest are "other", in grey): Alphabet's 26 distinct colours
PALETTE = plotly.colors.qualitative.Alphabet
CATEGORY_COLOURS = 24


def _projection_traces(t: pd.DataFrame, color: str, show_legend: bool) -> list:
    col = t[color] if color in t.columns else None
    hover = t["hover"] if "hover" in t.columns else None
    numeric = col is not None and pd.api.types.is_numeric_dtype(col) and (col.nunique() > 20 or color in ("position", "index"))
    if col is None or numeric:
        return [go.Scattergl(
            x=t["x"], y=t["y"], mode="markers", text=hover, hovertemplate="%{text}<extra></extra>", showlegend=False,
            marker=dict(size=4, color=None if col is None else col, colorscale="Viridis",
                        showscale=col is not None and show_legend, colorbar=dict(title=color), opacity=0.75))]
    cats = col.astype(str)
    top = cats.value_counts().index[:CATEGORY_COLOURS]
    cats = cats.where(cats.isin(top), "other")
    traces = []
    for k, c in enumerate(list(top) + (["other"] if (cats == "other").any() else [])):
        m = (cats == c).to_numpy()
        # one distinct colour per shown category (plotly's default cycle has 10, so "," and "(" matched)
        colour = "#c8c8c8" if c == "other" else PALETTE[k]
        traces.append(go.Scattergl(x=t["x"][m], y=t["y"][m], mode="markers", name=_short(c, 30), legendgroup=str(c),
                                   showlegend=show_legend, text=None if hover is None else hover[m],
                                   hovertemplate="%{text}<extra></extra>",
                                   marker=dict(size=4, opacity=0.75, color=colour)))
    return traces


def figure_projection(result) -> go.Figure:
    """The 2-D map; with a transform, the untransformed and the transformed map side by side."""
    t = result.table
    s = result.summary or {}
    color = s.get("color") or "x"
    method = s.get("method", "?").upper()
    panels = list(dict.fromkeys(t["transform"])) if "transform" in t else ["none"]
    ratio_keys = {"none": "explained_variance_ratio"}
    ratio_keys.update({name: "explained_variance_ratio_transformed" for name in panels if name != "none"})
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"transform: {p}" for p in panels]
                        if len(panels) > 1 else None)
    for k, name in enumerate(panels):
        part = t if len(panels) == 1 else t[t["transform"] == name].reset_index(drop=True)
        for trace in _projection_traces(part, color, show_legend=k == 0):
            fig.add_trace(trace, row=1, col=k + 1)
        ratios = s.get(ratio_keys.get(name, ""))
        xl, yl = (f"PC1 ({ratios[0]:.1%})", f"PC2 ({ratios[1]:.1%})") if ratios else (f"{method} 1", f"{method} 2")
        fig.update_xaxes(title_text=xl, row=1, col=k + 1)
        fig.update_yaxes(title_text=yl, row=1, col=k + 1)
    where = f"layer {s['layer']}" if s.get("layer") is not None else "vectors"
    note = f", {s.get('n_shown')} of {s.get('n_total')} points (seeded subsample)" if s.get("downsampled") else ""
    fig.update_layout(template="plotly_white", height=560,
                      title=f"{method} of {s.get('representation', '')} representations, {where}, colour: {color}{note}")
    return fig


