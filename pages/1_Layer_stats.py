"""Layer statistics page: residual norm, direction change and top-PC variance per layer."""

import streamlit as st

from workbench import ui

ui.page_header("layer_stats")
choice = ui.sidebar(model_kinds=("decoder", "encoder", "seq2seq"))
cols = st.columns(3)
params = {
    "max_texts": cols[0].number_input("Texts (first N)", 1, 5000, 64, key="ls_max_texts"),
    "max_length": cols[1].number_input("Tokens per text", 8, 2048, 128, key="ls_max_length"),
    "skip_first": cols[2].checkbox("Leave out the first position (BOS / attention sink)", False, key="ls_skip"),
}
result = ui.run("layer_stats", params, choice, auto=True)
if result is not None:
    ui.show_figure(result)
    ui.show_table(result)
