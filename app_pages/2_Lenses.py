"""Lenses page: logit lens and tuned lens side by side, per layer × position and per layer."""

import pandas as pd
import streamlit as st

from workbench import ui
from workbench.data import TextDataset

from analyses.lenses import COLOR_BY, color_range, curves, heatmap, layer_means, lens_status

ui.page_header("logit_lens")
st.markdown("Decode the residual stream at every layer with the model's own final norm and unembedding "
            "(logit lens), or after a learned affine translator per layer (tuned lens, Belrose et al. 2023). "
            "KL is KL(final ‖ layer) in nats; rank is 1 + the number of tokens more probable than the target.")
choice = ui.sidebar(model_kinds=("decoder",), page="lenses")

mode = st.radio("Decode", ["a prompt I type", "the sidebar's dataset"], horizontal=True, key="lens_mode")
cols = st.columns(4)
widgets = {
    "max_length": dict(container=cols[1], label="Tokens per text", key="lens_max_length"),
    "top_k": dict(container=cols[2], label="Top-k in hover", key="lens_top_k"),
    "target": dict(container=cols[3], label="Target token", key="lens_target",
                   help="final_top1, next_token, or a literal token such as ' Paris'"),
}
run_choice = dict(choice)
if mode == "a prompt I type":
    prompt = st.text_area("Prompt", "The capital of France is", key="lens_prompt", height=70)
    # the run's command line carries the prompt itself (--text), so it reproduces exactly
    run_choice.update(data=TextDataset.from_texts([prompt.strip()], name="prompt") if prompt.strip() else None,
                      data_ref="prompt:" + prompt.strip())
else:
    widgets["max_texts"] = dict(container=cols[0], label="Texts (first N)", key="lens_max_texts")
params = ui.param_widgets("logit_lens", widgets)
resid_mid = ui.param_widget("logit_lens", "resid_mid", key="lens_mid",
                            label="Also after each attention sublayer (hook_resid_mid, logit lens only)")
status = lens_status(choice["model"]) if choice.get("model") else None
logit = ui.run("logit_lens", {**params, "resid_mid": resid_mid}, run_choice, auto=True)
# the tuned-lens run also decodes the logit lens on the same positions: both curves in one result
tuned = ui.run("tuned_lens", params, run_choice, auto=True) if status and status["available"] else None

if logit is not None:
    n_texts = int(logit.table["text"].max()) + 1
    c1, c2 = st.columns(2)
    text = c1.number_input("Text to show", 0, max(n_texts - 1, 0), 0, key="lens_text") if n_texts > 1 else 0
    color = c2.selectbox("Colour", list(COLOR_BY), format_func=lambda k: COLOR_BY[k], key="lens_color")
    tuned_rows = tuned.table[tuned.table["lens"] == "tuned"] if tuned is not None else None
    # one colour range for both panels, so that one colour means one value
    zrange = color_range([t[t["text"] == text] for t in (logit.table, tuned_rows) if t is not None], color)
    left, right = st.columns(2)
    with left:
        st.subheader("Logit lens")
        ui.show_figure(logit, heatmap(logit.table, "logit", text=text, color=color, zrange=zrange), key="heatmap")
    with right:
        st.subheader("Tuned lens")
        if tuned is not None:
            ui.show_figure(tuned, heatmap(tuned_rows, "tuned", text=text, color=color, zrange=zrange), key="heatmap")
            kl = tuned.summary.get("lens_heldout_kl") or {}
            if kl:
                training = tuned.summary.get("lens_training") or {}
                conv = training.get("convergence") or {}
                trained = (f"trained with {(training.get('recipe') or {}).get('optimizer', '?')}, "
                           f"{'converged' if conv.get('converged') else 'not converged'} by the held-out rule "
                           "(< 2 % over the last 20 % of the steps)")
                st.caption(f"Lens: {tuned.summary.get('lens_folder')}, {trained}. Deviations from the official "
                           "recipe: " + "; ".join(tuned.summary.get("lens_deviations") or []))
                with st.expander("Held-out KL per layer of this lens (nats)"):
                    st.dataframe(pd.DataFrame({"layer": kl["layer"], "logit lens": kl["logit_lens"],
                                               "tuned lens": kl["tuned_lens"]}), width="stretch")
        elif status is not None:
            st.info(f"No trained tuned lens for this model ({status['fingerprint']}). Train one with\n\n"
                    f"`{status['train_command']}`\n\n(the page finds it automatically afterwards).")
    st.subheader("Per layer, averaged over every position")
    both = tuned if tuned is not None else logit
    ui.show_figure(both, curves(both.table), key="curves")
    with st.expander("Per-layer means", expanded=False):
        st.dataframe(layer_means(both.table), width="stretch")
    ui.show_table(logit, label="Logit lens table (every layer × position)")
    if tuned is not None:
        ui.show_table(tuned, label="Tuned lens table")
