"""layer_stats: per-layer summary statistics of the residual stream.

Per layer l = 0..L (0 = embeddings), over every stored token of the dataset:

- ``mean_norm``: mean L2 norm of the residual vector;
- ``cos_prev``: mean cosine similarity between a token's residual at layer l and at layer l-1
  (how much one block changes the direction; NaN at layer 0);
- ``top_pc_variance``: the share of variance on the first principal direction of the centred token
  vectors, σ₁²/Σσᵢ² (the SVD anisotropy of Razzhigaev et al.), from the exact covariance accumulated
  in float64 shard by shard.

Streams the cache entry shard by shard: memory is one shard plus a D×D matrix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis import AnalysisSpec, RunContext, register
from workbench.results import Result


class CovarianceAccumulator:
    """Streaming mean and covariance of rows (float64): ``add(X [n, D])`` then ``eigenvalues()``."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = np.zeros(dim, np.float64)
        self.gram = np.zeros((dim, dim), np.float64)

    def add(self, rows: np.ndarray) -> None:
        x = np.asarray(rows, dtype=np.float64)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.gram += x.T @ x

    def covariance(self) -> np.ndarray:
        mean = self.sum / max(self.n, 1)
        return (self.gram - self.n * np.outer(mean, mean)) / max(self.n - 1, 1)

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of the covariance, descending, clipped at 0 (= σᵢ²/(n-1) of the centred data)."""
        return np.clip(np.linalg.eigvalsh(self.covariance())[::-1], 0, None)


def layer_statistics(layers: list[np.ndarray] | None = None, entry=None, hooks: list[str] | None = None,
                     skip_first: bool = False) -> pd.DataFrame:
    """Per-layer statistics from in-memory arrays ``layers[l]: [n_tokens, D]`` or a cache entry."""
    rows = []
    prev_by_shard: dict[int, np.ndarray] = {}
    n_layers = len(layers) if layers is not None else len(hooks)
    for layer in range(n_layers):
        if layers is not None:
            chunks = [np.asarray(layers[layer])]
            keep = None
        else:
            chunks = [arr for _, arr in entry.iter_shards(hooks[layer])]
            keep = None
            if skip_first:
                # drop the first position of every text (BOS / attention-sink "massive activations")
                positions = entry.position_ids()
                keep = positions != 0
        acc = None
        norm_sum, cos_sum, count = 0.0, 0.0, 0
        token_start = 0
        for s, chunk in enumerate(chunks):
            x = np.asarray(chunk, dtype=np.float32)
            if keep is not None:
                mask = keep[token_start:token_start + len(x)]
                token_start += len(x)
                x = x[mask]
            if acc is None:
                acc = CovarianceAccumulator(x.shape[1])
            acc.add(x)
            norms = np.linalg.norm(x, axis=1)
            norm_sum += float(norms.sum())
            count += len(x)
            if layer > 0:
                prev = prev_by_shard[s]
                prev_norms = np.linalg.norm(prev, axis=1)
                denom = np.maximum(norms * prev_norms, 1e-12)
                cos_sum += float(((x * prev).sum(1) / denom).sum())
            prev_by_shard[s] = x
        eig = acc.eigenvalues()
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
    defaults={"max_texts": 64, "max_length": 128, "skip_first": False},
    param_help={"max_texts": "use the first N texts of the dataset",
                "max_length": "tokens per text (longer texts are truncated)",
                "skip_first": "leave out the first position of each text (BOS / attention sink)"},
    inputs=("model",),
    page="pages/1_Layer_stats.py",
))
