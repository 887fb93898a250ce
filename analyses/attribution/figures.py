"""Figures of logit_attribution, activation_patching and attribution_patching (plotly), in the style of
TransformerLens's patching notebooks: diverging heatmaps centred on 0, layers down, positions
(``tok_i``) or heads across (docs/methods.md, "Attention, DLA and patching")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .dla import layer_totals

DIVERGING = "RdBu"


def _mean_by(table: pd.DataFrame, kinds: tuple[str, ...]) -> pd.DataFrame:
    """Mean attribution over the scored positions, one row per part of the given kinds."""
    rows = table[table["kind"].isin(kinds)]
    return rows.groupby(["kind", "layer", "head", "label"], sort=False, as_index=False)["attribution"].mean()


def _heads_grid(parts: pd.DataFrame) -> np.ndarray:
    heads = parts[parts["kind"] == "head"]
    grid = np.full((int(heads["layer"].max()) + 1, int(heads["head"].max()) + 1), np.nan)
    grid[heads["layer"].to_numpy(), heads["head"].to_numpy()] = heads["attribution"].to_numpy()
    return grid


def _heatmap(z: np.ndarray, x, y, name: str, showscale: bool = True, zmax: float | None = None) -> go.Heatmap:
    bound = zmax if zmax is not None else (float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0) or 1.0
    return go.Heatmap(z=z, x=x, y=y, colorscale=DIVERGING, zmid=0, zmin=-bound, zmax=bound, showscale=showscale,
                      hovertemplate="%{y}, %{x}<br>" + name + " %{z:.4g}<extra></extra>")


def dla_heads_figure(result) -> go.Figure:
    """Direct logit attribution of each head (layer x head), mean over the scored positions."""
    grid = _heads_grid(_mean_by(result.table, ("head",)))
    fig = go.Figure(_heatmap(grid, list(range(grid.shape[1])), [f"L{l}" for l in range(grid.shape[0])],
                             "attribution"))
    fig.update_xaxes(title_text="head")
    fig.update_yaxes(title_text="layer", autorange="reversed")
    fig.update_layout(title=_dla_title(result), height=300 + 16 * grid.shape[0], width=420 + 30 * grid.shape[1])
    return fig


def _layer_series(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    totals = layer_totals(table)
    per_layer = pd.DataFrame([{"layer": int(k.split()[0][1:]), "sublayer": k.split()[1], "attribution": v}
                              for k, v in totals.items()])
    acc = _mean_by(table, ("accumulated",))
    return per_layer, acc[acc["label"].str.endswith(" pre") | (acc["label"] == "final")]


def dla_layers_figure(result) -> go.Figure:
    """Per layer: the attention and MLP sublayers' attributions (bars) and the accumulated residual
    stream before each block, read through the frozen final norm (line)."""
    fig = go.Figure()
    _add_layer_traces(fig, result.table)
    fig.update_layout(title=_dla_title(result), barmode="group", xaxis_title="layer", yaxis_title="attribution",
                      height=450, width=900)
    return fig


def _add_layer_traces(fig: go.Figure, table: pd.DataFrame, **where) -> None:
    per_layer, acc = _layer_series(table)
    for sublayer, color in (("attn", "#1f77b4"), ("MLP", "#ff7f0e")):
        part = per_layer[per_layer["sublayer"] == sublayer]
        fig.add_trace(go.Bar(x=part["layer"], y=part["attribution"], name=sublayer, marker_color=color), **where)
    fig.add_trace(go.Scatter(x=acc["layer"], y=acc["attribution"], mode="lines+markers", name="accumulated (before block)",
                             line=dict(color="black")), **where)


def dla_figure(result) -> go.Figure:
    """Both views of direct logit attribution: heads (layer x head) and layers (bars + accumulated)."""
    grid = _heads_grid(_mean_by(result.table, ("head",)))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.14,
                        subplot_titles=("Heads (direct effect on the logit difference)", "Layers"))
    heat = _heatmap(grid, list(range(grid.shape[1])), [f"L{l}" for l in range(grid.shape[0])], "attribution")
    # the heads' colour bar in the gap between the panels, clear of the layers panel's axis
    heat.colorbar = dict(x=fig.layout.xaxis.domain[1] + 0.01, xanchor="left", len=0.9, thickness=14)
    fig.add_trace(heat, row=1, col=1)
    _add_layer_traces(fig, result.table, row=1, col=2)
    fig.update_yaxes(autorange="reversed", title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="head", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    fig.update_layout(title=_dla_title(result), barmode="group", height=max(480, 300 + 14 * grid.shape[0]),
                      width=1300, legend=dict(orientation="h", y=-0.15))
    return fig


def _dla_title(result) -> str:
    s = result.summary
    return (f"Direct logit attribution ({s.get('metric', 'logit difference')}: {s.get('logit_diff', float('nan')):.3f}, "
            f"{s.get('n_positions', '?')} position(s)); parts sum to it within {s.get('sum_error', float('nan')):.1e}")


# ---- patching ----------------------------------------------------------------------------------
def patching_grid(table: pd.DataFrame, column: str) -> tuple[np.ndarray, list, list[str], str]:
    """A patching table as a heatmap: ``(z, x, y, x title)``: layers down and positions across, heads
    across (z over all positions), or one row per head and positions across (z per position)."""
    per_pos = bool((table["position"] >= 0).any())
    heads = bool((table["head"] >= 0).any())
    if per_pos:
        x = table.drop_duplicates("position").sort_values("position")["token"].tolist()
        rows = table.assign(row=[f"L{l}H{h}" if h >= 0 else f"L{l}" for l, h in zip(table["layer"], table["head"])])
        grid = rows.pivot_table(index="row", columns="position", values=column, sort=False)
        return grid.to_numpy(dtype=float), x, grid.index.tolist(), "position"
    if heads:
        grid = table.pivot_table(index="layer", columns="head", values=column)
        return grid.to_numpy(dtype=float), grid.columns.tolist(), [f"L{l}" for l in grid.index], "head"
    grid = table.pivot_table(index="layer", values=column)
    return grid.to_numpy(dtype=float), ["all positions"], [f"L{l}" for l in grid.index], ""


def patching_figure(result, column: str = "effect") -> go.Figure:
    """The patching grid (normalised metric: 0 = corrupted, 1 = clean)."""
    z, x, y, x_title = patching_grid(result.table, column)
    # the colour range is the grid's own (symmetric about 0), as in TransformerLens's patching plots:
    # a head-level grid rarely comes near 1 and would read as blank on a fixed [-1, 1]
    fig = go.Figure(_heatmap(z, x, y, "normalised metric"))
    fig.update_xaxes(title_text=x_title, tickangle=-45 if x_title == "position" else 0)
    fig.update_yaxes(title_text="layer", autorange="reversed")
    s = result.summary
    fig.update_layout(title=f"Activation patching of {s['patch']} ({s['n_prompts']} prompt pair(s), {s['metric']}: "
                            f"clean {s['clean_metric']:.3f}, corrupted {s['corrupted_metric']:.3f})",
                      height=max(420, 200 + 16 * len(y)), width=max(700, 260 + 34 * len(x)))
    return fig


def attribution_figure(result) -> go.Figure:
    """Attribution patching beside exact activation patching (when run) and their scatter."""
    table, s = result.table, result.summary
    exact = "exact" in table and table["exact"].notna().any()
    panels = [("attribution", "Attribution patching")] + ([("exact", "Activation patching")] if exact else [])
    fig = make_subplots(rows=1, cols=len(panels) + int(exact), horizontal_spacing=0.08,
                        subplot_titles=[t for _, t in panels] + (["Attribution vs exact"] if exact else []))
    values = np.abs(table[[c for c, _ in panels]].to_numpy(dtype=float))
    bound = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0  # one range for both grids
    for k, (column, _) in enumerate(panels, start=1):
        z, x, y, x_title = patching_grid(table, column)
        fig.add_trace(_heatmap(z, x, y, column, showscale=k == 1, zmax=bound), row=1, col=k)
        fig.update_yaxes(autorange="reversed", row=1, col=k)
        fig.update_xaxes(title_text=x_title, row=1, col=k)
    if exact:
        fig.add_trace(go.Scatter(x=table["exact"], y=table["attribution"], mode="markers", text=table["label"],
                                 hovertemplate="%{text}<br>exact %{x:.3f}<br>attribution %{y:.3f}<extra></extra>",
                                 showlegend=False), row=1, col=len(panels) + 1)
        fig.update_xaxes(title_text="exact", row=1, col=len(panels) + 1)
        fig.update_yaxes(title_text="attribution", row=1, col=len(panels) + 1)
    c = s.get("comparison") or {}
    extra = ""
    if c.get("pearson") is not None and c.get("speedup") is not None:
        extra = f"; Pearson {c['pearson']:.3f}, Spearman {c['spearman']:.3f}, {c['speedup']:.1f}× faster"
    fig.update_layout(title=f"Attribution patching of {s['patch']} ({s['n_prompts']} prompt pair(s)){extra}",
                      height=max(440, 220 + 14 * len(y)), width=480 * (len(panels) + int(exact)))
    return fig
