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

audit = mode != "a text I type"
c = st.columns(5)
stages = ui.param_widget("inversion", "stages", c[4], key="inv_stages", label="Stages",
                         help="1 = stage 1 only; each further stage restarts from the best text so far "
                              "(the refinement prompt below), with its own step budget")
refine = stages > 1
r = st.columns(3)
with st.expander("More settings"):
    d, below = st.columns(4), st.container()
widgets = {
    "proposer": dict(container=c[0], label="Proposer (causal LM)", key="inv_proposer", options=decoders,
                     help="proposes next tokens in its chat format; smaller is faster"),
    "beam_width": dict(container=c[1], label="Beam width", key="inv_beam"),
    "top_k": dict(container=c[2], label="Top-k", key="inv_topk"),
    "max_steps": dict(container=c[3], label="Steps, stage 1", key="inv_steps",
                      help="proposer tokens in stage 1 only: the refinement stages have their own budget"),
    # the refinement's own settings: greyed out (and unused) with a single stage
    "refine_steps": dict(container=r[0], label="Steps, each refinement stage (0 = as stage 1)", key="inv_rsteps",
                         disabled=not refine, help="proposer tokens in every stage after the first"
                         + ("" if refine else " (unused: 1 stage)")),
    "refine_pool": dict(container=r[1], label="Texts given to each refinement", key="inv_rpool", disabled=not refine,
                        help="the N best distinct stage results so far, one per line in the refinement prompt "
                             "(1 = the best text)" + ("" if refine else " (unused: 1 stage)")),
    "precision": dict(container=r[2], label="Search precision", key="inv_precision",
                      help="fp32, or bf16 (about 2x faster on a CPU with native bf16; the reported cosines are "
                           "always recomputed in fp32); auto = bf16 where the hardware does bf16 natively"),
    "top_p": dict(container=d[0], label="Top-p", key="inv_topp"),
    "repetition_penalty": dict(container=d[1], label="Repetition penalty", key="inv_rep"),
    "threshold": dict(container=d[2], label="Stop at cosine", key="inv_thr"),
    "batch_size": dict(container=d[3], label="Candidates per embedder forward", key="inv_batch"),
    "layers": dict(container=below, key="inv_layers",
                   label="Layers (empty = sentence embedding; 'all', or e.g. 0,3,6 = mean-pooled hidden states)"),
    "randomness": dict(container=below, label="Random beams (keep top 5 + a seeded random sample)", key="inv_rand"),
    "penalize_prompt": dict(container=below, label="Repetition penalty covers the prompt (the official code's; off: "
                            "a refinement may reuse the words of the text it rewrites)", key="inv_penprompt"),
    "prompt": dict(container=below, label="Stage-1 instruction", key="inv_prompt"),
    "refine_prompt": dict(container=below, label="Refinement instruction ({text} = the best text(s) so far)",
                          key="inv_rprompt", disabled=not refine),
    "seed": dict(container=below, label="Seed", key="inv_seed"),
}
if audit:  # a handful of items: each takes about a minute on a CPU; a typed text is one item
    widgets["max_items"] = dict(container=below, label="Items (first N, 0 = all)", key="inv_items", default=5)
    widgets["check_norms"] = dict(container=below, label="Refuse vectors whose norms do not match the embedder",
                                  key="inv_norms")
params = {**ui.param_widgets("inversion", widgets), "stages": stages}
steps = params["max_steps"] + (stages - 1) * (params["refine_steps"] or params["max_steps"])
# measured: B = K = 10 over 32 + 32 steps is about half a minute per text on an idle 2-core CPU
per_item = 30.0 * params["beam_width"] * params["top_k"] / 100 * steps / 64
st.caption(f"Cost: {params['beam_width']} × {params['top_k']} candidates embedded per step, {steps} proposer steps "
           f"in all ({params['max_steps']}" + "".join(f" + {params['refine_steps'] or params['max_steps']}"
                                                     for _ in range(stages - 1))
           + f"): about {per_item:.0f} s per text and layer on an idle 2-core CPU (less with an early stop at the "
           "cosine threshold).")

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
