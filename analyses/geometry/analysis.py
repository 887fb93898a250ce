"""The registered analyses ``geometry`` (per-layer anisotropy and intrinsic dimension) and
``projection`` (2-D PCA / UMAP map of one layer, :mod:`.projection`), on a model + dataset or a user
(N, D) matrix; the ``transform`` parameters (``workbench.stats.transform_params``) add the transformed
result beside the untransformed one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis import Param
from workbench.stats import check_array, layer_request, parse_layers
from workbench.stats.transform_params import TRANSFORM_PARAMS, LayerTransform, layer_transform_for

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
    **TRANSFORM_PARAMS,
}

# ---------------------------------------------------------------- representations of a model


def model_entry(ctx):
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


def layer_transform(ctx, model=None, representation: str = "token", skip_first: bool = False) -> LayerTransform:
    """The run's transform (``transform`` parameters), fit per layer on the data it is applied to, or on the
    named ``transform_fit`` dataset embedded by the same model (the same representation and positions)."""
    hooks = None if model is None else model.resid_hooks()
    return layer_transform_for(ctx, hooks, int(ctx.params["max_length"]),
                               lambda entry, hook: layer_matrix(entry, hook, representation, skip_first))


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
        lt = layer_transform(ctx)
        table = geometry_table([X], model="vectors", estimators=est, seed=ctx.seed, progress=ctx.progress, **kwargs)
        if lt.active:
            table = with_transformed(table, geometry_table([lambda: lt(0, X)], model="vectors", estimators=est,
                                                            seed=ctx.seed, **kwargs), lt.name)
        summary = {"input": "vectors", "n_vectors": int(X.shape[0]), "dim": int(X.shape[1])}
        rep = "vectors"  # rows used as given; representation / skip_first do not apply
    else:
        model, dataset, entry = model_entry(ctx)
        hooks = model.resid_hooks()
        layer_ids = parse_layers(p["layers"], model.n_layers)
        skip = bool(p["skip_first"])
        loaders = [(lambda h=hooks[lid]: layer_matrix(entry, h, rep, skip)) for lid in layer_ids]
        common = dict(n_layers=model.n_layers, layer_ids=layer_ids, model=model.name, estimators=est, seed=ctx.seed)
        table = geometry_table(loaders, progress=ctx.progress, **common, **kwargs)
        lt = layer_transform(ctx, model, rep, skip)
        if lt.active:
            after = [(lambda lid=lid, f=f: lt(lid, f())) for lid, f in zip(layer_ids, loaders)]
            table = with_transformed(table, geometry_table(after, **common, **kwargs), lt.name)
        n_tok = int(entry.n_tokens - (entry.n_texts if skip else 0))
        summary = {"input": "model", "model_kind": model.kind, "n_layers": model.n_layers,
                   "n_texts": int(entry.n_texts), "n_tokens": n_tok,
                   "layer_convention": "0 = embeddings; l = output of block l-1 (before the final norm)"}
    table.insert(3, "representation", rep)
    if "transform" not in table:
        table["transform"] = "none"
    summary.update({"transform": lt.summary(),
        "representation": rep, "skip_first": bool(p["skip_first"]) and rep != "vectors",
        "definitions": {name: ESTIMATORS[name][1] for name in est},
        "bootstrap": ("percentile intervals over points with the neighbour graph fixed (kNN estimators), "
                      "over pairs (cosine); normal interval from a row bootstrap (SVD); none for PCA"),
    })
    return table, summary


def with_transformed(before: pd.DataFrame, after: pd.DataFrame, name: str) -> pd.DataFrame:
    """The untransformed and transformed tables one above the other, told apart by ``transform``."""
    return pd.concat([before.assign(transform="none"), after.assign(transform=name)], ignore_index=True)


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
    keys = ["model", "estimator"] + (["transform"] if "transform" in t and t["transform"].nunique() > 1 else [])
    for key, g in t.groupby(keys, sort=False):
        model, est = key[0], key[1]
        style = key[0] if len(key) == 2 else (key[0], key[2])
        label = f"{model} · {est}" + (f" · {key[2]}" if len(key) == 3 else "")
        g = g.sort_values("layer")
        col = _panel(est)
        dash.setdefault(style, ["solid", "dash", "dot", "dashdot", "longdash"][len(dash) % 5])
        err = None
        if g["ci_low"].notna().any():
            err = dict(type="data", symmetric=False, array=(g["ci_high"] - g["value"]).to_numpy(),
                       arrayminus=(g["value"] - g["ci_low"]).to_numpy(), thickness=1, width=2)
        fig.add_trace(go.Scatter(
            x=g[x_col], y=g["value"], error_y=err, mode="lines+markers", name=label,
            line=dict(dash=dash[style]), legendgroup=label,
            customdata=np.stack([g["layer"], g["ci_low"], g["ci_high"], g["n_points"],
                                 g["n_duplicates_removed"]], axis=1),
            hovertemplate=(f"<b>{label}</b><br>layer %{{customdata[0]}}<br>value %{{y:.4g}}"
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
    if (s.get("transform") or {}).get("transform", "none") != "none":
        bits.append(f"{s['transform']['transform']} (fit on {s['transform']['fit_on']}) beside none")
    if s.get("n_texts"):
        bits.append(f"{s['n_texts']} texts, {s.get('n_tokens', '?')} tokens")
    fig.update_layout(height=420, template="plotly_white", margin=dict(t=60, l=50, r=20, b=50),
                      title="Geometry per layer (" + "; ".join(bits) + ")")
    return fig


def register_all() -> None:
    from workbench.analysis import AnalysisSpec, register

    from .projection import PROJECTION_PARAMS, figure_projection, run_projection
    from .results_tables import TABLES

    register(AnalysisSpec(
        name="geometry",
        title="Geometry: anisotropy and intrinsic dimension",
        question="How anisotropic are the representations at each layer, and how many dimensions do they really use?",
        run=run_geometry, figure=figure_geometry, params=dict(GEOMETRY_PARAMS),
        inputs=("model", "vectors"), page="app_pages/4_Geometry.py", readme_tables=TABLES))
    register(AnalysisSpec(
        name="projection",
        title="2-D map of one layer (PCA / UMAP)",
        question="What does one layer's representation cloud look like in two dimensions, coloured by position, token or label?",
        run=run_projection, figure=figure_projection, params=dict(PROJECTION_PARAMS),
        inputs=("model", "vectors"), page="app_pages/4_Geometry.py"))
