"""Attribution page: attention patterns, direct logit attribution, activation and attribution patching."""

from dataclasses import replace

import streamlit as st

from workbench import ui
from workbench.errors import WorkbenchError
from workbench.results import figure_html

from analyses.attribution import head_figure, pattern_grid, scores_figure

st.title("Attention, attribution and patching")
st.markdown("Where each head looks, what writes the answer into the final residual stream, and which activations "
            "carry the difference between a clean and a corrupted prompt. Patching scores are the normalised logit "
            "difference: 0 = the corrupted run, 1 = the clean run.")
# typed prompts and repeated random tokens suit the toy models too (attn-only-induction's induction heads)
choice = ui.sidebar(model_kinds=("decoder",), page="attribution", synthetic=True)
# only attention patterns with source=dataset read the sidebar's dataset; the other runs take none
no_data = {**choice, "data": None, "data_ref": None, "mismatch": None}
tabs = st.tabs(["Attention patterns", "Direct logit attribution", "Activation patching", "Attribution patching"])


def prompt_widgets(analysis: str, prefix: str, paired: bool) -> dict:
    """The prompt-pair parameters of ``analysis`` (typed prompts or a task generator)."""
    c = st.columns(4)
    params = ui.param_widgets(analysis, {
        "task": dict(container=c[0], label="Prompts", key=f"{prefix}_task"),
        "n_examples": dict(container=c[1], label="Prompt pairs (task)", key=f"{prefix}_n"),
        "period": dict(container=c[2], label="Induction period", key=f"{prefix}_period"),
        "batch_size": dict(container=c[3], label="Batch size", key=f"{prefix}_batch"),
    })
    params["task_file"] = ""
    if params["task"] == "csv":
        upload = st.file_uploader("Task CSV (positive, negative, answer, wrong)", type=["csv"], key=f"{prefix}_csv")
        if upload is not None:
            try:
                params["task_file"] = str(ui._save_upload(upload))
            except WorkbenchError as exc:
                st.error(str(exc))
    typed = params["task"] == "prompts"
    texts = {"clean": dict(label="Clean prompt", key=f"{prefix}_clean", disabled=not typed)}
    if paired:
        texts["corrupted"] = dict(label="Corrupted prompt (same token length)", key=f"{prefix}_corr", disabled=not typed)
    params.update(ui.param_widgets(analysis, texts))
    c = st.columns(2)
    params.update(ui.param_widgets(analysis, {
        "answer": dict(container=c[0], label="Answer token", key=f"{prefix}_answer", disabled=not typed),
        "wrong": dict(container=c[1], label="Compared with (blank: the answer alone)", key=f"{prefix}_wrong",
                      disabled=not typed)}))
    return params


def patch_widgets(analysis: str, prefix: str) -> dict:
    c = st.columns(3)
    return ui.param_widgets(analysis, {
        "patch": dict(container=c[0], label="Patch", key=f"{prefix}_patch"),
        "positions": dict(container=c[1], label="Positions", key=f"{prefix}_positions"),
        "layers": dict(container=c[2], label="Blocks", key=f"{prefix}_layers")})


with tabs[0]:
    c = st.columns(4)
    params = ui.param_widgets("attention_patterns", {
        "source": dict(container=c[0], label="Prompt set", key="ap_source",
                       help="dataset: the sidebar's dataset; repeats: repeated random tokens (induction scores)"),
        "max_texts": dict(container=c[1], label="Prompts in the set", key="ap_max_texts"),
        "period": dict(container=c[2], label="Repeat period", key="ap_period"),
        "layers": dict(container=c[3], label="Layers to store", key="ap_layers"),
    })
    params.update(ui.param_widgets("attention_patterns", {
        "prompt": dict(label="Prompt", key="ap_prompt", disabled=params["source"] != "prompt")}))
    c = st.columns(3)
    params.update(ui.param_widgets("attention_patterns", {
        "text": dict(container=c[0], label="Prompt drawn (index in the set)", key="ap_text"),
        "max_length": dict(container=c[1], label="Tokens per dataset text", key="ap_max_length"),
        "max_pattern_mb": dict(container=c[2], label="Pattern budget (MiB)", key="ap_budget")}))
    result = ui.run("attention_patterns", params, choice if params["source"] == "dataset" else no_data)
    if result is not None:
        st.subheader("Every head (layer × head)")
        st.caption("Click a head's pattern (the small square in its middle) to open it large below, or pick it from "
                   "the list.")
        labels = result.table["label"].tolist()
        if st.session_state.get("ap_for") != result.manifest.get("cli"):  # a new result opens its own head
            st.session_state.update(ap_for=result.manifest.get("cli"), ap_head=result.summary["head"], ap_clicked=None)
        grid = pattern_grid(result)
        event = st.plotly_chart(grid, width="stretch", key="ap_grid", on_select="rerun", selection_mode="points")
        names = list(grid.data[1].customdata)  # the clickable markers' heads (trace 1 of the grid)
        clicked = [names[pt["point_index"]] for pt in (event.selection.points if event else [])
                   if pt.get("curve_number") == 1 and 0 <= pt.get("point_index", -1) < len(names)]
        # a click opens its head once; the list can choose another while the click stays selected
        if clicked and clicked[0] != st.session_state.get("ap_clicked"):
            st.session_state["ap_clicked"] = st.session_state["ap_head"] = clicked[0]
        st.download_button("Grid HTML", figure_html(grid), "attention_patterns_grid.html", "text/html", key="ap_grid_html")
        head = st.selectbox("Head to open", labels, key="ap_head")
        shown = result if head == result.summary["head"] else \
            replace(result, manifest={**result.manifest, "cli": f"{result.manifest['cli']} --set head={head}"})
        st.subheader(f"Head {head}")
        ui.show_figure(shown, head_figure(result, head), key="head")
        st.subheader("Head scores")
        ui.show_figure(result, scores_figure(result), key="scores")
        ui.show_table(result)

with tabs[1]:
    params = prompt_widgets("logit_attribution", "dla", paired=False)
    result = ui.run("logit_attribution", params, no_data)
    if result is not None:
        s = result.summary
        c = st.columns(3)
        c[0].metric(s["metric"].capitalize(), f"{s['logit_diff']:.3f}")
        c[1].metric("Sum of the parts", f"{s['sum_of_parts']:.3f}")
        c[2].metric("Largest gap", f"{s['sum_error']:.1e}")
        ui.show_figure(result)
        ui.show_table(result)

with tabs[2]:
    params = prompt_widgets("activation_patching", "act", paired=True)
    params.update(patch_widgets("activation_patching", "act"))
    result = ui.run("activation_patching", params, no_data)
    if result is not None:
        ui.show_figure(result)
        ui.show_table(result)

with tabs[3]:
    params = prompt_widgets("attribution_patching", "atp", paired=True)
    params.update(patch_widgets("attribution_patching", "atp"))
    params.update(ui.param_widgets("attribution_patching", {
        "compare_exact": dict(label="Also run exact activation patching (correlation and speed ratio)",
                              key="atp_exact")}))
    result = ui.run("attribution_patching", params, no_data)
    if result is not None:
        comp = result.summary.get("comparison")
        if comp and comp.get("pearson") is not None:
            c = st.columns(3)
            c[0].metric("Pearson with exact", f"{comp['pearson']:.3f}")
            c[1].metric("Spearman with exact", f"{comp['spearman']:.3f}")
            c[2].metric("Speed-up", f"{comp['speedup']:.1f}×",
                        f"{comp['seconds_attribution']:.2f} s vs {comp['seconds_exact']:.2f} s", delta_color="off")
        ui.show_figure(result)
        ui.show_table(result)
