"""Similarity page: outlier dimensions (layers x dimensions, one dimension by position), a representation
transform before and after (anisotropy per layer), and layer similarity (CKA, debiased CKA, orthogonal
Procrustes heatmaps, the linearity of consecutive layers) within one model or between two."""

import streamlit as st

from analyses.similarity import figure_dimension, figure_heatmaps, figure_linearity
from workbench import ui
from workbench.stats.transform_params import transform_widgets

st.title("Outliers, transforms and layer similarity")
st.caption(
    "**Outlier dimensions** (Luo et al. 2021): hidden dimensions whose average value over the tokens of a layer "
    "sits beyond 3σ of the layer's values, their persistence across layers and their positional R². **Transforms**: "
    "clip or remove the outliers, whiten (WhiteningBERT), remove the top PCs; the statistics are fit on the same data "
    "or a named fit set. **Layer similarity**: linear CKA (Kornblith et al. 2019) and its debiased form, orthogonal "
    "Procrustes, LLM-Microscope's linear fit and the linearity score of consecutive layers (Razzhigaev et al. 2024)."
)
choice = ui.sidebar(model_kinds=("decoder", "encoder"))
tab_out, tab_transform, tab_sim = st.tabs(["Outlier dimensions", "Transforms: before / after", "Layer similarity"])

with tab_out:
    c = st.columns(4)
    params = ui.param_widgets("outliers", {
        "outlier_rule": dict(container=c[0], label="Rule", key="out_rule"),
        "outlier_threshold": dict(container=c[1], label="Threshold (blank: 3σ / 0.5)", key="out_thr"),
        "skip_first": dict(container=c[2], label="Leave out position 0", key="out_skip"),
        "max_texts": dict(container=c[3], label="Texts (first N)", key="out_texts"),
        "max_length": dict(label="Tokens per text", key="out_len"),
    })
    result = ui.run("outliers", params, choice)
    if result is not None:
        ui.show_figure(result)
        dims = list(dict.fromkeys(d["dim"] for d in result.summary.get("detail", [])))
        if dims:
            dim = st.selectbox("Dimension (most persistent outliers first)", dims, key="out_dim")
            ui.show_figure(result, figure_dimension(result, dim), key="dimension")
        ui.show_table(result)

with tab_transform:
    c, c2 = st.columns(4), st.columns(4)
    tparams = ui.param_widgets("geometry", {
        **transform_widgets("tr", list(c) + list(c2[:3]), transform="clip_outliers"),
        "representation": dict(container=c2[3], label="Representation", key="tr_rep"),
        "skip_first": dict(label="Leave out position 0", key="tr_skip"),
        "max_texts": dict(label="Texts (first N)", key="tr_texts"),
    })
    tparams.update({"estimators": "svd,cosine", "n_boot": 0, "n_boot_spectrum": 0})
    st.caption("SVD and cosine anisotropy per layer, untransformed (solid) and transformed (dashed).")
    tresult = ui.run("geometry", tparams, choice)
    if tresult is not None:
        ui.show_figure(tresult, key="transform")
        ui.show_table(tresult)

with tab_sim:
    names = ["(none: this model's layers)"] + [n for n in ui.page_models(("decoder", "encoder"), need_data=True)
                                               if n != choice.get("model")]
    c, c2 = st.columns(4), st.columns(4)
    other = c[0].selectbox("Compare with a second model", names, key="sim_other")
    sparams = ui.param_widgets("layer_similarity", {
        "representation": dict(container=c[1], label="Representation", key="sim_rep"),
        "max_texts": dict(container=c[2], label="Texts to compare (first N)", key="sim_texts"),
        "max_length": dict(container=c[3], label="Tokens per text to compare", key="sim_len"),
        "max_tokens": dict(container=c2[0], label="Token rows (seeded subsample, 0 = all)", key="sim_rows", step=1000),
        "skip_first": dict(container=c2[1], label="Leave out position 0", key="sim_skip"),
        "metrics": dict(container=c2[2], label="Measures", key="sim_metrics"),
        "precision": dict(container=c2[3], label="Precision", key="sim_precision"),
    })
    sparams["other_model"] = "" if other == names[0] else other
    sresult = ui.run("layer_similarity", sparams, choice)
    if sresult is not None:
        st.caption("Rows: this model's layers; columns: the other model's (or its own). Dotted: the diagonal; "
                   "red: each row's best-matching layer.")
        ui.show_figure(sresult, figure_heatmaps(sresult), key="heatmaps")
        if any(m.startswith("linearity") for m in sresult.summary.get("metrics", [])):
            ui.show_figure(sresult, figure_linearity(sresult), key="linearity")
        ui.show_table(sresult)
