"""layer_quality: which layer holds the best representations? (docs/methods.md, "Layer-wise quality")

Per layer l = 0..L, the unsupervised metrics of Skean et al. 2025 ("Layer by Layer", arXiv
2502.02013) beside two downstream scores, so one can see which metric tracks quality:

- ``prompt_entropy``, ``dataset_entropy``: matrix-based alpha-Renyi entropy of the token / prompt
  vectors (centred, row-normalised, trace-normalised Gram matrix), normalised by default;
- ``effective_rank`` (Roy & Vetterli) and ``twonn`` (intrinsic dimension, :func:`workbench.stats.twonn`)
  of the prompt vectors;
- ``curvature`` of each prompt's token trajectory;
- ``infonce`` / ``infonce_mi_lower_bound``, ``lidar``, ``dime`` over seeded text augmentations
  (``augment.py``) of the first ``aug_texts`` prompts;
- ``probe_accuracy`` (cross-validated logistic regression on labelled texts, default the built-in
  ``topics`` set), ``retrieval_recall_at_1`` / ``retrieval_mrr`` (title -> abstract).

With ``transform`` (``workbench.stats.transform_params``: clip / remove outliers, whiten, whiten_k,
remove_top_pcs) the probe and the retrieval are scored again on transformed vectors, beside the
untransformed scores (``*_transformed`` columns, the fits in the summary's ``transform``);
``pooling="first_last"`` is WhiteningBERT's first + last layer combination (:mod:`.transformed`;
docs/methods.md, "Outliers, whitening and layer similarity").

The summary holds the Spearman correlation of every metric with probe accuracy across layers, the
recommended layer with its reason, the augmentation settings (with examples) and the time per metric.
One extraction per dataset: residual states of every layer are asked from the store once for the
prompts, once for the augmented copies, once each for the probe and retrieval sets (cache hits when
they coincide). On a user matrix of sentence vectors only ``dataset_entropy``, ``effective_rank`` and
``twonn`` apply.

Pure functions: :mod:`.metrics` (every metric), :mod:`.augment`, :mod:`.downstream`, and
:func:`.core.layer_row` (one layer's row from arrays).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from workbench.analysis import AnalysisSpec, Param, RunContext, defaults_of, register
from workbench.data import TextDataset, load_dataset
from workbench.errors import WorkbenchError
from workbench.results import Result
from workbench.retrieval import mrr_standard_error, reciprocal_ranks
from workbench.stats.transform_params import TRANSFORM_PARAMS, layer_transform_for

from . import results_tables

from . import metrics
from .augment import AugmentSettings, augment_texts
from .core import METRIC_COLUMNS, METRIC_LABELS, POOLINGS, VECTOR_METRICS, layer_row, timed
from .downstream import best_vs_last, metric_correlations, recommend_layer, retrieval_scores, topic_probe
from .metrics import CURVATURE_VARIANTS, ENTROPY_NORMALIZATIONS
from .transformed import before_after, combine_hook, pooled, prompt_states, transformed_downstream

DOWNSTREAM_COLUMNS = ("probe_accuracy", "probe_accuracy_std", "retrieval_recall_at_1", "retrieval_mrr",
                      "retrieval_mrr_se")

DEFINITIONS = {
    "prompt_entropy": "mean over prompts of H_alpha of the trace-normalised Gram matrix of the prompt's "
                      "centred, row-normalised token states, / min(log N_tokens, log D) under maxEntropy",
    "dataset_entropy": "the same on the matrix of prompt vectors (mean-pooled states)",
    "effective_rank": "Roy-Vetterli exp(-sum p log p), p = singular values / their sum, of the centred, "
                      "row-normalised prompt vectors",
    "curvature": "mean angle between consecutive token-to-token steps (paper: [0, pi]; abs_cos: [0, pi/2])",
    "infonce": "InfoNCE loss between augmentation views 0 and 1 (L2-normalised pooled states), tau = temperature",
    "infonce_mi_lower_bound": "1 - infonce / log N",
    "lidar": "H_alpha of Sw^-1/2 Sb Sw^-1/2 over n_augmentations views per prompt (+ lidar_delta I)",
    "dime": "E_P[H(K_A o P K_B P^T)] - H(K_A o K_B), N x N Gram matrices of views 0 and 1",
    "twonn": "TwoNN intrinsic dimension of the prompt vectors (workbench.stats.twonn)",
    "probe_accuracy": "k-fold cross-validated logistic-regression accuracy on mean-pooled states",
    "retrieval_mrr": "mean reciprocal rank of the true abstract for each title (cosine, per-set centred)",
    "retrieval_mrr_se": "standard error of the MRR over queries (sample std of the reciprocal ranks / sqrt(N))",
}



def _zero_or_at_least_two(n: int) -> int:
    if n == 1:
        raise ValueError("1 is neither 0 nor >= 2")
    return n


PARAMS = {
    "max_texts": Param(200, "prompts (the first N texts) for the prompt-level and dataset-level metrics "
                       "(TwoNN and the entropies need at least 3)", min=3),
    "max_length": Param(128, "tokens per text (longer texts are truncated)", min=1),
    "skip_first": Param(False, "leave out position 0 of each text (BOS / attention-sink massive activations)"),
    "pooling": Param("mean", "prompt vector: 'mean' of token states, 'normalized_mean' (centre + row-normalise "
                     "first), or 'first_last' (WhiteningBERT: states of layer combine_layer and layer l averaged, "
                     "then the mean)", choices=POOLINGS),
    "combine_layer": Param(1, "the layer first_last pooling averages in (1 = the first block's output, 0 = the "
                           "embeddings)", min=0),
    "alpha": Param(1.0, "Renyi order of the matrix entropies (1 = von Neumann)", min=0, closed="neither"),
    "normalization": Param("maxEntropy", "entropy normalisation: " + ", ".join(ENTROPY_NORMALIZATIONS),
                           choices=ENTROPY_NORMALIZATIONS),
    "clamp": Param(False, "clamp Gram entries at 0 before the entropy (the reference code's quirk)"),
    "curvature": Param("paper", "curvature variant: 'paper' (angle in [0, pi]) or 'abs_cos' (reference code, "
                       "[0, pi/2])", choices=CURVATURE_VARIANTS),
    "aug_texts": Param(32, "prompts that get augmented copies (0 = skip InfoNCE, LiDAR and DiME; else >= 2)", min=0,
                       check=_zero_or_at_least_two, allowed="0 (skip) or an integer >= 2"),
    "n_augmentations": Param(16, "augmented copies per prompt (LiDAR uses all, InfoNCE/DiME the first two)", min=2),
    "aug_max_words": Param(32, "augment only the first N words of each prompt (0 = all)", min=0),
    "aug_word_p": Param(0.3, "share of eligible words changed by each augmentation step", min=0, max=1),
    "aug_char_p": Param(0.3, "share of characters changed in a chosen word", min=0, max=1),
    "temperature": Param(0.1, "InfoNCE temperature", min=0, closed="neither"),
    "dime_permutations": Param(10, "random permutations averaged in DiME", min=1),
    "lidar_delta": Param(1e-4, "ridge added to LiDAR's within-class scatter", min=0, closed="neither"),
    "probe_data": Param("auto", "labelled texts for the topic probe: 'auto' (the run's data if labelled, else the "
                        "built-in topics set), a built-in name, a file, or '' to skip"),
    "probe_max_texts": Param(0, "use N labelled texts, each label in its share (the first texts of each "
                                "label; 0 = all)", min=0),
    "probe_folds": Param(5, "cross-validation folds of the probe", min=2),
    "retrieval_data": Param("abstracts", "a table with query and document columns (default: the sample abstracts); "
                            "'' to skip"),
    "retrieval_query_column": Param("title", "query column (default title)"),
    "retrieval_doc_column": Param("abstract", "document column (default abstract)"),
    "retrieval_pairs": Param(200, "use the first N pairs (0 = all; retrieval needs at least 2)", min=0,
                             check=_zero_or_at_least_two, allowed="0 (all) or an integer >= 2"),
    **TRANSFORM_PARAMS,
}
DEFAULTS = defaults_of(PARAMS)


def _vectors_run(ctx: RunContext):
    X = np.asarray(ctx.vectors)
    timings: dict = {}
    row = {"layer": 0, "hook": "vectors", **layer_row(pooled=X, params=ctx.params, timings=timings,
                                                      metrics=VECTOR_METRICS)}
    table = pd.DataFrame([row])
    summary = {"input": "vectors", "n_vectors": int(X.shape[0]), "dimension": int(X.shape[1]),
               "metrics": list(VECTOR_METRICS), "timings_s": {k: round(v, 4) for k, v in timings.items()},
               "note": "only metrics of sentence vectors apply to a user matrix: no tokens, no augmentations",
               "definitions": {k: DEFINITIONS[k] for k in VECTOR_METRICS}}
    return table, summary


def run(ctx: RunContext):
    p = ctx.params
    if ctx.model is None and ctx.vectors is not None:
        return _vectors_run(ctx)
    model = ctx.require_model()
    data = ctx.require_dataset()
    ds = data.subset(int(p["max_texts"]))
    hooks = model.resid_hooks()
    L = len(hooks)
    max_length = int(p["max_length"])
    metric_params = {**p, "seed": ctx.seed}
    timings: dict = {}
    n_aug_prompts, A = min(int(p["aug_texts"]), len(ds)), int(p["n_augmentations"])
    probe_ds, retr = _probe_dataset(ctx, data), _retrieval_datasets(p)
    ctx.plan(_phases(len(ds), max_length, n_aug_prompts * A if n_aug_prompts >= 2 else 0, probe_ds, retr, L))
    ctx.phase("extract the texts")
    t0 = time.perf_counter()
    entry = ctx.activations(hooks, max_length=max_length, dataset=ds)
    timings["extract_prompts"] = time.perf_counter() - t0
    first = combine_hook(hooks, p)
    lt = layer_transform_for(ctx, hooks, max_length, lambda e, hook: pooled(e, hook, p, first))

    # ---- augmented copies: a second dataset, one extraction
    aug_entry, aug_info = None, {"used": False}
    if n_aug_prompts >= 2:
        ctx.phase("extract the augmented copies")
        settings = AugmentSettings(word_p=float(p["aug_word_p"]), char_p=float(p["aug_char_p"]),
                                   max_words_per_text=int(p["aug_max_words"]) or None)
        copies = augment_texts(ds.texts[:n_aug_prompts], A, seed=ctx.seed, settings=settings)
        aug_ds = TextDataset.from_texts([t for row in copies for t in row], name=f"{ds.name}-augmented")
        t0 = time.perf_counter()
        aug_entry = ctx.activations(hooks, max_length=max_length, dataset=aug_ds)
        timings["extract_augmented"] = time.perf_counter() - t0
        aug_info = {"used": True, "n_prompts": n_aug_prompts, "n_augmentations": A, "seed": ctx.seed,
                    "settings": settings.as_dict(), "method": "seeded split / random-char / keyboard "
                    "edits in the spirit of nlpaug Sequential(SplitAug, RandomCharAug, KeyboardAug)",
                    "examples": [{"original": " ".join(ds.texts[0].split()[:settings.max_words_per_text or None]),
                                  "augmented": copies[0][:2]}]}

    # ---- probe and retrieval sets
    probe_entry = probe_labels = None
    if probe_ds is not None:
        ctx.phase("extract the probe set")
        t0 = time.perf_counter()
        probe_entry = ctx.activations(hooks, max_length=max_length, dataset=probe_ds)
        timings["extract_probe"] = time.perf_counter() - t0
        probe_labels = np.asarray([str(x) for x in probe_ds.labels])
    retr_entries = None
    if retr is not None:
        ctx.phase("extract the retrieval set")
        t0 = time.perf_counter()
        retr_entries = tuple(ctx.activations(hooks, max_length=max_length, dataset=d) for d in retr)
        timings["extract_retrieval"] = time.perf_counter() - t0

    # ---- per layer
    ctx.phase("metrics per layer")
    rows = []
    for layer, hook in enumerate(hooks):
        ctx.progress(layer, L, f"layer {layer}/{L - 1}: metrics")
        prompts = prompt_states(entry, hook, first)
        views = None
        if aug_entry is not None:
            with timed(timings, "pooling"):
                flat = pooled(aug_entry, hook, p, first)
            views = flat.reshape(n_aug_prompts, A, -1)
        row = {"layer": layer, "depth": layer / max(L - 1, 1), "hook": hook,
               **layer_row(prompts, None, views, params=metric_params, timings=timings),
               **_downstream(layer, hook, (probe_entry, probe_labels), retr_entries, lt, first, p, ctx.seed, timings)}
        rows.append(row)
    ctx.progress(L, L, "done")
    table = pd.DataFrame(rows)
    table.insert(0, "model", model.name)

    summary = _summary(table, p, ds, entry, aug_info, probe_ds, probe_labels, retr, timings)
    summary["transform"] = before_after(table, lt)
    if first is not None:
        summary["pooling"] = {"pooling": "first_last", "combine_layer": int(p["combine_layer"]),
                              "definition": "token states of layer combine_layer and layer l averaged, then the mean "
                                            "over tokens (WhiteningBERT's first-last at l = L)"}
    return table, summary


def _downstream(layer: int, hook: str, probe_set: tuple, retr_entries, lt, first, p: dict, seed: int,
                timings: dict) -> dict:
    """One layer's topic probe and retrieval, and their transformed scores (``transform``)."""
    row, probe, retrieval = {}, None, None
    probe_entry, probe_labels = probe_set
    if probe_entry is not None:
        with timed(timings, "pooling"):
            X = pooled(probe_entry, hook, p, first)
        with timed(timings, "probe"):
            row["probe_accuracy"], row["probe_accuracy_std"] = topic_probe(
                X, probe_labels, n_splits=int(p["probe_folds"]), seed=seed)
        probe = (X, probe_labels)
    if retr_entries is not None:
        with timed(timings, "pooling"):
            Q, D = (pooled(e, hook, p, first) for e in retr_entries)
        with timed(timings, "retrieval"):
            rr = reciprocal_ranks(Q, D)
            row["retrieval_recall_at_1"], row["retrieval_mrr"] = float(np.mean(rr == 1.0)), float(np.mean(rr))
            row["retrieval_mrr_se"] = mrr_standard_error(rr)
        retrieval = (Q, D)
    row.update(transformed_downstream(lt, layer, probe, retrieval, p, seed, timings))
    return row


def _phases(n_texts: int, max_length: int, n_augmented: int, probe_ds, retr, n_layers: int) -> list:
    """The run's phases weighed by rough token counts (a phase whose texts are cached goes by at once):
    abstracts fill ``max_length``; augmented copies are capped at ``aug_max_words`` words (~32 tokens),
    probe utterances ~16 tokens, titles ~16; the metrics cost about a tenth of a token per layer."""
    phases = [("extract the texts", n_texts * max_length)]
    if n_augmented:
        phases.append(("extract the augmented copies", n_augmented * 32))
    if probe_ds is not None:
        phases.append(("extract the probe set", len(probe_ds) * 16))
    if retr is not None:
        phases.append(("extract the retrieval set", len(retr[0]) * 16 + len(retr[1]) * max_length))
    phases.append(("metrics per layer", max(1.0, 0.1 * n_layers * n_texts * max_length / 30)))
    return phases


def _probe_dataset(ctx: RunContext, data: TextDataset) -> TextDataset | None:
    p = ctx.params
    spec = str(p["probe_data"] or "").strip()
    if not spec:
        return None
    if spec == "auto":
        ds = data if data.labels is not None else load_dataset("topics")
    else:
        ds = load_dataset(spec)
        if ds.labels is None:
            raise WorkbenchError(f"probe_data {spec!r} has no label column: give a table with a 'label' "
                                 "(or topic/category/class) column, or probe_data='' to skip the probe.")
    n = int(p["probe_max_texts"])
    return ds.stratified(n) if n > 0 else ds


def _retrieval_datasets(p: dict) -> tuple[TextDataset, TextDataset] | None:
    spec = str(p["retrieval_data"] or "").strip()
    if not spec:
        return None
    qcol, dcol = p["retrieval_query_column"], p["retrieval_doc_column"]
    docs = load_dataset(spec, text_column=dcol)
    if qcol not in docs.frame.columns:
        raise WorkbenchError(f"retrieval_data {spec!r} has no query column {qcol!r}; its columns are "
                             f"{list(docs.frame.columns)[:20]}. Set retrieval_query_column.")
    n = int(p["retrieval_pairs"]) or len(docs)
    docs = docs.subset(n)
    queries = docs.frame[qcol].astype(str).tolist()
    if len(queries) < 2:
        raise WorkbenchError("retrieval needs at least 2 query/document pairs.")
    qds = TextDataset.from_texts(queries, name=f"{docs.name}:{qcol}")
    return qds, docs


def _summary(table, p, ds, entry, aug_info, probe_ds, probe_labels, retr, timings) -> dict:
    metric_cols = [c for c in METRIC_COLUMNS if c in table and table[c].notna().any()]
    summary = {
        "n_prompts": int(entry.n_texts), "n_tokens": int(entry.n_tokens), "dataset": ds.name,
        "metrics": metric_cols, "augmentation": aug_info, "definitions": DEFINITIONS,
        "timings_s": {k: round(v, 3) for k, v in sorted(timings.items())},
        "reference_deviations": [
            "alpha = 1 is the von Neumann limit in nats (repitl.matrixAlphaEntropy fails at alpha = 1)",
            "no elementwise clamp of Gram entries unless clamp = true",
            "DiME always on N x N Gram matrices",
            "curvature in [0, pi] unless curvature = 'abs_cos'",
            "augmentations are the project's own nlpaug-like edits (no nlpaug dependency)",
        ],
    }
    if probe_ds is not None:
        _, counts = np.unique(probe_labels, return_counts=True)
        summary["probe"] = {"dataset": probe_ds.name, "n_texts": len(probe_ds), "n_labels": int(counts.size),
                            "majority_baseline": round(float(counts.max() / counts.sum()), 4),
                            "folds": int(p["probe_folds"]), "model": "StandardScaler + LogisticRegression(C=1)"}
        summary["spearman_with_probe_accuracy"] = {
            k: (None if not np.isfinite(v) else round(v, 4))
            for k, v in metric_correlations(table, "probe_accuracy", metric_cols + ["retrieval_mrr"]).items()}
    if retr is not None:
        summary["retrieval"] = {"queries": retr[0].name, "documents": retr[1].name, "n_pairs": len(retr[1])}
    summary["recommendation"] = recommend_layer(table, probe_folds=int(p["probe_folds"]))
    # the central claim of Skean et al.: an intermediate layer beats the last, on each downstream score
    claim = {"probe": best_vs_last(table, "probe_accuracy", "probe_accuracy_std",
                                   se_divisor=float(np.sqrt(int(p["probe_folds"])))),
             "retrieval": best_vs_last(table, "retrieval_mrr", "retrieval_mrr_se")}
    summary["intermediate_vs_last"] = {k: v for k, v in claim.items() if v is not None}
    return summary


def figure(result: Result):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table = result.table
    if "hook" in table and (table["hook"] == "vectors").all():
        cols = [c for c in VECTOR_METRICS if c in table]
        fig = go.Figure(go.Bar(x=cols, y=[table[c].iloc[0] for c in cols]))
        fig.update_layout(template="plotly_white", height=360, title="Quality metrics of the given vectors")
        return fig
    panels = [c for c in METRIC_COLUMNS if c in table and table[c].notna().any()]
    panels += [c for c in ("probe_accuracy", "retrieval_mrr", "retrieval_recall_at_1")
               if c in table and table[c].notna().any()]
    ncols = 4
    nrows = max(1, -(-len(panels) // ncols))
    rho = result.summary.get("spearman_with_probe_accuracy", {})
    titles = [METRIC_LABELS.get(c, c) + (f"  (ρ={rho[c]:+.2f})" if rho.get(c) is not None else "") for c in panels]
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=titles, vertical_spacing=0.12)
    best = result.summary.get("recommendation", {}).get("best_layer")
    for k, col in enumerate(panels):
        r, c = k // ncols + 1, k % ncols + 1
        for model_name, group in table.groupby("model", sort=False):
            spread = {"probe_accuracy": "probe_accuracy_std", "retrieval_mrr": "retrieval_mrr_se"}.get(col)
            err = dict(type="data", array=group[spread]) if spread in group else None
            fig.add_trace(go.Scatter(x=group["layer"], y=group[col], mode="lines+markers", name=model_name,
                                     legendgroup=model_name, showlegend=k == 0, error_y=err,
                                     hovertemplate=f"layer %{{x}}<br>{METRIC_LABELS.get(col, col)} %{{y:.4g}}"
                                                   f"<extra>{model_name}</extra>"),
                          row=r, col=c)
            after = f"{col}_transformed"
            if after in group and group[after].notna().any():
                name = f"{model_name} · {result.summary.get('transform', {}).get('transform', 'transformed')}"
                fig.add_trace(go.Scatter(x=group["layer"], y=group[after], mode="lines+markers", name=name,
                                         legendgroup=name, showlegend=col == "probe_accuracy" or
                                         "probe_accuracy_transformed" not in group, line=dict(dash="dash"),
                                         hovertemplate=f"layer %{{x}}<br>{after} %{{y:.4g}}<extra>{name}</extra>"),
                              row=r, col=c)
        if best is not None:
            fig.add_vline(x=best, line_dash="dot", line_color="grey", row=r, col=c)
    fig.update_xaxes(title_text="layer")
    title = "Layer-wise representation quality"
    if best is not None:
        title += f" — recommended layer {best}"
    fig.update_layout(template="plotly_white", height=260 * nrows + 80, title=title,
                      margin=dict(t=80, l=50, r=20, b=40))
    return fig


register(AnalysisSpec(
    name="layer_quality",
    title="Layer-wise representation quality",
    question="Which layer gives the best representations, and which unsupervised metric tells?",
    run=run,
    figure=figure,
    params=PARAMS,
    inputs=("model", "vectors"),
    readme_tables=results_tables.TABLES,
    page="app_pages/5_Layer_quality.py",
))

__all__ = ["metrics", "layer_row", "augment_texts", "AugmentSettings", "topic_probe", "retrieval_scores",
           "metric_correlations", "recommend_layer", "METRIC_COLUMNS"]
