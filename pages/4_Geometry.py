"""Geometry page: per-layer anisotropy and intrinsic dimension, and a 2-D map of one layer."""

import copy

import pandas as pd
import streamlit as st

from analyses.geometry.layers import ESTIMATORS
from workbench import ui
from workbench.errors import WorkbenchError
from workbench.models import builtin_models

ui.page_header("geometry")
st.caption(
    "Anisotropy: **svd** = σ₁²/Σσᵢ² of the centred representations (Razzhigaev et al., LLM-Microscope); "
    "**cosine** = mean cosine of random pairs, uncentred (Ethayarajh 2019). Intrinsic dimension: **twonn** "
    "(Facco 2017, as scikit-dimension), **twonn_microscope** (LLM-Microscope's fit on the smallest 20% of "
    "ratios), **mle_mg** / **mle_mean** (Levina–Bickel, MacKay–Ghahramani or plain averaging), **pca_90** "
    "and **participation_ratio** (linear). Exact duplicate points are removed and counted. "
    "Layer 0 = embeddings; the x axis is depth = layer / n_layers."
)
choice = ui.sidebar(model_kinds=("decoder", "encoder"), allow_vectors=True)
on_vectors = choice.get("vectors") is not None

tab_curves, tab_map = st.tabs(["Per-layer curves", "2-D map"])

with tab_curves:
    c = st.columns(4)
    est = c[0].multiselect("Estimators", list(ESTIMATORS),
                           default=["svd", "cosine", "twonn", "twonn_microscope", "mle_mg", "pca", "participation_ratio"],
                           key="geo_est")
    rep = c[1].selectbox("Representation", ["token", "mean_pooled"], key="geo_rep",
                         help="token: every token vector; mean_pooled: one mean vector per text")
    excl = c[2].checkbox("Exclude first position (BOS / [CLS])", False, key="geo_excl")
    max_texts = c[3].number_input("Texts (first N, 0 = all)", 0, 100_000, 64, key="geo_texts")
    c = st.columns(4)
    max_points = c[0].number_input("kNN points (seeded subsample)", 100, 200_000, 5000, step=500, key="geo_pts")
    n_boot = c[1].number_input("Bootstrap resamples", 0, 1000, 50, key="geo_boot")
    mle_k = c[2].number_input("MLE k", 3, 200, 20, key="geo_k")
    seed = c[3].number_input("Seed", 0, 2**31 - 1, 0, key="geo_seed")
    with st.expander("More options"):
        c = st.columns(4)
        max_length = c[0].number_input("Tokens per text", 8, 4096, 128, key="geo_len")
        layers = c[1].text_input("Layers (blank = all)", "", key="geo_layers")
        n_pairs = c[2].number_input("Cosine pairs", 100, 1_000_000, 10_000, key="geo_pairs")
        pca_var = c[3].slider("PCA variance share", 0.5, 0.99, 0.9, 0.01, key="geo_pcavar")
        c = st.columns(4)
        discard = c[0].number_input("TwoNN discard fraction", 0.0, 0.9, 0.1, 0.05, key="geo_discard")
        n_boot_spec = c[1].number_input("SVD bootstrap resamples", 0, 500, 20, key="geo_bootspec")
        max_spec = c[2].number_input("SVD/PCA points (0 = all)", 0, 10_000_000, 0, key="geo_specpts")
    params = {
        "estimators": ",".join(est) or "svd", "representation": rep, "exclude_first": excl,
        "max_texts": int(max_texts), "max_length": int(max_length), "layers": layers,
        "max_points": int(max_points), "max_points_spectrum": int(max_spec), "n_boot": int(n_boot),
        "n_boot_spectrum": int(n_boot_spec), "mle_k": int(mle_k), "discard_fraction": float(discard),
        "pca_variance": float(pca_var), "n_pairs": int(n_pairs), "seed": int(seed),
    }
    others = []
    if not on_vectors:
        names = [n for n, s in builtin_models().items() if s.kind in ("decoder", "encoder") and n != choice.get("model")]
        others = st.multiselect("Overlay other models (same data and settings)", names, key="geo_overlay")
    result = ui.run("geometry", params, choice)
    if result is not None:
        if others:
            from workbench.analysis import run_analysis

            store = st.session_state.setdefault("_geo_overlays", {})
            tables = [result.table]
            for name in others:
                key = ui.result_key("geometry", name, choice.get("data_ref"), None, params)
                if key not in store:
                    with st.spinner(f"Running geometry on {name}…"):
                        try:
                            store[key] = run_analysis("geometry", model=ui.get_model(name),
                                                      data=choice.get("data"), params=params)
                        except WorkbenchError as exc:
                            st.error(f"{name}: {exc}")
                            continue
                tables.append(store[key].table)
            combined = copy.copy(result)
            combined.table = pd.concat(tables, ignore_index=True)
            ui.show_figure(combined, key="overlay")
            ui.show_table(combined)
        else:
            ui.show_figure(result)
            ui.show_table(result)
        st.caption("Definitions: " + "; ".join(f"**{k}**: {v}" for k, v in result.summary.get("definitions", {}).items()))

with tab_map:
    c = st.columns(4)
    method = c[0].selectbox("Method", ["pca", "umap"], key="proj_method",
                            help="UMAP compiles on first use (can take a minute)")
    layer = c[1].number_input("Layer (-1 = last)", -1, 200, -1, key="proj_layer", disabled=on_vectors)
    prep = c[2].selectbox("Representation", ["token", "mean_pooled"], key="proj_rep", disabled=on_vectors)
    color = c[3].text_input("Colour by (blank = auto)", "", key="proj_color",
                            help="position, token, text_id, label, or any column of the dataset")
    c = st.columns(4)
    pmax = c[0].number_input("Points shown (seeded subsample above)", 100, 50_000, 5000, step=500, key="proj_max")
    pexcl = c[1].checkbox("Exclude first position", False, key="proj_excl")
    ptexts = c[2].number_input("Texts (first N, 0 = all)", 0, 100_000, 64, key="proj_texts")
    nn = c[3].number_input("UMAP neighbours", 2, 200, 15, key="proj_nn")
    pparams = {"method": method, "layer": int(layer), "representation": prep, "color": color.strip(),
               "max_points": int(pmax), "exclude_first": pexcl, "max_texts": int(ptexts),
               "umap_n_neighbors": int(nn), "max_length": int(params["max_length"]), "seed": int(seed)}
    presult = ui.run("projection", pparams, choice)
    if presult is not None:
        ui.show_figure(presult, key="map")
        ui.show_table(presult)
