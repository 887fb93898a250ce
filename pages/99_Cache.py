"""Cache page: the activation cache's entries, their sizes, verification and deletion."""

import time

import pandas as pd
import streamlit as st

from workbench.errors import WorkbenchError
from workbench.store import ActivationStore

st.title("Activation cache")
store = ActivationStore()
rows = store.entries()
total = sum(r["bytes"] for r in rows)
st.caption(f"{len(rows)} entries, {total / 2**20:.1f} MiB of {store.max_bytes / 2**30:.1f} GiB "
           f"(least recently used entries are evicted past the cap) · {store.root}")
if not rows:
    st.info("The cache is empty: run an analysis to fill it.")
else:
    frame = pd.DataFrame([{
        "key": r["key"], "model": r["model"], "dataset": r["dataset"], "texts": r["n_texts"], "tokens": r["n_tokens"],
        "hooks": r["hooks"], "max_length": r["max_length"], "MiB": round(r["bytes"] / 2**20, 1),
        "last used": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_used"])),
    } for r in rows])
    st.dataframe(frame, width="stretch", hide_index=True)
    cols = st.columns([3, 1, 1, 1])
    key = cols[0].selectbox("Entry", frame["key"].tolist(), key="cache_key")
    if cols[1].button("Verify", key="cache_verify"):
        problem = store.verify(key)
        (st.success if problem is None else st.error)(f"{key}: {'intact' if problem is None else problem}")
    if cols[2].button("Delete", key="cache_delete"):
        try:
            store.remove(key)
            st.rerun()
        except WorkbenchError as exc:
            st.error(str(exc))
    if cols[3].button("Clear all", key="cache_clear"):
        store.clear()
        st.rerun()
