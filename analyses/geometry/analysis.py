"""The registered analyses ``geometry`` (per-layer anisotropy and intrinsic dimension) and
``projection`` (2-D PCA / UMAP map of one layer), on a model + dataset or a user (N, D) matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis import Param
from workbench.errors import WorkbenchError
from workbench.stats import check_array, layer_request, parse_layers, scatter_matrix, subsample_rows

from .layers import DEFAULT_ESTIMATORS, ESTIMATORS, geometry_table, parse_estimators

REPRESENTATIONS = ("token", "mean_pooled")


def _check_estimators(spec) -> str:
    return ",".join(parse_estimators(spec))


def _check_layer_list(spec: str) -> str:
    layer_request(spec)  # the format only: the range is checked against the model when it runs
    return spec


GEOMETRY_PARAMS = {
    "estimators": Param(DEFAULT_ESTIMATORS, "estimators to run, comma-separated", type=object,
                        check=_check_estimators, allowed="a comma-separated list of " + ", ".join(ESTIMATORS)),
    "representation": Param("token", "token: every token vector; mean_pooled: one mean vector per text",
                            choices=REPRESENTATIONS),
    "skip_first": Param(False, "leave out position 0 of every text (BOS / [CLS]; 'massive activations' "
                        "dominate sigma_1)"),
    "max_texts": Param(64, "use the first N texts of the dataset (0 = all)", min=0),
    "max_length": Param(128, "tokens per text (longer texts are truncated)", min=1),
    "layers": Param("", "comma-separated layer numbers, blank or 'all' = all (0 = embeddings, -1 = last)",
                    check=_check_layer_list, allowed="comma-separated layer numbers such as 0,3,-1, or blank or "
                    "'all' for all"),
    "max_points": Param(5000, "seeded subsample for the kNN estimators (TwoNN, MLE); the same points at every "
                        "layer (0 = all points)", min=0),
    "max_points_spectrum": Param(0, "seeded subsample for SVD anisotropy / PCA dimensions (0 = all points)", min=0),
    "n_boot": Param(50, "bootstrap resamples for the kNN and cosine intervals (0 = none)", min=0),
    "n_boot_spectrum": Param(20, "bootstrap resamples for the SVD-anisotropy interval (0 = none)", min=0),
    "ci_level": Param(0.95, "confidence level of the intervals", min=0, max=1, closed="neither"),
    "mle_k": Param(20, "neighbours k of the MLE estimator", min=2),
    "discard_fraction": Param(0.1, "TwoNN: fraction of the largest ratios r2/r1 discarded", min=0, max=1,
                              closed="left"),
    "reduction_factor": Param(5, "LLM-Microscope TwoNN: fit on the smallest 1/reduction_factor of the ratios",
                              min=1),
    "pca_variance": Param(0.9, "share of variance for the PCA linear dimension", min=0, max=1, closed="right"),
    "n_pairs": Param(10_000, "random pairs for the cosine anisotropy", min=1),
}

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
}


# ---------------------------------------------------------------- representations of a model


def _entry(ctx):
    model = ctx.require_model()
    max_texts = int(ctx.params.get("max_texts") or 0)
    dataset = ctx.require_dataset()
    dataset = dataset.subset(max_texts) if max_texts > 0 else dataset
    entry = ctx.activations(model.resid_hooks(), max_length=int(ctx.params["max_length"]), dataset=dataset)
    return model, dataset, entry


def layer_matrix(entry, hook: str, representation: str, skip_first: bool) -> np.ndarray:
    """(N, D) float32 representations of one layer: all tokens or one mean per text, position 0 of
    every text left out with ``skip_first`` (the store's accessors do the reading)."""
    if representation == "mean_pooled":
        return entry.mean_pooled(hook, skip_first=skip_first)
    return entry.layer(hook, skip_first=skip_first)


def _estimator_kwargs(p: dict) -> dict:
    return {k: p[k] for k in ("max_points", "max_points_spectrum", "n_boot", "n_boot_spectrum", "ci_level",
                              "mle_k", "discard_fraction", "reduction_factor", "pca_variance", "n_pairs")}


# ------------------------------------------------------------------------------- geometry


def run_geometry(ctx):
    p = ctx.params
    est = parse_estimators(p["estimators"])
    kwargs = {k: (int(v) if k not in ("ci_level", "discard_fraction", "pca_variance") else float(v))
              for k, v in _estimator_kwargs(p).items()}
    rep = p["representation"]
    if ctx.vectors is not None:
        X = check_array(ctx.vectors, "vectors", min_rows=3)
        table = geometry_table([X], model="vectors", estimators=est, seed=ctx.seed, progress=ctx.progress, **kwargs)
        summary = {"input": "vectors", "n_vectors": int(X.shape[0]), "dim": int(X.shape[1])}
        rep = "vectors"  # rows used as given; representation / skip_first do not apply
    else:
        model, dataset, entry = _entry(ctx)
        hooks = model.resid_hooks()
        layer_ids = parse_layers(p["layers"], model.n_layers)
        skip = bool(p["skip_first"])
        loaders = [(lambda h=hooks[lid]: layer_matrix(entry, h, rep, skip)) for lid in layer_ids]
        table = geometry_table(loaders, n_layers=model.n_layers, layer_ids=layer_ids, model=model.name,
                               estimators=est, seed=ctx.seed, progress=ctx.progress, **kwargs)
        n_tok = int(entry.n_tokens - (entry.n_texts if skip else 0))
        summary = {"input": "model", "model_kind": model.kind, "n_layers": model.n_layers,
                   "n_texts": int(entry.n_texts), "n_tokens": n_tok,
                   "layer_convention": "0 = embeddings; l = output of block l-1 (before the final norm)"}
    table.insert(3, "representation", rep)
    summary.update({
        "representation": rep, "skip_first": bool(p["skip_first"]) and rep != "vectors",
        "definitions": {name: ESTIMATORS[name][1] for name in est},
        "bootstrap": ("percentile intervals over points with the neighbour graph fixed (kNN estimators), "
                      "over pairs (cosine); normal interval from a row bootstrap (SVD); none for PCA"),
    })
    return table, summary


def _panel(estimator: str) -> int:
    if estimator in ("svd", "cosine"):
        return 1
    if estimator.startswith("pca") or estimator == "participation_ratio":
        return 3
    return 2


def figure_geometry(result) -> go.Figure:
    """Three panels over depth (layer / n_layers): anisotropy, kNN intrinsic dimension, linear dimension.
    One line per (model, estimator); several models overlay when their tables are concatenated."""
    t = result.table
    use_depth = t["depth"].notna().any()
    x_col = "depth" if use_depth else "layer"
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "Anisotropy", "Intrinsic dimension (kNN)", "Linear dimension (PCA)"))
    dash = {}
    for (model, est), g in t.groupby(["model", "estimator"], sort=False):
        g = g.sort_values("layer")
        col = _panel(est)
        dash.setdefault(model, ["solid", "dash", "dot", "dashdot", "longdash"][len(dash) % 5])
        err = None
        if g["ci_low"].notna().any():
            err = dict(type="data", symmetric=False, array=(g["ci_high"] - g["value"]).to_numpy(),
                       arrayminus=(g["value"] - g["ci_low"]).to_numpy(), thickness=1, width=2)
        fig.add_trace(go.Scatter(
            x=g[x_col], y=g["value"], error_y=err, mode="lines+markers", name=f"{model} · {est}",
            line=dict(dash=dash[model]), legendgroup=f"{model}·{est}",
            customdata=np.stack([g["layer"], g["ci_low"], g["ci_high"], g["n_points"],
                                 g["n_duplicates_removed"]], axis=1),
            hovertemplate=(f"<b>{model}</b> · {est}<br>layer %{{customdata[0]}}<br>value %{{y:.4g}}"
                           "<br>CI [%{customdata[1]:.4g}, %{customdata[2]:.4g}]<br>n %{customdata[3]}"
                           ", duplicates removed %{customdata[4]}<extra></extra>")),
            row=1, col=col)
    xtitle = "depth (layer / n_layers)" if use_depth else "layer"
    fig.update_xaxes(title_text=xtitle)
    fig.update_yaxes(title_text="anisotropy", row=1, col=1)
    fig.update_yaxes(title_text="dimension", row=1, col=2)
    fig.update_yaxes(title_text="dimension", row=1, col=3)
    s = result.summary or {}
    bits = [f"{s.get('representation', '?')} representations"]
    if s.get("n_texts"):
        bits.append(f"{s['n_texts']} texts, {s.get('n_tokens', '?')} tokens")
    fig.update_layout(height=420, template="plotly_white", margin=dict(t=60, l=50, r=20, b=50),
                      title="Geometry per layer (" + "; ".join(bits) + ")")
    return fig


# ----------------------------------------------------------------------------- projection


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
        model, dataset, entry = _entry(ctx)
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
    if method == "pca":
        Y, ratios = _pca_2d(X, sub)
        summary["explained_variance_ratio"] = ratios
    else:
        Y = _umap_2d(X if sub is None else X[sub], p, ctx.seed)
    shown = meta if sub is None else meta.iloc[sub].reset_index(drop=True)
    table = pd.concat([pd.DataFrame({"x": Y[:, 0], "y": Y[:, 1]}), shown.reset_index(drop=True)], axis=1)
    color = str(p["color"]) or default_color
    if color not in table.columns:
        raise WorkbenchError(f"Cannot colour by {color!r}; columns are {[c for c in table.columns if c not in ('x', 'y', 'hover')]}.")
    summary.update({"method": method, "representation": rep, "skip_first": skip, "color": color,
                    "n_total": int(n_total), "n_shown": int(len(table)), "downsampled": sub is not None})
    return table, summary


def figure_projection(result) -> go.Figure:
    t = result.table
    s = result.summary or {}
    color = s.get("color") or "x"
    col = t[color] if color in t.columns else None
    fig = go.Figure()
    hover = t["hover"] if "hover" in t.columns else None
    numeric = col is not None and pd.api.types.is_numeric_dtype(col) and (col.nunique() > 20 or color in ("position", "index"))
    if col is None or numeric:
        fig.add_trace(go.Scattergl(
            x=t["x"], y=t["y"], mode="markers", text=hover, hovertemplate="%{text}<extra></extra>",
            marker=dict(size=4, color=None if col is None else col, colorscale="Viridis", showscale=col is not None,
                        colorbar=dict(title=color), opacity=0.75)))
    else:
        cats = col.astype(str)
        top = cats.value_counts().index[:20]
        cats = cats.where(cats.isin(top), "other")
        for c in list(top) + (["other"] if (cats == "other").any() else []):
            m = (cats == c).to_numpy()
            fig.add_trace(go.Scattergl(x=t["x"][m], y=t["y"][m], mode="markers", name=_short(c, 30),
                                       text=None if hover is None else hover[m],
                                       hovertemplate="%{text}<extra></extra>", marker=dict(size=4, opacity=0.75)))
    method = s.get("method", "?").upper()
    ratios = s.get("explained_variance_ratio")
    xl, yl = (f"PC1 ({ratios[0]:.1%})", f"PC2 ({ratios[1]:.1%})") if ratios else (f"{method} 1", f"{method} 2")
    where = f"layer {s['layer']}" if s.get("layer") is not None else "vectors"
    note = f", {s.get('n_shown')} of {s.get('n_total')} points (seeded subsample)" if s.get("downsampled") else ""
    fig.update_layout(template="plotly_white", height=560, xaxis_title=xl, yaxis_title=yl,
                      title=f"{method} of {s.get('representation', '')} representations, {where}, colour: {color}{note}")
    return fig


def register_all() -> None:
    from workbench.analysis import AnalysisSpec, register

    from .results_tables import TABLES

    register(AnalysisSpec(
        name="geometry",
        title="Geometry: anisotropy and intrinsic dimension",
        question="How anisotropic are the representations at each layer, and how many dimensions do they really use?",
        run=run_geometry, figure=figure_geometry, params=dict(GEOMETRY_PARAMS),
        inputs=("model", "vectors"), page="pages/4_Geometry.py", readme_tables=TABLES))
    register(AnalysisSpec(
        name="projection",
        title="2-D map of one layer (PCA / UMAP)",
        question="What does one layer's representation cloud look like in two dimensions, coloured by position, token or label?",
        run=run_projection, figure=figure_projection, params=dict(PROJECTION_PARAMS),
        inputs=("model", "vectors"), page="pages/4_Geometry.py"))
