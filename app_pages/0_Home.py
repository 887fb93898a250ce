"""Home: what each analysis answers, with a link to its page."""

from pathlib import Path

import streamlit as st

from workbench.analysis import list_analyses
from workbench.models import builtin_models

st.title("Interpretability workbench")
st.markdown(
    "Pick a model and a dataset in the sidebar of any page. Activations are extracted once into a disk "
    "cache, so every analysis after the first on the same model and data is fast. Every figure exports "
    "to HTML, PNG, SVG and CSV, and shows the `workbench` command that reproduces it."
)
st.subheader("Analyses")
root = Path(__file__).resolve().parent.parent
for spec in list_analyses():
    with st.container(border=True):
        cols = st.columns([3, 1])
        cols[0].markdown(f"**{spec.title}** — {spec.question}")
        cols[0].caption(f"`workbench run {spec.name}` · inputs: {', '.join(spec.inputs)}")
        # analyses that share a page (the 2-D map on Geometry, the tuned lens on Lenses) link to it too
        if spec.page and (root / spec.page).exists():
            cols[1].page_link(spec.page, label="Open page →")
st.subheader("Built-in models (offline)")
st.table([{"name": s.name, "kind": s.kind, "description": s.description} for s in builtin_models().values()])
