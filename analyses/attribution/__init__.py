"""attribution: attention patterns, direct logit attribution, activation and attribution patching.

Four analyses on any decoder-only model hooked through TransformerBridge (docs/methods.md,
"Attention, DLA and patching"):

- ``attention_patterns``: a layer x head grid of a prompt's patterns, one head large, and per-head
  previous-token / induction / duplicate-token / current-token / sink scores over a prompt set
  (:mod:`.patterns`; patterns from the activation store, only the layers asked for);
- ``logit_attribution``: the final residual split into embedding, heads, MLPs and biases, each read
  off the answer's unembedding direction with the final norm's scale frozen (:mod:`.dla`; clean
  activations from the store);
- ``activation_patching``: the normalised logit difference with one activation of the corrupted run
  replaced by its clean value, over a grid of resid_pre / attn_out / mlp_out / head-z cells;
- ``attribution_patching``: the first-order estimate of the same grid from one clean forward, one
  corrupted forward and one backward, beside exact patching with their correlation and speed ratio
  (:mod:`.patching`; forwards with interventions through :mod:`workbench.hooked`).

Prompt pairs come from parameters or the core's task generators (:mod:`.inputs`,
:mod:`workbench.tasks`). Figures: :mod:`.pattern_figures`, :mod:`.figures`.
"""

from __future__ import annotations

import numpy as np

from workbench.analysis import AnalysisSpec, RunContext, register
from workbench.data import TokenDataset
from workbench.params import Param

from .dla import accumulated, decompose, dla_hooks, dla_table, layer_totals, scored_items
from .figures import (attribution_figure, dla_figure, dla_heads_figure, dla_layers_figure, patching_figure,
                      patching_grid)
from .inputs import (DLA_INPUT_PARAMS, PATCH_INPUT_PARAMS, build_task, logit_diff_metric, metric_name,
                     require_decoder, token_labels)
from .pattern_figures import head_figure, pattern_grid, scores_figure
from .patching import (PATCH_PARAMS, attribution_patching, comparison, exact_patching, make_grid, scores_summary,
                       top_cells)
from .patterns import PATTERN_PARAMS, SCORES, head_scores, run_patterns
from .results_tables import TABLES

__all__ = ["attention_patterns", "logit_attribution", "activation_patching", "attribution_patching_run",
           "pattern_grid", "head_figure", "scores_figure", "dla_figure", "dla_heads_figure", "dla_layers_figure",
           "patching_figure", "attribution_figure", "patching_grid", "head_scores", "SCORES", "build_task",
           "logit_diff_metric", "token_labels"]


def attention_patterns(ctx: RunContext):
    model = ctx.require_model()
    require_decoder(model, "attention_patterns")
    return run_patterns(ctx, model, ctx.params)


def logit_attribution(ctx: RunContext):
    """DLA of the clean prompts' targets: one row per (scored position, part); see :mod:`.dla`."""
    model = ctx.require_model()
    require_decoder(model, "logit_attribution")
    task = build_task(model, ctx.params, ctx.seed, paired=False)
    hooks = dla_hooks(model.n_layers)
    dataset = TokenDataset(f"attribution-{task.name}-clean", task.positive)
    entry = ctx.activations([h for group in hooks.values() for h in group], dataset=dataset,
                            batch_size=int(ctx.params["batch_size"]))
    try:
        items = scored_items(task, entry)
        parts, checks = decompose(entry, items, model.bridge)
    finally:
        entry.close()
    table = dla_table(parts + accumulated(parts, model.n_layers), items)
    total = sum(p["values"] for p in parts)
    logit_diff = checks.pop("logit_diff")
    heads = table[table["kind"] == "head"].groupby("label")["attribution"].mean()
    summary = {"task": task.name, "metric": metric_name(task).replace("log-probability", "logit"),
               "n_prompts": len(task.positive), "n_positions": len(items.index),
               "logit_diff": float(logit_diff.mean()), "sum_of_parts": float(total.mean()),
               "sum_error": float((total - logit_diff).abs().max()), **checks,
               "top_heads": heads.sort_values(ascending=False).index[:10].tolist(),
               "bottom_heads": heads.sort_values().index[:5].tolist(),
               "layer_totals": layer_totals(table)}
    if summary["remainder_max_abs"] > 1e-3 * max(1.0, abs(summary["logit_diff"])):
        ctx.warn(f"The sublayer outputs miss part of the final residual (|remainder| up to "
                 f"{summary['remainder_max_abs']:.3g}): this architecture has something between blocks that the "
                 "parts do not name; it is kept as the 'remainder' row.")
    return table, summary


def _patch_run(ctx: RunContext, attribution: bool):
    model = ctx.require_model()
    require_decoder(model, ctx.analysis)
    p = ctx.params
    task = build_task(model, p, ctx.seed, paired=True)
    grid = make_grid(model, task, p)
    bridge, batch = model.bridge, int(p["batch_size"])
    table = grid.frame.copy()
    exact = None
    if not attribution or p["compare_exact"]:
        exact = exact_patching(bridge, task, grid, batch,
                               progress=lambda d, t: ctx.progress(d, t, f"patching {grid.point}"))
        table["effect" if not attribution else "exact"] = exact.effect
    if not attribution:
        summary = scores_summary(exact, grid, task, metric_name(task))
        summary["top_cells"] = top_cells(table, "effect")
        return table, summary
    approx = attribution_patching(bridge, task, grid, batch)
    table["attribution"] = approx.effect
    if exact is None:
        table["exact"] = np.nan
    summary = scores_summary(approx, grid, task, metric_name(task))
    summary["n_backwards"] = approx.n_backwards
    summary["top_cells"] = top_cells(table, "attribution")
    if exact is not None:
        summary["comparison"] = comparison(exact, approx)
        summary["top_cells_exact"] = top_cells(table, "exact")
    return table, summary


def activation_patching(ctx: RunContext):
    """Exact activation patching of one grid; see :mod:`.patching`."""
    return _patch_run(ctx, attribution=False)


def attribution_patching_run(ctx: RunContext):
    """Attribution patching of one grid, beside exact patching; see :mod:`.patching`."""
    return _patch_run(ctx, attribution=True)


register(AnalysisSpec(
    name="attention_patterns", title="Attention patterns",
    question="Where does each head look, and which heads are previous-token, induction, duplicate-token or "
             "attention-sink heads?",
    run=attention_patterns, figure=pattern_grid, params=dict(PATTERN_PARAMS), inputs=("task",),
    page="app_pages/8_Attribution.py", figures={"head": head_figure, "scores": scores_figure}))

register(AnalysisSpec(
    name="logit_attribution", title="Direct logit attribution",
    question="Which heads and MLPs write the answer's logit difference directly into the final residual stream?",
    run=logit_attribution, figure=dla_figure, params=dict(DLA_INPUT_PARAMS), inputs=("task",),
    page="app_pages/8_Attribution.py", figures={"heads": dla_heads_figure, "layers": dla_layers_figure},
    readme_tables=TABLES))

register(AnalysisSpec(
    name="activation_patching", title="Activation patching",
    question="Which activations, moved from the clean run into the corrupted one, restore the clean answer?",
    run=activation_patching, figure=patching_figure, params={**PATCH_INPUT_PARAMS, **PATCH_PARAMS},
    inputs=("task",), page="app_pages/8_Attribution.py"))

register(AnalysisSpec(
    name="attribution_patching", title="Attribution patching",
    question="How well does one backward pass (attribution patching) predict exact activation patching, and how "
             "much faster is it?",
    run=attribution_patching_run, figure=attribution_figure,
    params={**PATCH_INPUT_PARAMS, **PATCH_PARAMS,
            "compare_exact": Param(True, "also run exact activation patching on the same grid (for the correlation "
                                         "and the speed ratio)")},
    inputs=("task",), page="app_pages/8_Attribution.py"))
