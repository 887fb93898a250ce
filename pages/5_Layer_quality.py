"""Layer-quality page: information-theoretic and geometric metrics per layer beside probe accuracy and
retrieval, the correlation of each metric with the probe, and the recommended layer."""

import pandas as pd
import streamlit as st

from analyses.layer_quality import DEFAULTS, PARAM_HELP
from analyses.layer_quality.metrics import CURVATURE_VARIANTS, ENTROPY_NORMALIZATIONS
from workbench import ui

ui.page_header("layer_quality")
st.caption(
    "Metrics of Skean et al. 2025 (*Layer by Layer*, arXiv 2502.02013): **prompt/dataset entropy** "
    "(matrix-based Rényi entropy of the token / prompt vectors), **effective rank**, **curvature** of the "
    "token path, **InfoNCE**, **LiDAR** and **DiME** over seeded typo/split augmentations, and **TwoNN** "
    "intrinsic dimension; beside them a cross-validated **topic probe** and **title→abstract retrieval**. "
    "Layer 0 = embeddings. On your own vectors only dataset entropy, effective rank and TwoNN apply."
)
choice = ui.sidebar(model_kinds=("decoder", "encoder"), allow_vectors=True)
on_vectors = choice.get("vectors") is not None

c = st.columns(4)
params = {
    "max_texts": int(c[0].number_input("Prompts (first N)", 3, 100_000, DEFAULTS["max_texts"], key="lq_texts",
                                       help=PARAM_HELP["max_texts"], disabled=on_vectors)),
    "max_length": int(c[1].number_input("Tokens per text", 8, 4096, DEFAULTS["max_length"], key="lq_len",
                                        disabled=on_vectors)),
    "alpha": float(c[2].number_input("Rényi α", 0.1, 10.0, DEFAULTS["alpha"], 0.5, key="lq_alpha",
                                     help=PARAM_HELP["alpha"])),
    "normalization": c[3].selectbox("Entropy normalisation", ENTROPY_NORMALIZATIONS, key="lq_norm",
                                    help=PARAM_HELP["normalization"]),
}
with st.expander("Augmentations, downstream data and reference options"):
    c = st.columns(4)
    params["aug_texts"] = int(c[0].number_input("Augmented prompts (0 = skip)", 0, 5000, DEFAULTS["aug_texts"],
                                                key="lq_aug", help=PARAM_HELP["aug_texts"]))
    params["n_augmentations"] = int(c[1].number_input("Copies per prompt", 2, 64, DEFAULTS["n_augmentations"],
                                                      key="lq_naug", help=PARAM_HELP["n_augmentations"]))
    params["aug_max_words"] = int(c[2].number_input("Words augmented (0 = all)", 0, 10_000,
                                                    DEFAULTS["aug_max_words"], key="lq_words"))
    params["aug_word_p"] = float(c[3].slider("Share of words edited", 0.0, 1.0, DEFAULTS["aug_word_p"], 0.05,
                                             key="lq_wordp"))
    c = st.columns(4)
    params["probe_data"] = c[0].text_input("Probe data", DEFAULTS["probe_data"], key="lq_probe",
                                           help=PARAM_HELP["probe_data"])
    params["probe_folds"] = int(c[1].number_input("Probe folds", 2, 20, DEFAULTS["probe_folds"], key="lq_folds"))
    params["retrieval_data"] = c[2].text_input("Retrieval data", DEFAULTS["retrieval_data"], key="lq_retr",
                                               help=PARAM_HELP["retrieval_data"])
    params["retrieval_pairs"] = int(c[3].number_input("Retrieval pairs", 2, 100_000, DEFAULTS["retrieval_pairs"],
                                                      key="lq_pairs"))
    c = st.columns(4)
    params["curvature"] = c[0].selectbox("Curvature", CURVATURE_VARIANTS, key="lq_curv", help=PARAM_HELP["curvature"])
    params["clamp"] = c[1].checkbox("Clamp Gram entries at 0 (reference quirk)", DEFAULTS["clamp"], key="lq_clamp")
    params["skip_first"] = c[2].checkbox("Leave out position 0 (BOS / sink)", DEFAULTS["skip_first"], key="lq_skip")
    params["pooling"] = c[3].selectbox("Pooling", ["mean", "normalized_mean"], key="lq_pool",
                                       help=PARAM_HELP["pooling"])
    params["seed"] = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="lq_seed"))

result = ui.run("layer_quality", params, choice)
if result is not None:
    s = result.summary
    rec = s.get("recommendation")
    if rec and rec.get("best_layer") is not None:
        st.success(f"Recommended layer: **{rec['best_layer']}**. {rec['reason']}")
    elif rec:
        st.info(rec["reason"])
    ui.show_figure(result)
    rho = s.get("spearman_with_probe_accuracy")
    if rho:
        st.subheader("Which metric tracks the probe?")
        st.caption("Spearman correlation across layers of each metric with topic-probe accuracy.")
        st.dataframe(pd.DataFrame({"metric": list(rho), "spearman_rho": list(rho.values())}),
                     hide_index=True, use_container_width=False)
    ui.show_table(result)
    aug = s.get("augmentation", {})
    if aug.get("used"):
        with st.expander("Augmentation settings and an example"):
            st.json({k: aug[k] for k in ("n_prompts", "n_augmentations", "seed", "settings", "method")})
            for ex in aug.get("examples", []):
                st.markdown(f"**original:** {ex['original']}")
                for a in ex["augmented"]:
                    st.markdown(f"- {a}")
    st.caption("Definitions: " + "; ".join(f"**{k}**: {v}" for k, v in s.get("definitions", {}).items()))
