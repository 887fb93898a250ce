"""Layer statistics page: residual norm, direction change and top-PC variance per layer."""

import streamlit as st

from workbench import ui

ui.page_header("layer_stats")
choice = ui.sidebar(model_kinds=("decoder", "encoder", "seq2seq"))
cols = st.columns(3)
params = ui.param_widgets("layer_stats", {
    "max_texts": dict(container=cols[0], label="Texts (first N)", key="ls_max_texts"),
    "max_length": dict(container=cols[1], label="Tokens per text", key="ls_max_length"),
    "skip_first": dict(container=cols[2], label="Leave out the first position (BOS / attention sink)", key="ls_skip"),
})
result = ui.run("layer_stats", params, choice, auto=True)
if result is not None:
    ui.show_figure(result)
    ui.show_table(result)
