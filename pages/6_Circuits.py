"""Circuits page: which heads do a task (SAE circuit finding vs ablating every head)."""

import streamlit as st

from workbench import ui
from workbench.errors import WorkbenchError

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
choice = ui.sidebar(model_kinds=("decoder",), need_data=False)

c = st.columns(4)
task = c[0].selectbox("Task", ["ioi", "greater_than", "docstring", "induction", "csv"], key="circ_task",
                      help="csv: your own prompt pairs (columns positive, negative, answer, optional wrong)")
n_examples = c[1].number_input("Prompts per side", 4, 1000, 50, key="circ_n",
                               help="positive prompts and as many negatives; the paper uses 250")
seeds = c[2].number_input("Trials (seeds)", 1, 50, 5, key="circ_seeds")
seed = c[3].number_input("First seed", 0, 2**31 - 1, 0, key="circ_seed")
task_file = ""
if task == "csv":
    upload = st.file_uploader("Task CSV", type=["csv"], key="circ_csv")
    if upload is not None:
        try:
            task_file = str(ui._save_upload(upload))
        except WorkbenchError as exc:
            st.error(str(exc))
c = st.columns(4)
ablation = c[0].selectbox("Ablation baseline", ["mean", "patch", "none"], key="circ_abl",
                          help="none skips it (one forward pass per head is the slow part)")
position = c[1].selectbox("Head output", ["mean", "final"], key="circ_pos",
                          format_func=lambda s: {"mean": "mean over positions", "final": "final position"}[s])
threshold = c[2].number_input("Circuit threshold", 0.0, 1.0, 0.02, 0.01, key="circ_thr",
                              help="reference circuit: heads whose ablation removes at least this share of "
                                   "the clean-minus-negative metric gap")
period = c[3].number_input("Induction period", 2, 500, 50, key="circ_period", disabled=task != "induction")
with st.expander("SAE settings"):
    c = st.columns(5)
    n_features = c[0].number_input("Features", 2, 5000, 200, key="circ_feat")
    lam = c[1].number_input("L1 λ (0 = task default)", 0.0, 10.0, 0.0, 0.005, format="%.3f", key="circ_lam")
    n_epochs = c[2].number_input("Epochs", 1, 100_000, 500, key="circ_epochs")
    lr = c[3].number_input("Learning rate", 1e-5, 1.0, 1e-3, format="%.4f", key="circ_lr")
    n_sae = c[4].number_input("Training examples", 1, 1000, 10, key="circ_nsae")
    edges = st.checkbox("Edge (co-occurrence) score", True, key="circ_edges")

params = {
    "task": task, "task_file": task_file, "n_examples": int(n_examples), "seeds": int(seeds), "seed": int(seed),
    "ablation": ablation, "position": position, "circuit_threshold": float(threshold), "period": int(period),
    "n_features": int(n_features), "lambda": float(lam) if lam > 0 else None, "n_epochs": int(n_epochs),
    "lr": float(lr), "n_sae_examples": int(n_sae), "edges": bool(edges),
}
if task == "csv" and not task_file:
    st.info("Upload a task CSV to run the csv task.")
else:
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
            cols[3].metric("Ablation (s)", f"{rt['ablation']:.1f}", f"{rt['ablation_over_sae']:.1f}× slower",
                           delta_color="off")
        if s.get("ground_truth"):
            st.caption(f"Ground truth: {s['ground_truth']['source']} ({s['ground_truth']['n_heads']} heads, "
                       f"matched by {s['ground_truth']['matched_by']}).")
        ui.show_figure(result)
        ui.show_table(result)
        with st.expander("Summary (all numbers)"):
            st.json(s)
