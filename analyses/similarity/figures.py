"""Figures of ``layer_similarity``: heatmaps of every pair-of-layers measure (the diagonal marked within a
model, each row's best match marked between two models) and the linearity of consecutive layers."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.errors import WorkbenchError
from workbench.stats.similarity import CONSECUTIVE_METRICS, PAIR_METRICS


def _matrix(t, metric: str):
    part = t[t["metric"] == metric]
    return part.pivot_table(index="layer", columns="other_layer", values="value", aggfunc="first")


def figure_heatmaps(result, metrics: list[str] | None = None) -> go.Figure:
    """One heatmap per pair measure (rows: this model's layers, columns: the other's or its own)."""
    t, s = result.table, result.summary or {}
    present = [m for m in PAIR_METRICS if m in set(t["metric"])]
    metrics = [m for m in (metrics or present) if m in present]
    if not metrics:
        raise WorkbenchError(f"no pair-of-layers measure in this result; it has {sorted(set(t['metric']))}.")
    model, other = t["model"].iloc[0], t["other_model"].iloc[0]
    two = (s.get("other_model") or None) is not None
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, horizontal_spacing=0.08)
    for k, metric in enumerate(metrics):
        M = _matrix(t, metric)
        fig.add_trace(go.Heatmap(z=M.to_numpy(), x=M.columns, y=M.index, colorscale="Viridis", zmin=0, zmax=1,
                                 showscale=k == len(metrics) - 1, colorbar=dict(title="similarity"),
                                 hovertemplate=f"{model} layer %{{y}} · {other} layer %{{x}}<br>{metric} "
                                               "%{z:.4f}<extra></extra>"), row=1, col=k + 1)
        if two:
            best = M.to_numpy()
            cols = np.where(np.isfinite(best).any(axis=1), np.nanargmax(np.nan_to_num(best, nan=-np.inf), axis=1), 0)
            fig.add_trace(go.Scatter(x=M.columns[cols], y=M.index, mode="lines+markers", name="best match",
                                     showlegend=k == 0, line=dict(color="red", width=1),
                                     marker=dict(symbol="x", size=7, color="red")), row=1, col=k + 1)
        else:
            lo, hi = min(M.index.min(), M.columns.min()), max(M.index.max(), M.columns.max())
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="diagonal", showlegend=k == 0,
                                     line=dict(color="white", width=1, dash="dot")), row=1, col=k + 1)
        fig.update_xaxes(title_text=f"{other} layer", row=1, col=k + 1)
        fig.update_yaxes(title_text=f"{model} layer" if k == 0 else None, row=1, col=k + 1)
    rep = s.get("representation", "?")
    fig.update_layout(template="plotly_white", height=480, legend=dict(orientation="h", y=-0.2),
                      title=f"Layer similarity: {model} vs {other} ({rep}, {s.get('n_rows', '?')} rows)")
    return fig


def figure_linearity(result) -> go.Figure:
    """The linearity score of each pair of consecutive layers (with and without the residual)."""
    t = result.table
    part = t[t["metric"].isin(CONSECUTIVE_METRICS)]
    if part.empty:
        raise WorkbenchError("no linearity score in this result (two models, or not asked for in metrics).")
    fig = go.Figure()
    for (model, metric), g in part.groupby(["model", "metric"], sort=False):
        fig.add_trace(go.Scatter(x=g["layer"], y=g["value"], mode="lines+markers", name=f"{model} · {metric}",
                                 customdata=g["other_layer"],
                                 hovertemplate="layer %{x} → %{customdata}<br>%{y:.4f}<extra></extra>"))
    fig.update_layout(template="plotly_white", height=380, xaxis_title="layer l (score of l → l + 1)",
                      yaxis_title="linear-fit similarity", title="Linearity of consecutive layers (LLM-Microscope)")
    return fig
