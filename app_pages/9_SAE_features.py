"""SAE features page: train or find a sparse autoencoder on sentence embeddings or a residual layer, then
its quality, a feature browser, feature families and steered semantic search (the page computes nothing:
each view is one analysis run, and its figures come from the back-end)."""

import json
import shlex
from functools import partial

import pandas as pd
import streamlit as st

from workbench import ui
from workbench.errors import WorkbenchError

from analyses.sae import (example_html, families_figure, family_tree_figure, feature_histogram, features_figure,
                          quality_figure, sae_status, steering_figure)

VIEWS = ["Quality", "Features", "Families", "Steered search"]
ss = st.session_state

ui.page_header("sae_features")
st.caption(
    "A TopK sparse autoencoder (Gao et al. 2024, as in O'Neill et al. 2024, *Disentangling Dense Embeddings "
    "with Sparse Autoencoders*) on an embedder's **sentence embeddings** or a decoder's **residual stream** at a "
    "layer. Trained once from the activation store (seeded, resumable, saved in SAELens's layout), then found "
    "again by its settings. Feature labels here are **word-contrast labels** (words over-represented in a "
    "feature's top texts), not LLM labels.")
choice = ui.sidebar(model_kinds=("encoder", "decoder"), page="sae", default_model="minilm-l6")

size_box = st.container()
with st.expander("SAE settings (training runs once; later runs find the SAE in the cache)", expanded=False):
    c1, c2, c3 = st.columns(4), st.columns(4), st.columns(4)
    params = ui.param_widgets("sae_features", ui.size_preset("sae_features", "sae_size", {
        "target": dict(container=c1[0], label="Target (auto, sentence, layer:L)", key="sae_target"),
        "k": dict(container=c1[1], label="k (active latents)", key="sae_k"),
        "d_sae": dict(container=c1[2], label="Dictionary size (0 = 2 × d_model)", key="sae_d"),
        "architecture": dict(container=c1[3], label="Architecture", key="sae_arch"),
        "steps": dict(container=c2[0], label="Training steps", key="sae_steps"),
        "batch_size": dict(container=c2[1], label="Batch (rows)", key="sae_batch"),
        "lr": dict(container=c2[2], label="Learning rate", key="sae_lr", format="%.0e"),
        "dead_revival": dict(container=c2[3], label="Dead latents", key="sae_dead"),
        "max_texts": dict(container=c3[0], label="Texts (first N, 0 = all)", key="sae_texts"),
        "max_length": dict(container=c3[1], label="Tokens per text (0 = default)", key="sae_len"),
        "heldout_fraction": dict(container=c3[2], label="Held-out share", key="sae_held", step=0.05),
        "skip_first": dict(container=c3[3], label="Leave out position 0", key="sae_skip"),
        "seed": dict(label="Seed", key="sae_seed"),
    }, quick={"steps": 500}, container=size_box))

status = None
if choice.get("model"):
    try:
        status = sae_status(choice["model"])
    except WorkbenchError as exc:
        st.error(str(exc))
if status and status["saes"]:
    labels = {"": "the SAE these settings name (trained if missing)"}
    for r in status["saes"]:
        q = (r.get("quality") or {}).get("heldout") or (r.get("quality") or {}).get("train") or {}
        labels[r["folder"]] = (f"{r['target']} · k={r['settings'].get('k')} · {r['settings'].get('d_sae')} latents · "
                               f"{r['data']} · FVU {q.get('fvu', float('nan')):.3f} · {r['created']}")
    params["sae"] = st.selectbox(f"SAE ({len(status['saes'])} trained for this model)", list(labels),
                                 format_func=labels.get, key="sae_folder")

view = st.radio("View", VIEWS, horizontal=True, key="sae_view")


def open_feature(feature: int) -> None:
    ss["sae_feature"] = int(feature)
    ss["sae_view"] = "Features"
    ss["sae_features_auto"] = True


def open_clicked(key: str) -> None:
    """A click on a node of the family tree: open that feature."""
    points = (ss.get(key) or {}).get("selection", {}).get("points", [])
    if points and points[0].get("customdata") is not None:
        custom = points[0]["customdata"]
        open_feature(int(custom[0] if isinstance(custom, list) else custom))


def show_quality() -> None:
    result = ui.run("sae_quality", params, choice, button_label="Train / evaluate")
    if result is None:
        return
    sae = result.summary["sae"]
    st.success(f"SAE {'trained now' if sae['trained_now'] else 'found'}: `{sae['folder']}`")
    if sae.get("train_command"):
        command = sae["train_command"]
        source = (result.manifest.get("dataset") or {}).get("source")
        if choice.get("data_ref") and source:  # name the dataset the way it was chosen, as the run's own line does
            command = command.replace(f"--data {shlex.quote(str(source))}", f"--data {shlex.quote(choice['data_ref'])}")
        st.caption("Train this SAE from the command line (SAELens layout, resumable):")
        st.code(command, language="bash")
    rows = result.table.set_index("split")
    names = {"train": "training rows", "heldout": "held-out rows", "all": "all rows"}
    for split, r in rows.iterrows():
        st.markdown(f"**{names.get(split, split)}** ({int(r['n_rows'])})")
        cols = st.columns(4)
        cols[0].metric("FVU (normalised MSE)", f"{r['fvu']:.3f}")
        cols[1].metric("L0 (latents per row)", f"{r['l0']:.1f}")
        cols[2].metric("dead latents", f"{int(r['dead'])} ({r['dead_fraction']:.0%})")
        cols[3].metric("dense latents (>10%)", int(r["dense"]))
    down = result.summary["downstream"]
    if down.get("kind") == "retrieval":
        st.markdown(f"**Downstream: title→abstract retrieval** ({down['n_pairs']} pairs, MRR)")
        cols = st.columns(4)
        cols[0].metric("original embeddings", f"{down['mrr_original']:.3f}")
        cols[1].metric("both reconstructed", f"{down['mrr_reconstructed']:.3f}", f"{down['mrr_change']:+.3f}")
        cols[2].metric("reconstructed index", f"{down['mrr_original_query_reconstructed_index']:.3f}",
                       f"{down['mrr_original_query_reconstructed_index'] - down['mrr_original']:+.3f}")
    else:
        st.markdown(f"**Downstream: next-token loss with the layer spliced** ({down['n_predictions']} predictions, nats)")
        cols = st.columns(4)
        cols[0].metric("clean", f"{down['ce_clean']:.3f}")
        cols[1].metric("SAE spliced in", f"{down['ce_sae']:.3f}", f"{down['ce_increase']:+.3f}", delta_color="inverse")
        cols[2].metric("layer zeroed", f"{down['ce_zero']:.3f}")
        cols[3].metric("loss recovered", f"{down['loss_recovered']:.1%}")
    ui.show_figure(result, quality_figure(result), key="quality")
    ui.show_table(result)


def show_feature(result, feature: int) -> None:
    t = result.table.set_index("feature")
    r = t.loc[feature]
    st.markdown(f"#### Feature {feature}: {r['label'] or '(no distinctive word)'}")
    st.caption(f"fires on {r['density']:.2%} of rows · mean activation {r['mean_activation']:.3f} · "
               f"max {r['max_activation']:.3f} · specificity {r['specificity']:.2f}")
    left, right = st.columns([3, 2])
    examples = json.loads(r["examples"])
    with left:
        st.markdown("**Top-activating examples**")
        scale = examples[0]["activation"] if examples else 1.0
        st.markdown("".join(example_html(ex, scale) for ex in examples) or "(never fires)", unsafe_allow_html=True)
    with right:
        words = json.loads(r["words"])
        if words:
            st.markdown("**Words that set its top examples apart** (share of top examples vs corpus)")
            st.dataframe(pd.DataFrame(words, columns=["word", "top examples", "corpus"]), hide_index=True)
        if json.loads(r["promoted"]):
            st.markdown("**Logit effect of its decoder direction**")
            st.dataframe(pd.DataFrame({"promoted": [f"{a} ({v:+.2f})" for a, v in json.loads(r["promoted"])],
                                       "suppressed": [f"{a} ({v:+.2f})" for a, v in json.loads(r["suppressed"])]}),
                         hide_index=True)
    ui.show_figure(result, feature_histogram(result, feature), key="hist")


def show_features() -> None:
    c = st.columns(3)
    widgets = {"top_n": dict(container=c[0], label="Examples per feature", key="sae_top_n")}
    if not status or status["kind"] != "encoder":  # tokens in context and logit effects: residual SAEs only
        widgets["window"] = dict(container=c[1], label="Context tokens", key="sae_window")
        widgets["logit_effects"] = dict(container=c[2], label="Logit effects of each direction", key="sae_logits")
    extra = ui.param_widgets("sae_features", widgets)
    result = ui.run("sae_features", {**params, **extra}, choice, auto=bool(ss.get("sae_features_auto")))
    if result is None:
        return
    ss["sae_features_auto"] = True  # the SAE exists now: later changes rerun without a button
    ui.show_figure(result, features_figure(result), key="map")
    t = result.table
    c = st.columns([2, 1])
    query = c[0].text_input("Search features by word (label or top words)", key="sae_search").strip().lower()
    order = c[1].selectbox("Sort by", ["specificity", "density", "max_activation"], key="sae_sort")
    shown = t[t["density"] > 0]
    if query:
        shown = shown[shown["label"].str.lower().str.contains(query, regex=False)
                      | shown["words"].str.lower().str.contains(query, regex=False)]
    shown = shown.sort_values(order, ascending=False)
    st.dataframe(shown[["feature", "label", "density", "specificity", "max_activation"]], hide_index=True,
                 height=240, width="stretch")
    if not 0 <= int(ss.get("sae_feature", -1)) < len(t):
        ss["sae_feature"] = int(shown["feature"].iloc[0]) if len(shown) else 0
    feature = st.number_input("Feature", 0, len(t) - 1, key="sae_feature")
    show_feature(result, int(feature))


def show_families() -> None:
    c = st.columns(4)
    extra = ui.param_widgets("sae_families", {
        "max_density": dict(container=c[0], label="Candidates: density below", key="sae_fam_density", step=0.05),
        "threshold": dict(container=c[1], label="Edge threshold", key="sae_fam_thr", step=0.05),
        "rounds": dict(container=c[2], label="Extra rounds", key="sae_fam_rounds"),
        "min_children": dict(container=c[3], label="Smallest family", key="sae_fam_min"),
    })
    result = ui.run("sae_families", {**params, **extra}, choice)
    if result is None:
        return
    stats = result.summary["stats"]
    cols = st.columns(4)
    cols[0].metric("families", stats["n_families"])
    cols[1].metric("mean children", f"{stats['mean_children']:.1f}")
    cols[2].metric("median parent–child ratio", f"{stats['median_parent_child_ratio']:.2f}")
    cols[3].metric("block share (random order)", f"{stats['block_share']:.2f} ({stats['block_share_random_order']:.2f})")
    ui.show_figure(result, families_figure(result), key="families")
    t = result.table
    if t.empty:
        st.info("No family at this corpus size and these thresholds.")
        return
    fam = st.selectbox("Family", sorted(t["family"].unique()), key="sae_family",
                       format_func=lambda f: f"family {f}: parent #{int(t[t['family'] == f]['root'].iloc[0])} "
                                             f"{t[(t['family'] == f) & (t['depth'] == 0)]['label'].iloc[0]}")
    tree_key = f"sae_tree_{fam}"
    st.plotly_chart(family_tree_figure(result, fam), width="stretch", key=tree_key,
                    on_select=partial(open_clicked, tree_key), selection_mode="points")
    st.caption("Click a node above, or open a member in the feature browser here:")
    for _, r in t[t["family"] == fam].iterrows():
        st.button(f"{'↳ ' * int(r['depth'])}#{int(r['feature'])} {r['label']} ({r['density']:.1%})",
                  key=f"sae_open_{fam}_{int(r['feature'])}", on_click=open_feature, args=(int(r["feature"]),))


def show_steering() -> None:
    c = st.columns([3, 1, 1, 1])
    extra = ui.param_widgets("sae_steering", {
        "query": dict(container=c[0], label="Query", key="sae_query"),
        "feature": dict(container=c[1], label="Feature (-1 = auto)", key="sae_steer_feature"),
        "alpha": dict(container=c[2], label="α", key="sae_alpha", step=0.1),
        "mode": dict(container=c[3], label="Mode", key="sae_mode"),
    })
    result = ui.run("sae_steering", {**params, **extra}, choice, button_label="Search")
    if result is None:
        return
    s = result.summary
    st.markdown(f"Feature **{s['feature']}** ({s['feature_label'] or 'no distinctive word'}; fires on "
                f"{s['feature_density']:.1%} of texts; on the query {s['query_activation']:.3f}), {s['mode']}, α = {s['alpha']}")
    cols = st.columns(3)
    for col, key, name in zip(cols, ["share_in_feature_top", "mean_feature_activation", "cosine_to_feature_centroid"],
                              ["results among its top texts", "its mean activation on results", "cosine to its top texts"]):
        col.metric(name, f"{s['after'][key]:.3f}", f"{s['after'][key] - s['before'][key]:+.3f}")
    left, right = st.columns(2)
    t = result.table
    for col, side in ((left, "before"), (right, "after")):
        col.markdown(f"**{side.capitalize()}**" + (" (steered query)" if side == "after" else " (the query as typed)"))
        shown = t[["rank", f"{side}_title", f"{side}_score", f"{side}_in_feature_top"]].rename(
            columns=lambda n: n.replace(f"{side}_", ""))
        shown["in_feature_top"] = shown["in_feature_top"].map({True: "★", False: ""})
        col.dataframe(shown, hide_index=True, width="stretch", column_config={
            "rank": st.column_config.NumberColumn("#", width="small"),
            "title": st.column_config.TextColumn("title", width="large"),
            "score": st.column_config.NumberColumn("cosine", format="%.3f", width="small"),
            "in_feature_top": st.column_config.TextColumn("★", width="small",
                                                          help="among the feature's top texts")})
    ui.show_figure(result, steering_figure(result), key="steering")


{"Quality": show_quality, "Features": show_features, "Families": show_families,
 "Steered search": show_steering}[view]()
