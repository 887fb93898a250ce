"""Layer-quality page: information-theoretic and geometric metrics per layer beside probe accuracy and
retrieval, the correlation of each metric with the probe, and the recommended layer; a representation
transform's probe and retrieval beside the untransformed ones; other models side by side or as a difference."""

import pandas as pd
import streamlit as st

from analyses.layer_quality.downstream import claim_sentence
from workbench import compare, ui
from workbench.stats.transform_params import transform_widgets

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
with st.expander("Augmentations, downstream data and reference options"):
    c2, c3, c4, c7 = st.columns(4), st.columns(4), st.columns(4), st.columns(4)
with st.expander("WhiteningBERT: layer combination and representation transform (probe and retrieval beside the "
                 "untransformed scores)"):
    c5, c6 = st.columns(4), st.columns(4)
params = ui.param_widgets("layer_quality", ui.size_preset("layer_quality", "lq_size", {
    "max_texts": dict(container=c[0], label="Prompts (first N)", key="lq_texts", disabled=on_vectors),
    "max_length": dict(container=c[1], label="Tokens per text", key="lq_len", disabled=on_vectors),
    "alpha": dict(container=c[2], label="Rényi α", key="lq_alpha", step=0.5),
    "normalization": dict(container=c[3], label="Entropy normalisation", key="lq_norm"),
    "aug_texts": dict(container=c2[0], label="Augmented prompts (0 = skip)", key="lq_aug"),
    "n_augmentations": dict(container=c2[1], label="Copies per prompt", key="lq_naug"),
    "aug_max_words": dict(container=c2[2], label="Words augmented (0 = all)", key="lq_words"),
    "aug_word_p": dict(container=c2[3], label="Share of words edited", key="lq_wordp", slider=True, step=0.05),
    "probe_data": dict(container=c3[0], label="Probe data", key="lq_probe"),
    "probe_folds": dict(container=c3[1], label="Probe folds", key="lq_folds"),
    "retrieval_data": dict(container=c3[2], label="Retrieval data", key="lq_retr"),
    "retrieval_pairs": dict(container=c3[3], label="Retrieval pairs", key="lq_pairs"),
    "probe_max_texts": dict(container=c7[0], label="Probe texts (N, every label in its share; 0 = all)", key="lq_probe_n"),
    "curvature": dict(container=c4[0], label="Curvature", key="lq_curv"),
    "clamp": dict(container=c4[1], label="Clamp Gram entries at 0 (reference quirk)", key="lq_clamp"),
    "skip_first": dict(container=c4[2], label="Leave out position 0 (BOS / sink)", key="lq_skip"),
    "pooling": dict(container=c4[3], label="Pooling", key="lq_pool"),
    "combine_layer": dict(container=c5[0], label="first_last: layer averaged in", key="lq_combine"),
    **transform_widgets("lq", list(c5[1:]) + list(c6)),
    "seed": dict(label="Seed", key="lq_seed"),
}, quick={"max_texts": 40, "max_length": 64, "aug_texts": 8, "n_augmentations": 4, "retrieval_pairs": 60,
       "probe_max_texts": 400}))

others, mode = ([], "single") if on_vectors else compare.page_controls("lq", choice.get("model"))
run_result = ui.run("layer_quality", params, choice, overlay=others)
result = compare.view(run_result, mode)
if result is not None:
    s = result.summary
    rec = s.get("recommendation")
    if rec and rec.get("best_layer") is not None:
        st.success(f"Recommended layer: **{rec['best_layer']}**. {rec['reason']}")
    elif rec:
        st.info(rec["reason"])
    if s.get("intermediate_vs_last"):
        st.caption(claim_sentence(s["intermediate_vs_last"]))
    ui.show_figure(result)
    transform = s.get("transform") or {}
    if transform.get("scores"):
        st.subheader(f"Before and after {transform['transform']} (fit on {transform['fit_on']})")
        st.dataframe(pd.DataFrame(transform["scores"]).T, use_container_width=False)
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
