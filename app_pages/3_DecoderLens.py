"""DecoderLens page: the decoder of an encoder-decoder model reads encoder layer l instead of the last."""

import streamlit as st

from workbench import ui

ui.page_header("decoder_lens")
st.caption(
    "For each encoder layer l the unchanged decoder cross-attends to that layer's states and generates "
    "(Langedijk et al., NAACL Findings 2024). Layer 0 = embeddings; the last layer reproduces plain "
    "generation exactly. Built-in pair: model **t5-tasks** with dataset **seq2seq-tasks**."
)
choice = ui.sidebar(model_kinds=("seq2seq",), page="decoder_lens", default_model="t5-tasks", default_data="seq2seq-tasks")
cols = st.columns(4)
c2 = st.columns(3)
params = ui.param_widgets("decoder_lens", {
    "apply_final_norm": dict(
        container=cols[0], label="Final encoder norm on intermediate layers", key="dl_norm",
        format_func=lambda v: {True: "on", False: "off"}.get(v, v),
        help="auto: on for pre-LN encoders (T5, Whisper, M2M100), not applicable to post-LN BART/Marian. "
             "Never applied twice at the last layer."),
    # the page starts below the analysis default (500) so that a first run is quick
    "max_examples": dict(container=cols[1], label="Examples (first N)", key="dl_max_examples", default=200),
    "max_new_tokens": dict(container=cols[2], label="Max new tokens", key="dl_max_new_tokens"),
    "num_beams": dict(container=cols[3], label="Beams", key="dl_beams"),
    "source_column": dict(container=c2[0], label="Source column", key="dl_src"),
    "reference_column": dict(container=c2[1], label="Reference column (blank: no scores)", key="dl_ref"),
    "task_column": dict(container=c2[2], label="Task column (optional)", key="dl_task"),
})
result = ui.run("decoder_lens", params, choice)
if result is not None:
    ui.show_figure(result)
    ui.show_table(result)
