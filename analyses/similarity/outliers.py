"""The ``outliers`` analysis: per layer, the hidden dimensions far out of line across tokens, how
persistent each is across layers, and how its value depends on position (Luo et al. 2021; docs/methods.md,
"Outliers, whitening and layer similarity"). The statistics are :mod:`workbench.stats.outliers`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis import Param
from workbench.errors import WorkbenchError
from workbench.stats import check_array, dimension_stats, layer_request, parse_layers
from workbench.stats.outliers import DEFAULT_THRESHOLD, RULES

RULE_DEFINITIONS = {
    "sigma": "|m_d - mean(m)| > threshold * std(m), m = the layer's average token vector (Luo et al.'s 3-sigma rule)",
    "extreme_share": "share of tokens whose largest or smallest coordinate is d > threshold",
}


def _layers_format(spec: str) -> str:
    layer_request(spec)
    return spec


OUTLIER_PARAMS = {
    "outlier_rule": Param("sigma", "sigma: |average-vector value - mean| > threshold x std (Luo et al.); "
                          "extreme_share: share of tokens whose max or min coordinate it is > threshold", choices=RULES),
    "outlier_threshold": Param(None, "threshold of the rule (blank: 3 for sigma, 0.5 for extreme_share)", type=float,
                               min=0, closed="neither"),
    "skip_first": Param(False, "leave out position 0 of every text (BOS / [CLS], where massive activations sit)"),
    "max_texts": Param(64, "use the first N texts of the dataset (0 = all)", min=0),
    "max_length": Param(128, "tokens per text (longer texts are truncated)", min=1),
    "layers": Param("", "comma-separated layer numbers, blank or 'all' = all", check=_layers_format,
                    allowed="comma-separated layer numbers such as 0,3,-1, or blank or 'all' for all"),
    "detail_dims": Param(8, "dimensions whose value-by-position profile is kept for the detail view (most "
                         "persistent outliers first)", min=1, max=64),
}


def _layer_inputs(ctx):
    """[(layer, depth, X [N, D], positions [N] or None)] of the run: every chosen layer's token rows, or the
    user matrix as one layer without positions."""
    p = ctx.params
    if ctx.vectors is not None:
        X = check_array(ctx.vectors, "vectors", min_rows=2)
        return "vectors", None, [(0, float("nan"), lambda: X, None)], {"input": "vectors"}
    model = ctx.require_model()
    ds = ctx.require_dataset()
    ds = ds.subset(int(p["max_texts"])) if int(p["max_texts"]) > 0 else ds
    hooks = model.resid_hooks()
    entry = ctx.activations(hooks, max_length=int(p["max_length"]), dataset=ds)
    skip = bool(p["skip_first"])
    pos = entry.position_ids()
    pos = pos[pos != 0] if skip else pos
    layers = parse_layers(p["layers"], model.n_layers)
    items = [(lid, lid / model.n_layers, (lambda h=hooks[lid]: entry.layer(h, skip_first=skip)), pos) for lid in layers]
    info = {"input": "model", "n_layers": model.n_layers, "n_texts": int(entry.n_texts), "n_tokens": int(pos.size),
            "max_position": int(pos.max()) if pos.size else 0}
    return model.name, model.n_layers, items, info


def run_outliers(ctx):
    p = ctx.params
    rule = p["outlier_rule"]
    thr = DEFAULT_THRESHOLD[rule] if p["outlier_threshold"] is None else float(p["outlier_threshold"])
    name, n_layers, items, info = _layer_inputs(ctx)
    rows, profiles = [], {}
    for k, (lid, depth, load, pos) in enumerate(items):
        ctx.progress(k, len(items), f"layer {lid}: dimension statistics")
        st = dimension_stats(load(), pos)
        z, score = st.zscore(), st.scores(rule)
        flagged = np.zeros(st.dim, bool)
        flagged[st.outliers(rule, thr)] = True
        rows.append(pd.DataFrame({
            "model": name, "layer": lid, "depth": depth, "dim": np.arange(st.dim), "mean": st.mean, "std": st.std,
            "zscore": z, "extreme_share": st.extreme_share, "score": score, "is_outlier": flagged,
            "position_r2": st.position_r2 if st.position_r2 is not None else np.nan, "n_tokens": st.n}))
        if st.position_mean is not None:
            profiles[lid] = (st.position_mean, st.position_count)
    ctx.progress(len(items), len(items), "done")
    table = pd.concat(rows, ignore_index=True)
    persistence = table.groupby("dim")["is_outlier"].mean()
    table["persistence"] = table["dim"].map(persistence).to_numpy()
    summary = {**info, "rule": rule, "threshold": thr, "definition": RULE_DEFINITIONS[rule],
               "skip_first": bool(p["skip_first"]) and info["input"] == "model", **_findings(table, profiles, p)}
    return table, summary


def _findings(table: pd.DataFrame, profiles: dict, p: dict) -> dict:
    """Outliers per layer, the persistent ones, the positional test and the detail profiles."""
    out = table[table["is_outlier"]]
    by_layer = {int(layer): [int(d) for d in g.sort_values("score", ascending=False)["dim"]]
                for layer, g in out.groupby("layer")}
    per_dim = out.groupby("dim").agg(layers=("layer", "size"), persistence=("persistence", "first"),
                                     mean_score=("score", "mean"), position_r2=("position_r2", "mean"))
    per_dim = per_dim.sort_values(["persistence", "mean_score"], ascending=False)
    baseline = table.groupby("layer")["position_r2"].median()
    test = {"outlier_position_r2_mean": _num(out["position_r2"].mean()),
            "median_dimension_position_r2": _num(baseline.mean()),
            "definition": "position_r2 = between-position / total sum of squares of a dimension over tokens; the "
                          "baseline is the median dimension of each layer, averaged over layers"}
    detail = []
    for dim in per_dim.index[: int(p["detail_dims"])]:
        for layer, (means, counts) in profiles.items():
            detail.append({"dim": int(dim), "layer": int(layer), "mean_by_position": means[:, int(dim)].tolist(),
                           "count_by_position": counts.astype(int).tolist()})
    return {"n_outlier_dims_by_layer": {k: len(v) for k, v in by_layer.items()}, "outliers_by_layer": by_layer,
            "persistent_dims": [{"dim": int(d), **{k: _num(v) for k, v in r.items()}} for d, r in per_dim.iterrows()],
            "positional_test": test, "detail": detail}


def _num(v):
    v = float(v)
    return v if np.isfinite(v) else None


def figure_outliers(result) -> go.Figure:
    """Layers x dimensions heatmap of each dimension's score (outliers marked), and beneath it each outlier
    dimension's persistence across layers beside its positional R^2."""
    t, s = result.table, result.summary or {}
    dims = sorted(t.loc[t["is_outlier"], "dim"].unique().tolist())
    fig = make_subplots(rows=2, cols=1, row_heights=[0.62, 0.38], vertical_spacing=0.16, subplot_titles=(
        f"score per layer and dimension ({s.get('rule', '?')} rule; ✕ = outlier)",
        "outlier dimensions: persistence across layers and positional R²"))
    wide = t.pivot_table(index="layer", columns="dim", values="score", aggfunc="first")
    cap = float(np.nanpercentile(wide.to_numpy(), 99.9)) if wide.size else 1.0
    fig.add_trace(go.Heatmap(z=wide.to_numpy(), x=wide.columns, y=wide.index, colorscale="Viridis", zmin=0,
                             zmax=max(cap, s.get("threshold", 1.0)), colorbar=dict(title="score", len=0.55, y=0.75),
                             hovertemplate="layer %{y}, dim %{x}<br>score %{z:.3g}<extra></extra>"), row=1, col=1)
    flagged = t[t["is_outlier"]]
    fig.add_trace(go.Scatter(x=flagged["dim"], y=flagged["layer"], mode="markers", name="outlier",
                             marker=dict(symbol="x", size=7, color="red"), showlegend=False,
                             hovertemplate="layer %{y}, dim %{x}: outlier<extra></extra>"), row=1, col=1)
    per = t[t["dim"].isin(dims)].groupby("dim").agg(persistence=("persistence", "first"),
                                                     position_r2=("position_r2", "mean"))
    labels = [str(d) for d in per.index]
    fig.add_trace(go.Bar(x=labels, y=per["persistence"], name="persistence (share of layers)"), row=2, col=1)
    fig.add_trace(go.Bar(x=labels, y=per["position_r2"], name="positional R² (mean over layers)"), row=2, col=1)
    base = (s.get("positional_test") or {}).get("median_dimension_position_r2")
    if base is not None and labels:
        fig.add_hline(y=base, line_dash="dot", line_color="grey", row=2, col=1,
                      annotation_text="median dimension's positional R²", annotation_position="top left")
    fig.update_xaxes(title_text="dimension", row=1, col=1)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="outlier dimension", type="category", row=2, col=1)
    fig.update_layout(template="plotly_white", height=720, barmode="group", legend=dict(orientation="h", y=-0.12),
                      title=f"Outlier dimensions ({s.get('n_tokens', '?')} tokens a layer)")
    return fig


def figure_dimension(result, dim: int | None = None) -> go.Figure:
    """One dimension's mean value by position at every layer (the positional-artefact view); default the
    most persistent outlier."""
    s = result.summary or {}
    detail = s.get("detail") or []
    if not detail:
        raise WorkbenchError("this result has no per-position detail (a vectors input, or no outlier dimensions).")
    dims = list(dict.fromkeys(d["dim"] for d in detail))
    dim = dims[0] if dim is None else int(dim)
    if dim not in dims:
        raise WorkbenchError(f"dimension {dim} has no detail in this result; it has {dims} (raise detail_dims).")
    fig = go.Figure()
    rows = [d for d in detail if d["dim"] == dim]
    top = max(d["layer"] for d in rows) or 1
    for d in rows:
        y = np.asarray(d["mean_by_position"], dtype=float)
        fig.add_trace(go.Scatter(x=np.arange(y.size), y=y, mode="lines", name=f"layer {d['layer']}",
                                 line=dict(color=f"rgba({int(255 * d['layer'] / top)}, 60, {int(255 * (1 - d['layer'] / top))}, 0.85)"),
                                 hovertemplate="position %{x}<br>mean %{y:.4g}<extra>layer " + str(d["layer"]) + "</extra>"))
    r2 = result.table[(result.table["dim"] == dim)]["position_r2"].mean()
    fig.update_layout(template="plotly_white", height=460, xaxis_title="position in the text",
                      yaxis_title=f"mean value of dimension {dim}",
                      title=f"Dimension {dim} by position (positional R² {r2:.3f}, mean over layers)")
    return fig
