"""DecoderLens page: the decoder of an encoder-decoder model reads encoder layer l instead of the last."""

import streamlit as st

from workbench import ui

ui.page_header("decoder_lens")
st.caption(
    "For each encoder layer l the unchanged decoder cross-attends to that layer's states and generates "
    "(Langedijk et al., NAACL Findings 2024). Layer 0 = embeddings; the last layer reproduces plain "
    "generation exactly. Built-in pair: model **t5-tasks** with dataset **seq2seq-tasks**."
)
choice = ui.sidebar(model_kinds=("seq2seq",))
cols = st.columns(4)
norm_choice = cols[0].selectbox(
    "Final encoder norm on intermediate layers", ["auto", "on", "off", "both"], key="dl_norm",
    help="auto: on for pre-LN encoders (T5, Whisper, M2M100), not applicable to post-LN BART/Marian. "
         "Never applied twice at the last layer.",
)
params = {
    "apply_final_norm": {"auto": "auto", "on": True, "off": False, "both": "both"}[norm_choice],
    "max_examples": cols[1].number_input("Examples (first N)", 1, 5000, 200, key="dl_max_examples"),
    "max_new_tokens": cols[2].number_input("Max new tokens", 1, 512, 32, key="dl_max_new_tokens"),
    "num_beams": cols[3].number_input("Beams", 1, 8, 1, key="dl_beams"),
}
c2 = st.columns(3)
params["source_column"] = c2[0].text_input("Source column", "source", key="dl_src")
params["reference_column"] = c2[1].text_input("Reference column (blank: no scores)", "reference", key="dl_ref")
params["task_column"] = c2[2].text_input("Task column (optional)", "task", key="dl_task")
result = ui.run("decoder_lens", params, choice)
if result is not None:
    ui.show_figure(result)
    ui.show_table(result)
