"""Embedding inversion page: recover text from a sentence embedding (or a layer's mean-pooled state).

A text (demonstration), a text file, or a file of embeddings (audit) is inverted by zero-shot
adversarial decoding; the current best text and its cosine update live at every step.
"""

import streamlit as st

from workbench import ui
from workbench.data import TextDataset
from workbench.models import builtin_models

ui.page_header("inversion")
decoders = [n for n, s in builtin_models().items() if s.kind == "decoder"]
choice = ui.sidebar(model_kinds=("encoder",), allow_vectors=True, page="inversion", default_model="minilm-l6")
st.caption("The sidebar's model is the **embedder** whose vectors are inverted; the proposer below is the "
           "causal LM that writes the candidates.")

mode = st.radio("Invert", ["a text I type", "the sidebar's dataset or vectors (an audit)"], horizontal=True,
                key="inv_mode")
run_choice = dict(choice)
if mode == "a text I type":
    text = st.text_input("Text (its embedding is computed, then inverted)",
                         "We propose a new method for training small language models.", key="inv_text")
    run_choice.update(vectors=None, data=TextDataset.from_texts([text.strip()], name="text") if text.strip() else None)
    run_choice["data_ref"] = "text:" + text.strip() if text.strip() else None

c = st.columns(5)
with st.expander("More settings"):
    d, below = st.columns(4), st.container()
widgets = {
    "proposer": dict(container=c[0], label="Proposer (causal LM)", key="inv_proposer", options=decoders,
                     help="proposes next tokens in its chat format; smaller is faster"),
    "beam_width": dict(container=c[1], label="Beam width", key="inv_beam"),
    "top_k": dict(container=c[2], label="Top-k", key="inv_topk"),
    "max_steps": dict(container=c[3], label="Steps, stage 1", key="inv_steps"),
    "refine_steps": dict(container=c[4], label="Steps, refinement (0 = as stage 1)", key="inv_rsteps"),
    "stages": dict(container=d[0], label="Stages", key="inv_stages", options=[1, 2], help="2 = refine once"),
    "top_p": dict(container=d[1], label="Top-p", key="inv_topp"),
    "repetition_penalty": dict(container=d[2], label="Repetition penalty", key="inv_rep"),
    "threshold": dict(container=d[3], label="Stop at cosine", key="inv_thr"),
    "layers": dict(container=below, key="inv_layers",
                   label="Layers (empty = sentence embedding; 'all', or e.g. 0,3,6 = mean-pooled hidden states)"),
    "randomness": dict(container=below, label="Random beams (keep top 5 + a seeded random sample)", key="inv_rand"),
    "check_norms": dict(container=below, label="Refuse vectors whose norms do not match the embedder",
                        key="inv_norms"),
    "prompt": dict(container=below, label="Stage-1 instruction", key="inv_prompt"),
    "refine_prompt": dict(container=below, label="Refinement instruction ({text} = best stage-1 text)",
                          key="inv_rprompt"),
    "seed": dict(container=below, label="Seed", key="inv_seed"),
}
if mode != "a text I type":  # a handful of items: each takes about a minute on a CPU
    widgets["max_items"] = dict(container=below, label="Items (first N, 0 = all)", key="inv_items", default=5)
params = ui.param_widgets("inversion", widgets)
st.caption("Cost ≈ beam width × top-k candidates embedded per step: B = K = 10, 32 + 32 steps is about half a "
           "minute per text on an idle 2-core CPU.")

live = st.empty()


def show_step(record: dict) -> None:
    """The live view: the current best text and its cosine, from the back-end's step record."""
    where = "sentence embedding" if record["layer"] == -1 else f"layer {record['layer']}"
    live.markdown(f"**item {record['item'] + 1}/{record['n_items']} · {where} · stage {record['stage']} step "
                  f"{record['step']}/{record['total_steps']}** — cosine {record['best_cosine']:.4f}  \n"
                  f"> {record['best_text'] or '…'}")


result = ui.run("inversion", params, run_choice, button_label="Invert", on_step=show_step)
live.empty()
if result is not None:
    from analyses.inversion import html_report

    cols = ["target", "reconstruction", "cosine", "token_f1", "bleu", "exact_match", "leakage", "leaked",
            "steps", "seconds", "layer"]
    st.dataframe(result.table[cols], width="stretch")
    st.download_button("Audit report (HTML, self-contained)", html_report(result), "inversion_report.html",
                       "text/html", key="inv_html")
    ui.show_figure(result)
