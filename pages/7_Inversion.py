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
params = {
    "proposer": proposer,
    "beam_width": c[0].number_input("Beam width", 1, 64, 10, key="inv_beam"),
    "top_k": c[1].number_input("Top-k", 1, 100, 10, key="inv_topk"),
    "max_steps": c[2].number_input("Steps (stage 1)", 1, 128, 32, key="inv_steps"),
    "stages": c[3].selectbox("Stages", [1, 2], index=1, key="inv_stages", help="2 = refine once"),
    "max_items": c[4].number_input("Items (first N)", 1, 1000, 5, key="inv_items"),
}
params["refine_steps"] = params["max_steps"]
with st.expander("More settings"):
    d = st.columns(4)
    params["top_p"] = d[0].number_input("Top-p", 0.01, 1.0, 1.0, key="inv_topp")
    params["repetition_penalty"] = d[1].number_input("Repetition penalty", 1.0, 5.0, 1.5, key="inv_rep")
    params["threshold"] = d[2].number_input("Stop at cosine", 0.5, 1.01, 0.99, key="inv_thr")
    params["seed"] = d[3].number_input("Seed", 0, 2**31 - 1, 0, key="inv_seed")
    params["layers"] = st.text_input(
        "Layers (empty = sentence embedding; 'all', or e.g. 0,3,6 = mean-pooled hidden states)", "",
        key="inv_layers").strip() or None
    params["randomness"] = st.checkbox("Random beams (keep top 5 + a seeded random sample)", False, key="inv_rand")
    params["check_norms"] = st.checkbox("Refuse vectors whose norms do not match the embedder", True, key="inv_norms")
    params["prompt"] = st.text_input("Stage-1 instruction", "Write a sentence.", key="inv_prompt")
    params["refine_prompt"] = st.text_input("Refinement instruction ({text} = best stage-1 text)",
                                            "write a sentence similar to this: {text}", key="inv_rprompt")
params = {k: (int(v) if isinstance(v, float) and k not in {"top_p", "repetition_penalty", "threshold"} else v)
          for k, v in params.items()}
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
