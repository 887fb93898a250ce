"""Cache page: the activation cache's entries by model, dataset and settings; verify, delete, clear."""

import time

import pandas as pd
import streamlit as st

from workbench.errors import WorkbenchError
from workbench.store import ActivationStore

st.title("Activation cache")
store = ActivationStore()
listing = store.listing()
rows = [r for r in listing if r["state"] == "ok"]
problems = [r for r in listing if r["state"] != "ok"]
total = sum(r["bytes"] for r in listing)
st.caption(f"{len(rows)} entries, {total / 2**20:.1f} MiB of {store.max_bytes / 2**30:.1f} GiB "
           f"(least recently used entries are evicted past the cap) · {store.root}")


def _label(r: dict) -> str:
    return (f"{r['model']} · {r['dataset']} · {r['n_texts']} texts · {r['hooks_summary']} · "
            f"max_length {r['max_length']} ({r['key'][:8]})")


if not rows:
    st.info("The cache is empty: run an analysis to fill it.")
else:
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        st.subheader(f"{model} — {len(mine)} entr{'y' if len(mine) == 1 else 'ies'}, "
                     f"{sum(r['bytes'] for r in mine) / 2**20:.1f} MiB")
        st.caption(mine[0]["fingerprint"])
        st.dataframe(pd.DataFrame([{
            "dataset": r["dataset"], "texts": r["n_texts"], "tokens": r["n_tokens"], "hooks": r["hooks_summary"],
            "max_length": r["max_length"], "stored as": r["settings"]["dtype"],
            "BOS": {None: "tokenizer's", True: "added", False: "removed"}[r["settings"]["prepend_bos"]],
            "MiB": round(r["bytes"] / 2**20, 1),
            "last used": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_used"])), "key": r["key"][:12],
        } for r in mine]), width="stretch", hide_index=True)

    st.divider()
    labels = {_label(r): r["key"] for r in rows}
    cols = st.columns([4, 1, 1])
    key = labels[cols[0].selectbox("Entry", list(labels), key="cache_key")]
    if cols[1].button("Verify", key="cache_verify", help="re-read every file and compare its checksum"):
        problem = store.verify(key)
        (st.success if problem is None else st.error)(f"{key[:12]}: {'intact' if problem is None else problem}")
    if cols[2].button("Delete", key="cache_delete"):
        try:
            store.remove(key)
            st.rerun()
        except WorkbenchError as exc:
            st.error(str(exc))

if problems:
    st.subheader("Not usable")
    st.dataframe(pd.DataFrame([{"folder": r["folder"], "state": r["state"], "problem": r["problem"],
                                "MiB": round(r["bytes"] / 2**20, 1)} for r in problems]),
                 width="stretch", hide_index=True)
    if st.button("Remove what no process is writing", key="cache_clean"):
        store.remove_orphans()
        st.rerun()

if listing:
    # clearing everything asks first: the entries may have taken hours to extract
    if not st.session_state.get("cache_confirm_clear"):
        if st.button("Clear all…", key="cache_clear"):
            st.session_state["cache_confirm_clear"] = True
            st.rerun()
    else:
        st.warning(f"Delete all {len(rows)} entries ({total / 2**20:.1f} MiB)? Extracting them again reruns "
                   "every forward pass.")
        yes, no = st.columns(2)
        if yes.button("Yes, delete everything", key="cache_clear_yes", type="primary"):
            n = store.clear()
            st.session_state["cache_confirm_clear"] = False
            st.toast(f"{n} folders deleted")
            st.rerun()
        if no.button("Cancel", key="cache_clear_no"):
            st.session_state["cache_confirm_clear"] = False
            st.rerun()
