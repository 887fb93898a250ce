"""layer_stats: per-layer summary statistics of the residual stream.

Per layer l = 0..L (0 = embeddings), over every stored token of the dataset:

- ``mean_norm``: mean L2 norm of the residual vector;
- ``cos_prev``: mean cosine similarity between a token's residual at layer l and at layer l-1
  (how much one block changes the direction; NaN at layer 0);
- ``top_pc_variance``: the share of variance on the first principal direction of the centred token
  vectors, σ₁²/Σσᵢ² (the SVD anisotropy of Razzhigaev et al.; the geometry analysis has it with
  confidence intervals; docs/methods.md, "Anisotropy and intrinsic dimension").

``top_pc_variance`` is :func:`workbench.stats.top_pc_share`: the streamed scatter matrix on its
``precision="float32"`` path (float32 products of chunks of at most 8192 rows, summed in float64:
about half the time of the float64 path, ~1e-6 relative), then only its top eigenvector (LAPACK
``syevr`` with a subset, not the full eigendecomposition); the share is that direction's variance
over the trace, both summed in float64 in a second O(N D) pass, which makes it exact to float64
rounding (the Rayleigh quotient's error is second order in the float32 eigenvector's).

Streams the cache entry shard by shard (``CacheEntry.layer_chunks``): memory is one shard plus a D×D
matrix.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis import AnalysisSpec, Param, RunContext, register
from workbench.results import Result
from workbench.stats import top_pc_share


def layer_statistics(layers: list[np.ndarray] | None = None, entry=None, hooks: list[str] | None = None,
                     skip_first: bool = False) -> pd.DataFrame:
    """Per-layer statistics from in-memory arrays ``layers[l]: [n_tokens, D]`` or a cache entry.

    ``skip_first`` leaves out position 0 of every text of the entry (BOS / attention-sink "massive
    activations"); in-memory arrays are used as given. Streams shard by shard: the spectrum from the
    float32-product scatter matrix (see the module docstring), norms and cosines a further pass over
    the memory-mapped shards.
    """
    n_layers = len(layers) if layers is not None else len(hooks)

    def chunks(layer: int):
        if layers is not None:
            return iter([np.asarray(layers[layer], dtype=np.float32)])
        return entry.layer_chunks(hooks[layer], skip_first=skip_first)

    rows = []
    prev_norms: list[np.ndarray] = []  # the previous layer's token norms, chunk by chunk
    for layer in range(n_layers):
        share, _ = top_pc_share(partial(chunks, layer), precision="float32")
        norm_sum, cos_sum, count = 0.0, 0.0, 0
        previous = chunks(layer - 1) if layer > 0 else None
        layer_norms = []
        for j, x in enumerate(chunks(layer)):
            norms = np.linalg.norm(x, axis=1)
            layer_norms.append(norms)
            norm_sum += float(norms.sum())
            count += len(x)
            if previous is not None:
                prev = next(previous)
                denom = np.maximum(norms * prev_norms[j], 1e-12)
                cos_sum += float(((x * prev).sum(1) / denom).sum())
        prev_norms = layer_norms
        rows.append({
            "layer": layer,
            "depth": layer / max(n_layers - 1, 1),
            "mean_norm": norm_sum / count,
            "cos_prev": cos_sum / count if layer > 0 else np.nan,
            "top_pc_variance": share,
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


PARAMS = {"max_texts": Param(64, "use the first N texts of the dataset", min=1),
          "max_length": Param(128, "tokens per text (longer texts are truncated)", min=1),
          "skip_first": Param(False, "leave out the first position of each text (BOS / attention sink)")}

register(AnalysisSpec(
    name="layer_stats", title="Layer statistics",
    question="How do the size and direction of the residual stream change from layer to layer?",
    run=run, figure=figure, params=PARAMS, inputs=("model",), page="app_pages/1_Layer_stats.py"))
