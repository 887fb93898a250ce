"""Layer statistics page: residual norm, direction change and top-PC variance per layer; other models side by
side or as a difference (workbench.compare)."""

import streamlit as st

from workbench import compare, ui

ui.page_header("layer_stats")
choice = ui.sidebar(model_kinds=("decoder", "encoder", "seq2seq"))
cols = st.columns(3)
params = ui.param_widgets("layer_stats", {
    "max_texts": dict(container=cols[0], label="Texts (first N)", key="ls_max_texts"),
    "max_length": dict(container=cols[1], label="Tokens per text", key="ls_max_length"),
    "skip_first": dict(container=cols[2], label="Leave out the first position (BOS / attention sink)", key="ls_skip"),
})
others, mode = compare.page_controls("ls", choice.get("model"), kinds=("decoder", "encoder", "seq2seq"))
result = ui.run("layer_stats", params, choice, auto=True, overlay=others)
if result is not None:
    shown = compare.view(result, mode)
    ui.show_figure(shown)
    ui.show_table(shown)
