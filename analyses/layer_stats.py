"""layer_stats: per-layer summary statistics of the residual stream.

Per layer l = 0..L (0 = embeddings), over every stored token of the dataset:

- ``mean_norm``: mean L2 norm of the residual vector;
- ``cos_prev``: mean cosine similarity between a token's residual at layer l and at layer l-1
  (how much one block changes the direction; NaN at layer 0);
- ``top_pc_variance``: the share of variance on the first principal direction of the centred token
  vectors, σ₁²/Σσᵢ² (the SVD anisotropy of Razzhigaev et al.; the geometry analysis has it with
  confidence intervals), from the exact scatter matrix accumulated in float64 shard by shard.

Streams the cache entry shard by shard: memory is one shard plus a D×D matrix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.geometry.spectrum import covariance_eigenvalues
from workbench.analysis import AnalysisSpec, Param, RunContext, register
from workbench.results import Result


def _chunks(layers, entry, hooks, layer: int, keep):
    """The layer's token vectors as float32 chunks (one per shard), first positions dropped if asked."""
    if layers is not None:
        yield np.asarray(layers[layer], dtype=np.float32)
        return
    start = 0
    for _, arr in entry.iter_shards(hooks[layer]):
        x = np.asarray(arr, dtype=np.float32)
        if keep is not None:
            x = x[keep[start:start + len(x)]]
            start += len(arr)
        yield x


def layer_statistics(layers: list[np.ndarray] | None = None, entry=None, hooks: list[str] | None = None,
                     skip_first: bool = False) -> pd.DataFrame:
    """Per-layer statistics from in-memory arrays ``layers[l]: [n_tokens, D]`` or a cache entry.

    Streams shard by shard: the spectrum is the geometry back-end's streamed float64 scatter matrix,
    norms and cosines a second pass over the memory-mapped shards.
    """
    n_layers = len(layers) if layers is not None else len(hooks)
    # drop the first position of every text (BOS / attention-sink "massive activations")
    keep = entry.position_ids() != 0 if (entry is not None and skip_first) else None
    rows = []
    for layer in range(n_layers):
        eig = covariance_eigenvalues(_chunks(layers, entry, hooks, layer, keep))
        norm_sum, cos_sum, count = 0.0, 0.0, 0
        previous = _chunks(layers, entry, hooks, layer - 1, keep) if layer > 0 else None
        for x in _chunks(layers, entry, hooks, layer, keep):
            norms = np.linalg.norm(x, axis=1)
            norm_sum += float(norms.sum())
            count += len(x)
            if previous is not None:
                prev = next(previous)
                denom = np.maximum(norms * np.linalg.norm(prev, axis=1), 1e-12)
                cos_sum += float(((x * prev).sum(1) / denom).sum())
        rows.append({
            "layer": layer,
            "depth": layer / max(n_layers - 1, 1),
            "mean_norm": norm_sum / count,
            "cos_prev": cos_sum / count if layer > 0 else np.nan,
            "top_pc_variance": float(eig[0] / eig.sum()) if eig.sum() > 0 else np.nan,
            "n_tokens": count,
        })
    return pd.DataFrame(rows)


def run(ctx: RunContext):
    model = ctx.require_model()
    dataset = ctx.require_dataset().subset(ctx.params["max_texts"])
    hooks = model.resid_hooks()
    entry = ctx.activations(hooks, max_length=ctx.params["max_length"], dataset=dataset)
    table = layer_statistics(entry=entry, hooks=hooks, skip_first=bool(ctx.params["skip_first"]))
    table.insert(0, "model", model.name)
    summary = {"n_texts": entry.n_texts, "n_tokens": int(table["n_tokens"].iloc[0]),
               "top_pc_variance_definition": "sigma_1^2 / sum sigma_i^2 of centred token vectors",
               "cos_prev_definition": "mean cosine(h_l, h_{l-1}) over tokens, uncentred"}
    return table, summary


def figure(result: Result) -> go.Figure:
    table = result.table
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "Mean residual norm", "Cosine to previous layer", "Variance on top PC (σ₁²/Σσᵢ²)"))
    for model_name, group in table.groupby("model", sort=False):
        for col, name in enumerate(["mean_norm", "cos_prev", "top_pc_variance"], start=1):
            fig.add_trace(go.Scatter(x=group["layer"], y=group[name], mode="lines+markers", name=model_name,
                                     legendgroup=model_name, showlegend=col == 1,
                                     hovertemplate=f"layer %{{x}}<br>{name} %{{y:.4g}}<extra>{model_name}</extra>"),
                          row=1, col=col)
    fig.update_xaxes(title_text="layer (0 = embeddings)")
    fig.update_layout(height=380, margin=dict(t=50, l=50, r=20, b=50), template="plotly_white",
                      title=f"Layer statistics ({result.summary.get('n_texts', '?')} texts, "
                            f"{result.summary.get('n_tokens', '?')} tokens)")
    return fig


register(AnalysisSpec(
    name="layer_stats",
    title="Layer statistics",
    question="How do the size and direction of the residual stream change from layer to layer?",
    run=run,
    figure=figure,
    params={"max_texts": Param(64, "use the first N texts of the dataset", min=1),
            "max_length": Param(128, "tokens per text (longer texts are truncated)", min=1),
            "skip_first": Param(False, "leave out the first position of each text (BOS / attention sink)")},
    inputs=("model",),
    page="pages/1_Layer_stats.py",
))
