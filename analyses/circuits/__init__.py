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
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis import AnalysisSpec, RunContext, register
from workbench.errors import WorkbenchError
from workbench.params import validate_params
from workbench.results import Result

from .attention import attention_scores
from .heads import context_reader, store_reader
from .pipeline import DEFAULTS, PARAMS, check_params, find_circuit, run_phases
from .report import agreement_sentence
from .sae import CircuitSAE, train_sae
from .scoring import circuit_scores, edge_node_scores, node_scores, unique_cooccurrences
from .tasks import Task, make_task

__all__ = ["find_circuit", "attention_scores", "CircuitSAE", "train_sae", "circuit_scores", "node_scores",
           "edge_node_scores", "unique_cooccurrences", "Task", "make_task", "store_reader", "context_reader", "run",
           "figure", "agreement_sentence"]


def run(ctx: RunContext):
    model = ctx.require_model()
    if model.kind != "decoder" or model.bridge is None:
        raise WorkbenchError(f"circuits needs a decoder-only model (attention heads through TransformerBridge); "
                             f"{model.name} is a {model.kind}. Try smollm2-135m or attn-only-induction.")
    params = {k: v for k, v in ctx.params.items() if k in DEFAULTS}
    ctx.plan(run_phases(validate_params("circuits", PARAMS, params)))
    return find_circuit(model, read=context_reader(ctx), seed=ctx.seed, progress=ctx.progress, phase=ctx.phase,
                        **params)


def _grid(table, column):
    n_layers = int(table["layer"].max()) + 1
    n_heads = int(table["head"].max()) + 1
    grid = np.full((n_layers, n_heads), np.nan)
    grid[table["layer"].to_numpy(), table["head"].to_numpy()] = table[column].to_numpy(dtype=float)
    return grid


def preview_examples(model_name: str, params: dict, n: int = 3) -> pd.DataFrame:
    """The first ``n`` prompt pairs the task makes for this model (its tokenizer only, no weights)."""
    from workbench.models import load_tokenizer
    from workbench.tasks import make_task

    p = {**DEFAULTS, **params}
    task = make_task(str(p["task"]), load_tokenizer(model_name), max(int(n), 1), seed=int(p.get("seed", 0)),
                     task_file=p.get("task_file") or None, period=int(p["period"]), prepend_bos=bool(p["prepend_bos"]))
    rows = []
    for i in range(min(n, len(task.positive))):
        pos = task.texts_positive[i] if i < len(task.texts_positive) else str(task.positive[i][:20])
        neg = task.texts_negative[i] if i < len(task.texts_negative) else str(task.negative[i][:20])
        rows.append({"positive prompt": pos, "negative prompt": neg, "tokens": len(task.positive[i])})
    return pd.DataFrame(rows)


PANELS = (("sae_score", "SAE node score"), ("ablation_effect", "ablation effect (metric drop)"),
          ("induction_score", "induction score"))


def roc_points(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the threshold sweep of ``scores`` against the boolean ``truth`` (ties together)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(truth.astype(int), scores)
    return fpr, tpr


def _reference(table: pd.DataFrame) -> tuple[str, np.ndarray] | None:
    for mark, name in (("ground_truth", "ground truth"), ("in_ablation_circuit", "ablation circuit")):
        if mark in table and table[mark].notna().all() and table[mark].astype(bool).any():
            return name, table[mark].astype(bool).to_numpy()
    return None


def figure(result: Result):
    """Layer × head heatmaps (SAE node score, ablation effect, induction score), each with its own
    colour bar, the reference heads marked, and the ROC curve of the SAE score against the reference."""
    table = result.table
    s = result.summary or {}
    # the baseline that made the circuit: mean ablation or activation patching (ablation=patch)
    patching = (s.get("ablation") or {}).get("mode") == "patch"
    baseline = "activation-patching" if patching else "mean-ablation"
    panels = [(c, "patching effect (metric drop)" if patching and c == "ablation_effect" else t)
              for c, t in PANELS if c in table and table[c].notna().any()]
    ref = _reference(table)
    n = len(panels) + (ref is not None)
    ref_name = None if ref is None else f"{baseline} circuit" if ref[0] == "ablation circuit" else ref[0]
    titles = [t for _, t in panels] + ([f"ROC of the SAE score<br>vs the {ref_name}"] if ref else [])  # fits a panel
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=0.13)
    for i, (col, title) in enumerate(panels, start=1):
        # one colour bar per panel, beside it: the panels measure different things
        x_end = fig.layout[f"xaxis{'' if i == 1 else i}"].domain[1]
        fig.add_trace(go.Heatmap(z=_grid(table, col), colorscale="Viridis", colorbar=dict(x=x_end + 0.005, len=0.8,
                                 thickness=10, title=dict(text=title.split(" (")[0], side="right")),
                                 hovertemplate="layer %{y}, head %{x}<br>" + col + " %{z:.4g}<extra></extra>"),
                      row=1, col=i)
        if ref is not None:
            sel = table[ref[1]]
            fig.add_trace(go.Scatter(x=sel["head"], y=sel["layer"], mode="markers", name=ref_name, showlegend=i == 1,
                                     marker=dict(symbol="circle-open", size=10, line=dict(width=2, color="red"))),
                          row=1, col=i)
        # whole layers and heads only (the default ticks put half-layers between rows)
        n_layers, n_heads = int(table["layer"].max()) + 1, int(table["head"].max()) + 1
        fig.update_xaxes(title_text="head", row=1, col=i, tickmode="linear", tick0=0, dtick=max(1, n_heads // 8))
        # the axis title on the first grid only: the others' would sit on the colour bar to their left
        fig.update_yaxes(title_text="layer" if i == 1 else None, row=1, col=i, autorange="reversed",
                         tickmode="linear", tick0=0, dtick=max(1, n_layers // 10))
    if ref is not None:
        fpr, tpr = roc_points(table["sae_score"].to_numpy(), ref[1])
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines+markers", name="SAE node score", line=dict(shape="hv"),
                                 showlegend=False), row=1, col=n)
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"),
                                 showlegend=False, hoverinfo="skip"), row=1, col=n)
        fig.update_xaxes(title_text="false positive rate", range=[0, 1], row=1, col=n)
        fig.update_yaxes(title_text="true positive rate", range=[0, 1.02], row=1, col=n)
    parts = [f"task {s.get('task')}"]
    for which, name in (("ablation", f"the {baseline} circuit"), ("ground_truth", "the ground truth")):
        block = s.get(f"vs_{which}")
        if block and block.get("node_roc_auc_mean") is not None:
            parts.append(f"node ROC-AUC vs {name} {block['node_roc_auc_mean']:.3f}"
                         f" ± {block['node_roc_auc_sd']:.3f}")
    fig.update_layout(title="; ".join(parts), height=440 + 8 * int(table["layer"].max()),
                      width=max(760, 430 * n), template="plotly_white",
                      legend=dict(orientation="h", y=-0.18, x=0), margin=dict(t=80, b=90))
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
    page="app_pages/6_Circuits.py",
    readme_tables=TABLES,
))
