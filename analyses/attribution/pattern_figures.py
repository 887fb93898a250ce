"""Figures of attention_patterns: the layer x head grid of small patterns, one head's pattern large,
and the per-head scores (docs/methods.md, "Attention, DLA and patching")."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.errors import WorkbenchError

from .patterns import _HEAD, SCORES

#: cells of the grid above which its hover leaves out the (layer, head, query, key) of each cell
_HOVER_CELLS = 150_000


def _shown(result) -> tuple[np.ndarray, list[str], list[int]]:
    shown = result.summary["pattern"]
    return np.asarray(shown["attention"], dtype=np.float64), list(shown["tokens"]), list(shown["layers"])


def pattern_grid(result) -> go.Figure:
    """Every head's pattern of the drawn text as one mosaic: a row of small query x key patterns per
    layer, a column per head (axis ticks name them; hover gives layer, head, query and key), and a
    clickable marker (trace 1, ``customdata`` the head label) in the middle of each pattern."""
    attention, tokens, layers = _shown(result)
    n_layers, n_heads, T, _ = attention.shape
    size = T + 1  # one blank row and column between patterns
    z = np.full((n_layers * size - 1, n_heads * size - 1), np.nan)
    for i in range(n_layers):
        for h in range(n_heads):
            z[i * size:i * size + T, h * size:h * size + T] = np.where(np.tri(T, dtype=bool), attention[i, h], np.nan)
    trace = dict(z=z, colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="attention"))
    if z.size <= _HOVER_CELLS:
        rows, cols = np.indices(z.shape)
        trace["customdata"] = np.stack([np.asarray(layers)[np.minimum(rows // size, n_layers - 1)], cols // size,
                                        rows % size, cols % size], axis=-1)
        trace["hovertemplate"] = ("L%{customdata[0]}H%{customdata[1]}<br>query %{customdata[2]} → key "
                                  "%{customdata[3]}<br>attention %{z:.3f}<extra></extra>")
    fig = go.Figure(go.Heatmap(**trace))
    # one marker in the middle of each pattern: a point to click (plotly heatmaps give no selection
    # events; a marker within the hover distance wins over the heatmap cell under it)
    labels = [f"L{layer}H{h}" for layer in layers for h in range(n_heads)]
    fig.add_trace(go.Scatter(
        x=[h * size + (T - 1) / 2 for _ in layers for h in range(n_heads)],
        y=[i * size + (T - 1) / 2 for i in range(n_layers) for _ in range(n_heads)],
        mode="markers", text=labels, customdata=labels, name="heads", showlegend=False,
        marker=dict(symbol="square-open", size=14, color="rgba(120,120,120,0.35)", line=dict(width=1)),
        hovertemplate="%{text}: click to open it large<extra></extra>"))
    fig.update_layout(clickmode="event+select", dragmode=False)
    fig.update_xaxes(tickvals=[h * size + (T - 1) / 2 for h in range(n_heads)], ticktext=[f"H{h}" for h in range(n_heads)],
                     side="top", showgrid=False, zeroline=False, constrain="domain", range=[-0.5, z.shape[1] - 0.5])
    fig.update_yaxes(tickvals=[i * size + (T - 1) / 2 for i in range(n_layers)], ticktext=[f"L{l}" for l in layers],
                     autorange="reversed", showgrid=False, zeroline=False, scaleanchor="x", constrain="domain")
    text = "".join(tokens).replace("␣", " ").replace("↵", " ").replace("⇥", " ")
    fig.update_layout(title=dict(text=f"Attention patterns of prompt {result.summary['pattern']['text']}: "
                                      f"{text[:70] + ('…' if len(text) > 70 else '')}", font=dict(size=15)),
                      plot_bgcolor="white",
                      height=min(3000, 160 + 70 * n_layers), width=min(1400, 200 + 90 * n_heads))
    return fig


def head_figure(result, head: str | None = None) -> go.Figure:
    """One head's pattern large: query x key heatmap with the tokens as labels (whitespace visible)."""
    label = head or result.summary["head"]
    match = _HEAD.match(label)
    attention, tokens, layers = _shown(result)
    if match is None or int(match.group(1)) not in layers or int(match.group(2)) >= attention.shape[1]:
        raise WorkbenchError(f"head {label!r} is not in this result (layers {layers}, heads 0..{attention.shape[1] - 1}).")
    layer, h = int(match.group(1)), int(match.group(2))
    pattern = attention[layers.index(layer), h]
    T = len(tokens)
    z = np.where(np.tri(T, dtype=bool), pattern, np.nan)
    ticks = [f"{t} ·{i}" for i, t in enumerate(tokens)]
    names = np.asarray(ticks, dtype=object)
    custom = np.stack(np.broadcast_arrays(names[:, None], names[None, :]), axis=-1)
    fig = go.Figure(go.Heatmap(z=z, colorscale="Blues", zmin=0, zmax=1, customdata=custom,
                               colorbar=dict(title="attention"),
                               hovertemplate="query %{customdata[0]}<br>key %{customdata[1]}<br>attention "
                                             "%{z:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="key", tickvals=list(range(T)), ticktext=ticks, tickangle=-60, showgrid=False)
    fig.update_yaxes(title_text="query", tickvals=list(range(T)), ticktext=ticks, autorange="reversed", showgrid=False)
    row = result.table[result.table["label"] == label]
    scores = "" if row.empty else " — " + ", ".join(f"{c[:-6].replace('_', '-')} {row.iloc[0][c]:.2f}" for c in SCORES
                                                     if np.isfinite(row.iloc[0][c]))
    side = max(500, min(1200, 160 + 22 * T))
    fig.update_layout(title=f"{label}{scores}", height=side, width=side + 120, plot_bgcolor="white")
    return fig


def scores_figure(result) -> go.Figure:
    """Heatmaps (layer x head) of every score of :data:`SCORES` over the prompt set."""
    table = result.table
    layers = sorted(table["layer"].unique())
    n_heads = int(table["head"].max()) + 1
    fig = make_subplots(rows=1, cols=len(SCORES), subplot_titles=[c[:-6].replace("_", "-") for c in SCORES],
                        horizontal_spacing=0.03)
    for k, column in enumerate(SCORES, start=1):
        grid = table.pivot(index="layer", columns="head", values=column).reindex(index=layers, columns=range(n_heads))
        fig.add_trace(go.Heatmap(z=grid.to_numpy(dtype=float), x=list(range(n_heads)), y=[f"L{l}" for l in layers],
                                 zmin=0, zmax=1, colorscale="Viridis", showscale=k == len(SCORES),
                                 hovertemplate="%{y}H%{x}<br>" + column + " %{z:.3f}<extra></extra>"),
                      row=1, col=k)
        fig.update_xaxes(title_text="head", row=1, col=k)
        fig.update_yaxes(autorange="reversed", row=1, col=k, showticklabels=k == 1)
    s = result.summary
    fig.update_layout(title=f"Head scores over {s['n_texts']} prompt(s) ({s['source']}); top induction: "
                            f"{', '.join(s.get('top_induction', [])[:3]) or 'none'}",
                      height=260 + 18 * len(layers), width=1400)
    return fig
