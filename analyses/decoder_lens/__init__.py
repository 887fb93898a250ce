"""The ``decoder_lens`` analysis: what would the decoder say if it read encoder layer l?

The pure back-end is :func:`analyses.decoder_lens.lens.decoder_lens` (Langedijk et al., arXiv
2310.03686; docs/methods.md, "DecoderLens"). This module wires it to the workbench: inputs are an
encoder-decoder model and a dataset with source / reference (and optionally task) columns, e.g. the
built-in ``sample_data/seq2seq_tasks.jsonl`` for the built-in ``t5-tasks`` model. The encoder states
``H_l`` of the sources come from the activation store (``ctx.activations`` at the encoder's residual
hooks, tokenised by the store at the model's ``max_length``; :mod:`.states`), so a repeated run is a
cache hit and runs no encoder forward; the decoder then generates from ``N(H_l)`` per layer. The
figure shows mean score curves per task over encoder layers and, for one example per task, the
output text at every layer.
"""

from __future__ import annotations

import pandas as pd

from workbench.analysis import Param, defaults_of
from workbench.stats import layer_request
from workbench.errors import WorkbenchError

from .lens import COLUMNS, decoder_lens, encoder_final_norm, resolve_layers, summarize  # noqa: F401
from .states import ForwardStates, StoreStates, store_states  # noqa: F401

NAME = "decoder_lens"


def _check_layers(value) -> list[int]:
    """3, [0, 3, 6] or "0,3,6" -> a non-empty list of layer numbers >= 0 (the top is checked per model)."""
    layers = layer_request(value)
    if layers == "all" or not layers or min(layers) < 0:
        raise ValueError("no layers, or a negative one")
    return layers


PARAMS = {
    "source_column": Param("source", "dataset column with the encoder input text"),
    "reference_column": Param("reference", "column with the target text (for logprob, exact match, chrF); '' = none"),
    "task_column": Param("task", "optional column to group score curves by (e.g. task); '' or a missing column "
                         "= one group"),
    "apply_final_norm": Param("auto", "final encoder norm on layers < L_e: auto (pre-LN encoders) | true | false | "
                              "both", choices=("auto", True, False, "both")),
    "layers": Param(None, "encoder layers to read, e.g. [0, 3, 6]; null = all 0..L_e", type=object,
                    check=_check_layers, allowed="a layer number >= 0 or a list of them, e.g. [0, 3, 6] or 0,3,6"),
    "max_new_tokens": Param(32, "generation length limit (same at every layer)", min=1),
    "num_beams": Param(1, "beam size (1 = greedy; same at every layer)", min=1),
    "batch_size": Param(32, "examples per forward pass", min=1),
    "max_examples": Param(500, "use the first N rows of the dataset", min=1),
    "examples_per_task_in_table": Param(1, "examples per task shown in the figure's layer -> output table", min=0),
}
DEFAULTS = defaults_of(PARAMS)


def _columns(frame: pd.DataFrame, params: dict):
    src_col, ref_col, task_col = params["source_column"], params["reference_column"], params["task_column"]
    if src_col not in frame.columns:
        raise WorkbenchError(
            f"DecoderLens needs a source column '{src_col}' in the dataset (columns: "
            f"{', '.join(map(str, frame.columns))}); set the source_column parameter."
        )
    refs = None
    if ref_col and ref_col in frame.columns:
        refs = [str(x) for x in frame[ref_col]]
    elif ref_col:
        raise WorkbenchError(
            f"DecoderLens: no reference column '{ref_col}' in the dataset (columns: "
            f"{', '.join(map(str, frame.columns))}); set reference_column, or '' to run without scores."
        )
    tasks = [str(x) for x in frame[task_col]] if task_col and task_col in frame.columns else ["all"] * len(frame)
    return [str(x) for x in frame[src_col]], refs, tasks


def _seq2seq_model(ctx):
    m = ctx.model
    if m is None:
        raise WorkbenchError("DecoderLens needs a model; choose an encoder-decoder model such as t5-tasks.")
    if getattr(m, "kind", "seq2seq") != "seq2seq":
        raise WorkbenchError(
            f"DecoderLens needs an encoder-decoder (seq2seq) model; {getattr(m, 'name', 'this model')} is a "
            f"{m.kind} model. Try the built-in t5-tasks."
        )
    if ctx.dataset is None:
        raise WorkbenchError(
            "DecoderLens needs a dataset with source and reference columns, e.g. the built-in "
            "sample_data/seq2seq_tasks.jsonl."
        )
    return m


def run(ctx):
    """Run the DecoderLens on ``ctx.model`` over ``ctx.dataset``; returns (rows, summary)."""
    p = dict(DEFAULTS)
    p.update(ctx.params or {})
    m = _seq2seq_model(ctx)
    frame = ctx.dataset.frame.iloc[: int(p["max_examples"])]
    sources, refs, tasks = _columns(frame, p)
    if not sources:
        raise WorkbenchError("DecoderLens got no sources; the dataset is empty.")
    layers = resolve_layers(p["layers"], m.n_layers)  # checked before anything is extracted
    states = store_states(ctx, m, sources, layers, int(p["batch_size"]),
                          dataset_name=f"{ctx.dataset.name}:{p['source_column']}[:{len(sources)}]")
    gen = {"max_new_tokens": int(p["max_new_tokens"]), "num_beams": int(p["num_beams"]), "do_sample": False}
    table = decoder_lens(
        m.hf_model, m.tokenizer, sources, refs, tasks=tasks, layers=layers,
        apply_final_norm=p["apply_final_norm"], generation=gen, batch_size=int(p["batch_size"]),
        progress=getattr(ctx, "progress", None), states=states,
    )
    return table, make_summary(table, m.hf_model)


def make_summary(table: pd.DataFrame, hf_model=None) -> dict:
    """JSON-able summary: variants, L_e, per task x layer mean exact match / chrF, first solving layer."""
    s = summarize(table)
    L = int(table["layer"].max())
    norm = encoder_final_norm(hf_model) if hf_model is not None else None
    out = {
        "n_examples": int(table["example"].nunique()),
        "encoder_layers": L,
        "variants": sorted(table["variant"].unique().tolist()),
        "final_norm_module": type(norm).__name__ if norm is not None else None,
        "exact_match": {},
        "chrf": {},
        "first_layer_at_90pct_of_final_exact_match": {},
    }
    for (task, variant), g in s.groupby(["task", "variant"]):
        key = f"{task} [{variant}]"
        em = dict(zip(g["layer"].astype(int).astype(str), g["exact_match"].round(4).astype(float)))
        out["exact_match"][key] = em
        out["chrf"][key] = dict(zip(g["layer"].astype(int).astype(str), g["chrf"].round(2).astype(float)))
        final = g[g["layer"] == L]["exact_match"]
        if len(final) and final.iloc[0] > 0:
            ok = g[g["exact_match"] >= 0.9 * final.iloc[0]]["layer"]
            out["first_layer_at_90pct_of_final_exact_match"][key] = int(ok.min())
        else:
            out["first_layer_at_90pct_of_final_exact_match"][key] = None
    return out


_DASH = {"final_norm": "solid", "raw": "dot"}


def _score_curves(fig, s: pd.DataFrame, tasks: list, variants: list) -> None:
    """Exact match (col 1) and chrF (col 2) over encoder layers, one line per task and variant."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    for k, task in enumerate(tasks):
        color = qualitative.Plotly[k % len(qualitative.Plotly)]
        for v in variants:
            g = s[(s["task"] == task) & (s["variant"] == v)].sort_values("layer")
            name = task if len(variants) == 1 else f"{task} ({v})"
            for col, metric, scale in ((1, "exact_match", 100.0), (2, "chrf", 1.0)):
                fig.add_trace(
                    go.Scatter(
                        x=g["layer"], y=g[metric] * scale, mode="lines+markers", name=name,
                        legendgroup=name, showlegend=col == 1, line={"color": color, "dash": _DASH.get(v, "solid")},
                        hovertemplate=f"{name}<br>layer %{{x}}<br>{metric} %{{y:.1f}}<extra></extra>",
                    ),
                    row=1, col=col,
                )


def _output_table(table: pd.DataFrame, tasks: list, per_task: int):
    """A plotly Table of the output at every layer for the first ``per_task`` examples of each task."""
    import plotly.graph_objects as go

    ex = table.groupby("task", sort=False)["example"].apply(lambda e: sorted(e.unique())[:per_task])
    pick = [i for task in tasks for i in ex[task]]
    t = table[table["example"].isin(pick)].copy()
    t["order"] = t["example"].map({e: n for n, e in enumerate(pick)})
    t = t.sort_values(["order", "layer", "variant"])
    reference = t["reference"] if "reference" in t else pd.Series([""] * len(t), index=t.index)
    return go.Table(
        columnwidth=[60, 150, 120, 40, 70, 150, 40, 40],
        header={"values": ["task", "source", "reference", "layer", "variant", "output", "EM", "chrF"],
                "align": "left"},
        cells={
            "values": [
                t["task"], t["source"], reference.fillna(""), t["layer"], t["variant"], t["output"],
                t["exact_match"].map(lambda x: "" if pd.isna(x) else ("✓" if x else "✗")),
                t["chrf"].map(lambda x: "" if pd.isna(x) else f"{x:.0f}"),
            ],
            "align": "left",
        },
    )


def figure(result):
    """Score curves per task over encoder layers (exact match, chrF) and a layer -> output table."""
    from plotly.subplots import make_subplots

    table: pd.DataFrame = result.table
    params = dict(DEFAULTS)
    params.update(getattr(result, "params", None) or {})
    s = summarize(table)
    L = int(table["layer"].max())
    tasks = list(dict.fromkeys(table["task"]))
    variants = sorted(s["variant"].unique())
    fig = make_subplots(
        rows=2, cols=2, specs=[[{}, {}], [{"type": "table", "colspan": 2}, None]],
        row_heights=[0.45, 0.55], vertical_spacing=0.1,
        subplot_titles=("Exact match by encoder layer", "chrF by encoder layer", "Output per encoder layer"),
    )
    _score_curves(fig, s, tasks, variants)
    for col in (1, 2):
        fig.update_xaxes(title_text=f"encoder layer (0 = embeddings, {L} = encoder output)", dtick=1, row=1, col=col)
    fig.update_yaxes(title_text="exact match (%)", range=[-3, 103], row=1, col=1)
    fig.update_yaxes(title_text="chrF", range=[-3, 103], row=1, col=2)
    fig.add_trace(_output_table(table, tasks, int(params.get("examples_per_task_in_table", 1))), row=2, col=1)
    fig.update_layout(
        height=900, title=f"DecoderLens: decoder reading encoder layer l (intermediate states: {', '.join(variants)})",
        legend={"title": "task"},
    )
    return fig


def _register():
    from workbench.analysis import AnalysisSpec, register

    from .results_tables import TABLES

    register(
        AnalysisSpec(
            name=NAME,
            default_model="t5-tasks",
            default_data="seq2seq-tasks",
            title="DecoderLens",
            question=(
                "What does the decoder of an encoder-decoder model output when it reads an intermediate "
                "encoder layer instead of the last, and from which layer on is each task solved?"
            ),
            run=run,
            figure=figure,
            params=dict(PARAMS),
            inputs=("model",),
            page="app_pages/3_DecoderLens.py",
            readme_tables=TABLES,
        )
    )


_register()
