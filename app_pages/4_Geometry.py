"""Geometry page: per-layer anisotropy and intrinsic dimension, and a 2-D map of one layer; a representation
transform shown beside the untransformed result, other models side by side or as a difference."""

import streamlit as st

from analyses.geometry import ESTIMATORS
from workbench import compare, ui
from workbench.analysis import get_analysis
from workbench.stats.transform_params import transform_widgets

ui.page_header("geometry")
st.caption(
    "Anisotropy: **svd** = σ₁²/Σσᵢ² of the centred representations (Razzhigaev et al., LLM-Microscope); "
    "**cosine** = mean cosine of random pairs, uncentred (Ethayarajh 2019). Intrinsic dimension: **twonn** "
    "(Facco 2017, as scikit-dimension), **twonn_microscope** (LLM-Microscope's fit on the smallest 20% of "
    "ratios), **mle_mg** / **mle_mean** (Levina–Bickel, MacKay–Ghahramani or plain averaging), **pca** "
    "(components for 90% of the variance, the share set under More options) and **participation_ratio** (linear). Exact duplicate points are removed and counted. "
    "Layer 0 = embeddings; the x axis is depth = layer / n_layers."
)
choice = ui.sidebar(model_kinds=("decoder", "encoder"), allow_vectors=True)
on_vectors = choice.get("vectors") is not None

tab_curves, tab_map = st.tabs(["Per-layer curves", "2-D map"])

with tab_curves:
    # the full width: every chosen estimator stays visible
    est = st.multiselect("Estimators", list(ESTIMATORS),
                         default=get_analysis("geometry").params["estimators"].default.split(","), key="geo_est")
    c = st.columns(4)
    c2 = st.columns(4)
    with st.expander("More options"):
        c3, c4 = st.columns(4), st.columns(4)
    with st.expander("Representation transform (shown beside the untransformed result)"):
        c5, c6 = st.columns(4), st.columns(4)
    params = ui.param_widgets("geometry", ui.size_preset("geometry", "geo_size", {
        "representation": dict(container=c[0], label="Representation", key="geo_rep"),
        "skip_first": dict(container=c[1], label="Exclude first position (BOS / [CLS])", key="geo_excl"),
        "max_texts": dict(container=c[2], label="Texts (first N, 0 = all)", key="geo_texts"),
        "max_points": dict(container=c2[0], label="kNN points (seeded subsample)", key="geo_pts", step=500),
        "n_boot": dict(container=c2[1], label="Bootstrap resamples", key="geo_boot"),
        "mle_k": dict(container=c2[2], label="MLE k", key="geo_k"),
        "seed": dict(container=c2[3], label="Seed", key="geo_seed"),
        "max_length": dict(container=c3[0], label="Tokens per text", key="geo_len"),
        "layers": dict(container=c3[1], label="Layers (blank = all)", key="geo_layers"),
        "n_pairs": dict(container=c3[2], label="Cosine pairs", key="geo_pairs"),
        "pca_variance": dict(container=c3[3], label="PCA variance share", key="geo_pcavar", step=0.01),
        "discard_fraction": dict(container=c4[0], label="TwoNN discard fraction", key="geo_discard", step=0.05),
        "n_boot_spectrum": dict(container=c4[1], label="SVD bootstrap resamples", key="geo_bootspec"),
        "max_points_spectrum": dict(container=c4[2], label="SVD/PCA points (0 = all)", key="geo_specpts"),
        **transform_widgets("geo", list(c5) + list(c6)),
    }, quick={"max_texts": 32, "max_points": 2000, "n_boot": 10}))
    params["estimators"] = ",".join(est) or "svd"
    others, mode = ([], "single") if on_vectors else compare.page_controls("geo", choice.get("model"))
    result = ui.run("geometry", params, choice, overlay=others)
    if result is not None:
        shown = compare.view(result, mode)
        ui.show_figure(shown)
        ui.show_table(shown)
        st.caption("Definitions: " + "; ".join(f"**{k}**: {v}" for k, v in result.summary.get("definitions", {}).items()))

with tab_map:
    c, c2 = st.columns(4), st.columns(4)
    pparams = ui.param_widgets("projection", {
        "method": dict(container=c[0], label="Method", key="proj_method",
                       help="UMAP compiles on first use (can take a minute)"),
        "layer": dict(container=c[1], label="Layer (-1 = last)", key="proj_layer", disabled=on_vectors),
        "representation": dict(container=c[2], label="Representation", key="proj_rep", disabled=on_vectors),
        "color": dict(container=c[3], label="Colour by (blank = auto)", key="proj_color",
                      help="position, token, text_id, label, or any column of the dataset"),
        "max_points": dict(container=c2[0], label="Points shown (seeded subsample above)", key="proj_max", step=500),
        "skip_first": dict(container=c2[1], label="Exclude first position", key="proj_excl"),
        "max_texts": dict(container=c2[2], label="Texts (first N, 0 = all)", key="proj_texts"),
        "umap_n_neighbors": dict(container=c2[3], label="UMAP neighbours", key="proj_nn",
                                 disabled=st.session_state.get("proj_method", "pca") != "umap"),
        "transform": dict(label="Transform (its map beside the untransformed one)", key="proj_tr"),
    })
    pparams.update({"color": pparams["color"].strip(), "max_length": params["max_length"], "seed": params["seed"]})
    pparams.update({k: params[k] for k in ("transform_k", "transform_fit", "clip_value", "outlier_rule",
                                           "outlier_threshold", "transform_shrinkage")})
    presult = ui.run("projection", pparams, choice)
    if presult is not None:
        ui.show_figure(presult, key="map")
        ui.show_table(presult)
