"""circuits: which attention heads form the circuit for a task (SAE circuit finding + ablation).

The SAE method of O'Neill & Bui (arXiv 2405.12522; docs/methods.md, "SAE circuits") on any hooked
decoder-only model, the ablation baseline it is checked against (one forward pass per head),
published ground truths where the loaded model is the one they belong to (docs/methods.md,
"Ground-truth circuits"), and attention-pattern scores for induction circuits. A pure back-end:
clean activations come from the activation store, forwards with interventions from
:mod:`workbench.hooked`. Modules:

- :mod:`.sae` the shared SAE with the official code's quirks; :mod:`.scoring` node / edge scores,
  ROC-AUC, the paper's "F1" (harmonic mean of TPR and TNR) and true precision / recall;
- :mod:`.tasks` IOI, greater-than, docstring, induction and CSV tasks; :mod:`.heads` per-head
  outputs from the store; :mod:`.sae_method` the SAE trials; :mod:`.ablation` the baseline;
  :mod:`.attention` previous-token / induction scores; :mod:`.ground_truth` the shipped
  ground-truth files; :mod:`.report` the table and summary; :mod:`.pipeline` :func:`find_circuit`,
  everything together.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis import AnalysisSpec, RunContext, register
from workbench.errors import WorkbenchError
from workbench.results import Result

from .attention import attention_scores
from .heads import context_reader, store_reader
from .pipeline import DEFAULTS, PARAMS, check_params, find_circuit
from .sae import CircuitSAE, train_sae
from .scoring import circuit_scores, edge_node_scores, node_scores, unique_cooccurrences
from .tasks import Task, make_task

__all__ = ["find_circuit", "attention_scores", "CircuitSAE", "train_sae", "circuit_scores", "node_scores",
           "edge_node_scores", "unique_cooccurrences", "Task", "make_task", "store_reader", "context_reader", "run",
           "figure"]


def run(ctx: RunContext):
    model = ctx.require_model()
    if model.kind != "decoder" or model.bridge is None:
        raise WorkbenchError(f"circuits needs a decoder-only model (attention heads through TransformerBridge); "
                             f"{model.name} is a {model.kind}. Try smollm2-135m or attn-only-induction.")
    params = {k: v for k, v in ctx.params.items() if k in DEFAULTS}
    return find_circuit(model, read=context_reader(ctx), seed=ctx.seed, progress=ctx.progress, **params)


def _grid(table, column):
    n_layers = int(table["layer"].max()) + 1
    n_heads = int(table["head"].max()) + 1
    grid = np.full((n_layers, n_heads), np.nan)
    grid[table["layer"].to_numpy(), table["head"].to_numpy()] = table[column].to_numpy(dtype=float)
    return grid


def figure(result: Result):
    """Heatmaps (layer x head): SAE node score, ablation effect; reference heads outlined."""
    table = result.table
    panels = [("sae_score", "SAE node score (mean over seeds)")]
    if "ablation_effect" in table:
        panels.append(("ablation_effect", "Ablation effect (metric drop)"))
    if "induction_score" in table:
        panels.append(("induction_score", "Induction score"))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t in panels], horizontal_spacing=0.08)
    for i, (col, title) in enumerate(panels, start=1):
        fig.add_trace(go.Heatmap(z=_grid(table, col), colorscale="Viridis", showscale=(i == len(panels)),
                                 hovertemplate="layer %{y}, head %{x}<br>" + col + " %{z:.4g}<extra></extra>"),
                      row=1, col=i)
        for mark, symbol, name in (("ground_truth", "x", "ground truth"), ("in_ablation_circuit", "circle-open",
                                                                            "ablation circuit")):
            if mark in table and table[mark].notna().all() and table[mark].astype(bool).any():
                sel = table[table[mark].astype(bool)]
                fig.add_trace(go.Scatter(x=sel["head"], y=sel["layer"], mode="markers", name=name,
                                         marker=dict(symbol=symbol, size=9, color="red" if mark == "ground_truth"
                                                     else "white", line=dict(width=2, color="red")),
                                         showlegend=(i == 1)), row=1, col=i)
        fig.update_xaxes(title_text="head", row=1, col=i)
        fig.update_yaxes(title_text="layer", row=1, col=i, autorange="reversed")
    s = result.summary or {}
    parts = [f"task {s.get('task')}"]
    for ref in ("ablation", "ground_truth"):
        block = s.get(f"vs_{ref}")
        if block and block.get("node_roc_auc_mean") is not None:
            parts.append(f"node ROC-AUC vs {ref.replace('_', ' ')} {block['node_roc_auc_mean']:.3f}"
                         f" ± {block['node_roc_auc_sd']:.3f}")
    fig.update_layout(title="; ".join(parts), height=420 + 8 * int(table["layer"].max()),
                      width=max(700, 420 * len(panels)))
    return fig


from .results_tables import TABLES  # noqa: E402

register(AnalysisSpec(
    name="circuits",
    title="Circuits (SAE circuit finding)",
    question="Which attention heads form the circuit that does this task, and does the cheap SAE method "
             "agree with ablating every head?",
    run=run,
    figure=figure,
    params=dict(PARAMS),
    check_params=check_params,
    inputs=("task",),
    page="pages/6_Circuits.py",
    readme_tables=TABLES,
))
