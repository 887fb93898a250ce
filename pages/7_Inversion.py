"""Embedding inversion page: recover text from a sentence embedding (or a layer's mean-pooled state).

A text (demonstration), a text file, or a file of embeddings (audit) is inverted by zero-shot
adversarial decoding; the current best text and its cosine update live at every step.
"""

import time

import streamlit as st

from workbench import ui
from workbench.data import TextDataset, load_dataset, load_vectors
from workbench.errors import WorkbenchError
from workbench.models import builtin_models

ui.page_header("inversion")
specs = builtin_models()
encoders = [n for n, s in specs.items() if s.kind == "encoder"]
decoders = [n for n, s in specs.items() if s.kind == "decoder"]

with st.sidebar:
    st.header("Models")
    embedder = st.selectbox("Embedder (whose vectors are inverted)", encoders + [ui.OTHER_MODEL], key="inv_embedder")
    if embedder == ui.OTHER_MODEL:
        embedder = st.text_input("Embedder hub id or folder", key="inv_embedder_other").strip() or None
    proposer = st.selectbox("Proposer (causal LM)", decoders, key="inv_proposer",
                            help="Proposes next tokens in its chat format; smaller is faster.")

mode = st.radio("Invert", ["a text", "a text file", "a vectors file (audit)"], horizontal=True, key="inv_mode")
data = vectors = None
data_ref = None
if mode == "a text":
    text = st.text_input("Text (its embedding is computed, then inverted)",
                         "We propose a new method for training small language models.", key="inv_text")
    if text.strip():
        data = TextDataset.from_texts([text.strip()], name="text")
        data_ref = "text:" + text.strip()
else:
    kinds = ["txt", "csv", "jsonl", "parquet"] if mode == "a text file" else ["npy", "parquet", "csv"]
    upload = st.file_uploader(f"File ({', '.join(kinds)})", type=kinds, key=f"inv_upload_{mode}")
    if upload is not None:
        try:
            path = ui._save_upload(upload)
            data_ref = str(path)
            if mode == "a text file":
                data = load_dataset(path)
                st.caption(f"{len(data)} texts")
            else:
                vectors = load_vectors(path)
                st.caption(f"{vectors.shape[0]} vectors × {vectors.shape[1]} dims")
        except WorkbenchError as exc:
            st.error(str(exc))

c = st.columns(5)
with st.expander("More settings"):
    d, below = st.columns(4), st.container()
params = {"proposer": proposer, **ui.param_widgets("inversion", {
    "beam_width": dict(container=c[0], label="Beam width", key="inv_beam"),
    "top_k": dict(container=c[1], label="Top-k", key="inv_topk"),
    "max_steps": dict(container=c[2], label="Steps (stage 1)", key="inv_steps"),
    "stages": dict(container=c[3], label="Stages", key="inv_stages", options=[1, 2], help="2 = refine once"),
    # a handful of items: each takes about a minute on a CPU
    "max_items": dict(container=c[4], label="Items (first N, 0 = all)", key="inv_items", default=5),
    "top_p": dict(container=d[0], label="Top-p", key="inv_topp"),
    "repetition_penalty": dict(container=d[1], label="Repetition penalty", key="inv_rep"),
    "threshold": dict(container=d[2], label="Stop at cosine", key="inv_thr"),
    "seed": dict(container=d[3], label="Seed", key="inv_seed"),
    "layers": dict(container=below, key="inv_layers",
                   label="Layers (empty = sentence embedding; 'all', or e.g. 0,3,6 = mean-pooled hidden states)"),
    "randomness": dict(container=below, label="Random beams (keep top 5 + a seeded random sample)", key="inv_rand"),
    "check_norms": dict(container=below, label="Refuse vectors whose norms do not match the embedder",
                        key="inv_norms"),
    "prompt": dict(container=below, label="Stage-1 instruction", key="inv_prompt"),
    "refine_prompt": dict(container=below, label="Refinement instruction ({text} = best stage-1 text)",
                          key="inv_rprompt"),
})}
params["refine_steps"] = params["max_steps"]
st.caption("Cost ≈ beam width × top-k candidates embedded per step: B = K = 10, 32 steps, 2 stages is "
           "about a minute per text on an idle CPU.")

ss = st.session_state
results = ss.setdefault("_inv_results", {})
key = ui.result_key("inversion", embedder, data_ref, vectors, params)
clicked = st.button("Invert", type="primary", key="inv_run")
if key not in results and clicked:
    if embedder is None or (data is None and vectors is None):
        st.warning("Pick an embedder and give a text, a text file or a vectors file.")
    else:
        from workbench.analysis import run_analysis

        bar = st.progress(0.0, text="loading models…")
        live = st.empty()
        t0 = time.time()

        def progress(done, total, message=""):
            bar.progress(min(done / total, 1.0) if total else 0.0, text=f"{time.time() - t0:.0f} s")
            parts = message.split(" · ", 4)
            if len(parts) == 5:
                where, layer, step, cos, best = parts
                live.markdown(f"**{where} · {layer} · {step}** — {cos}  \n> {best or '…'}")

        try:
            results[key] = run_analysis("inversion", model=ui.get_model(embedder), data=data, vectors=vectors,
                                        params=params, progress=progress)
        except WorkbenchError as exc:
            st.error(str(exc))
        bar.empty()
        live.empty()
result = results.get(key)
if result is not None:
    from analyses.inversion.report import html_report

    cols = ["target", "reconstruction", "cosine", "token_f1", "bleu", "exact_match", "leakage", "leaked",
            "steps", "seconds", "layer"]
    st.dataframe(result.table[cols], width="stretch")
    st.download_button("Audit report (HTML, self-contained)", html_report(result), "inversion_report.html",
                       "text/html", key="inv_html")
    ui.show_figure(result)
elif not clicked:
    st.info("Give the input, set the parameters, then press **Invert**.")
