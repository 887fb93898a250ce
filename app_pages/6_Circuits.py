"""Circuits page: which heads do a task (SAE circuit finding vs ablating every head)."""

import streamlit as st

from workbench import ui
from workbench.errors import WorkbenchError

from analyses.circuits import agreement_sentence, preview_examples

ui.page_header("circuits")
st.caption(
    "**SAE method** (O'Neill & Bui 2024): each head's output (z·W_O, averaged over positions) on positive and "
    "negative prompts; one sparse autoencoder shared by all heads, trained on 10 examples; each (prompt, head) "
    "becomes its top feature; a head's score is the number of features seen on positives and never on "
    "negatives (softmax over heads). **Ablation baseline**: one forward pass per head with that head "
    "mean-ablated (or patched from the negative prompt); the drop of the task metric. The paper's \"F1\" "
    "is the harmonic mean of TPR and TNR; true precision and recall are reported beside it. "
    "Try **attn-only-induction** with the induction task: a previous-token head feeds induction heads."
)
choice = ui.sidebar(model_kinds=("decoder",), need_data=False, page="circuits", default_model="attn-only-induction")

c = st.columns(4)
params = ui.param_widgets("circuits", {
    # the induction task on the project's attention-only model gives a first figure in seconds
    "task": dict(container=c[0], label="Task", key="circ_task", default="induction",
                 help="csv: your own prompt pairs (columns positive, negative, answer, optional wrong)"),
    # the page starts below the paper's 250 prompts so that a first run is quick
    "n_examples": dict(container=c[1], label="Prompts per side", key="circ_n", default=50,
                       help="positive prompts and as many negatives; the paper uses 250"),
    "seeds": dict(container=c[2], label="Trials (seeds)", key="circ_seeds"),
    "seed": dict(container=c[3], label="First seed", key="circ_seed"),
})
task = params["task"]
params["task_file"] = ""
if task == "csv":
    upload = st.file_uploader("Task CSV", type=["csv"], key="circ_csv")
    if upload is not None:
        try:
            params["task_file"] = str(ui._save_upload(upload))
        except WorkbenchError as exc:
            st.error(str(exc))
c = st.columns(4)
with st.expander("SAE settings"):
    sae, sae_below = st.columns(5), st.container()
params.update(ui.param_widgets("circuits", {
    "ablation": dict(container=c[0], label="Ablation baseline", key="circ_abl",
                     help="none skips it (one forward pass per head is the slow part)"),
    "position": dict(container=c[1], label="Head output", key="circ_pos",
                     format_func=lambda s: {"mean": "mean over positions", "final": "final position"}[s]),
    "circuit_threshold": dict(container=c[2], label="Circuit threshold", key="circ_thr", step=0.01,
                              help="reference circuit: heads whose ablation removes at least this share of "
                                   "the clean-minus-negative metric gap"),
    "period": dict(container=c[3], label="Induction period", key="circ_period", disabled=task != "induction"),
    "n_features": dict(container=sae[0], label="Features", key="circ_feat"),
    "lambda": dict(container=sae[1], label="L1 λ (blank = task default)", key="circ_lam", step=0.005, format="%.3f"),
    "n_epochs": dict(container=sae[2], label="Epochs", key="circ_epochs"),
    "lr": dict(container=sae[3], label="Learning rate", key="circ_lr", format="%.4f"),
    # drawn from the 2 × prompts-per-side prompts: the widget offers only what the run accepts
    "n_sae_examples": dict(container=sae[4], label="Training examples", key="circ_nsae",
                           max_value=2 * params["n_examples"]),
    "edges": dict(container=sae_below, label="Edge (co-occurrence) score", key="circ_edges"),
}))

if task == "csv" and not params["task_file"]:
    st.info("Upload a task CSV to run the csv task.")
else:
    if choice.get("model"):
        with st.expander("Example prompts of this task", expanded=False):
            try:
                st.dataframe(preview_examples(choice["model"], params), width="stretch", hide_index=True)
            except WorkbenchError as exc:
                st.error(str(exc))
    st.caption("Cost: the SAE method runs two passes over the prompts; the ablation baseline one pass per head "
               "(the slow part on a 30-layer model: set it to none, or lower the prompts per side).")
    result = ui.run("circuits", params, choice)
    if result is not None:
        s = result.summary
        cols = st.columns(4)
        for i, ref in enumerate(("ablation", "ground_truth")):
            block = s.get(f"vs_{ref}")
            if block and block.get("node_roc_auc_mean") is not None:
                cols[i].metric(f"Node ROC-AUC vs {ref.replace('_', ' ')}",
                               f"{block['node_roc_auc_mean']:.3f} ± {block['node_roc_auc_sd']:.3f}")
        rt = s.get("runtimes_s", {})
        cols[2].metric("SAE run (s)", f"{rt.get('sae_run', 0):.1f}")
        if rt.get("ablation") is not None:
            ratio = rt["ablation_over_sae"]
            cols[3].metric("Ablation (s)", f"{rt['ablation']:.1f}",
                           f"{ratio:.1f}× the SAE's time" if ratio >= 1 else f"{1 / ratio:.1f}× faster than the SAE",
                           delta_color="off")
        agreement = agreement_sentence(s)
        if agreement:
            st.caption(agreement)
        if s.get("ground_truth"):
            st.caption(f"Ground truth: {s['ground_truth']['source']} ({s['ground_truth']['n_heads']} heads, "
                       f"matched by {s['ground_truth']['matched_by']}).")
        ui.show_figure(result)
        ui.show_table(result)
        with st.expander("Summary (all numbers)"):
            st.json(s)
