"""inversion: how much text does a sentence embedding (or a layer's mean-pooled state) leak?

Zero-shot inversion by adversarial decoding (ZSInvert, arXiv 2504.00147; docs/methods.md,
"Embedding inversion"): see :mod:`.search`. The run's ``model`` is the **embedder** (an encoder
such as minilm-l6); the proposer is a separate causal LM (``proposer`` parameter, default
smollm2-135m). Inputs:

- a text dataset: each text's target vector comes from the activation store (:mod:`.targets`:
  ``ctx.activations(["sentence_embedding"])``, or the residual hooks + ``mean_pooled`` for layer
  targets, at the Embedder's ``max_length``), so a repeated run extracts nothing (a demonstration:
  we know the answer); candidates are embedded by :func:`workbench.hooked.embed_texts` (the
  :class:`.search.Embedder`), the same way;
- a vectors file (``--vectors``, an audit): each row is a target; its dimension must match the
  embedder's and, when the embedder normalises, its norms must be ~1. The CLI refuses ``--model``
  together with ``--vectors``, so then the embedder is the ``embedder`` parameter
  (``workbench run inversion --vectors emb.npy --set embedder=minilm-l6``).

``layers``: ``None`` inverts the sentence embedding (reported as layer -1); an int or a list of ints
inverts the mean-pooled hidden state of those layers (0 = embedding output, l = after block l),
with candidates pooled the same way, to see how much text each layer leaks.

Progress (:mod:`.progress`): after every search step the run calls ``ctx.progress(done, total,
message)`` for the bar and, when the context has a ``step`` method, ``ctx.step(record)`` with a plain
dict whose keys are

- ``item`` (0-based index of this inversion in the run, layer-major), ``n_items`` (targets x layers),
  ``target`` (row of the dataset / vectors: the table's ``item``), ``layer`` (-1 = sentence
  embedding, l >= 0 = mean-pooled hidden state l);
- ``stage`` (1-based), ``n_stages``, ``step`` (1-based within the stage), ``total_steps`` (budget of
  the stage);
- ``best_text``, ``best_cosine`` (best so far over the item's stages), ``stage_best_text``,
  ``stage_best_cosine``, ``n_candidates`` (texts scored at this step);
- ``done``, ``total`` (proposer steps of the whole run, as given to ``ctx.progress``).

Table: one row per (item, layer): target (if known), reconstruction, cosine, token_f1, bleu,
exact_match, leakage (+ n_sensitive, leaked), what_leaked (that in plain words:
:func:`.metrics.leak_description`), steps, seconds, layer, stage cosines.
Metric definitions: :mod:`.metrics`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.analysis import AnalysisSpec, Param, RunContext, register
from workbench.errors import WorkbenchError
from workbench.stats import layer_request
from workbench.stats import parse_layers as core_parse_layers
from workbench.results import Result

from . import results_tables
from .report import html_report  # noqa: F401  (the page's audit report)
from .metrics import leak_description, text_metrics
from .progress import RECORD_KEYS, StepReporter  # noqa: F401
from .search import PRECISIONS, REFINE_PROMPT, STAGE1_PROMPT, Embedder, InversionResult, Proposer, SearchConfig, invert
from .targets import context_targets

#: max |‖v‖ - 1| accepted for vectors that a normalising embedder should have produced
NORM_TOLERANCE = 0.02


def parse_layers(value, n_layers: int) -> list[int | None]:
    """``None``/"" -> [None] (the sentence embedding); an int, a list, "0,3,6" or "all" -> those
    mean-pooled hidden states; a negative number also means the sentence embedding."""
    return core_parse_layers(value, n_layers, blank=[None], negative="as_none", owner="the embedder")


def _check_layers(value):
    layer_request(value)  # the format only; the range is checked against the embedder when it runs
    return value


def _check_refine_prompt(prompt: str) -> str:
    if "{text}" not in prompt:
        raise ValueError("no {text}")
    return prompt


PARAMS = {
    "embedder": Param("minilm-l6", "the embedder when no model is given (e.g. CLI --vectors); --model takes "
                      "precedence"),
    "proposer": Param("smollm2-135m", "causal LM that proposes next tokens (chat format)"),
    "beam_width": Param(10, "beams kept per step (B)", min=1),
    "top_k": Param(10, "proposals per beam (K)", min=1),
    "top_p": Param(1.0, "nucleus cut inside top-k (1 = plain top-k)", min=0, max=1, closed="right"),
    "repetition_penalty": Param(1.5, "CTRL penalty over prompt + generated tokens (generated only: penalize_prompt=false)", min=0, closed="neither"),
    "penalize_prompt": Param(True, "the repetition penalty also covers the prompt's tokens (the official code's); "
                             "false: only the generated ones, so a restart may reuse the words of the text it "
                             "paraphrases"),
    "max_steps": Param(32, "proposer tokens in stage 1", min=1),
    "refine_steps": Param(32, "proposer tokens in the refinement stage (0 or null = max_steps)", min=0,
                          nullable=True),
    "stages": Param(2, "1 = no refinement; s >= 2: s - 1 restarts, each prompted with the best text so far "
                    "(the official experiment runs 5); without randomness the search ends early where a restart's "
                    "prompt repeats an earlier stage's (the best text did not change)", min=1),
    "threshold": Param(0.99, "stop early when the cosine reaches this (above 1 = never)", min=-1),
    "randomness": Param(False, "keep top 5 + seeded random beams"),
    "prompt": Param(STAGE1_PROMPT, "stage-1 instruction"),
    "refine_prompt": Param(REFINE_PROMPT, "instruction of every stage after the first ({text} = the best text so far)",
                           check=_check_refine_prompt, allowed="a string containing {text}"),
    "refine_pool": Param(1, "texts put in {text} of the refine prompt: the N best distinct stage results so far, "
                         "one per line (1 = the best text; a zero-shot stand-in for the paper's correction stage)",
                         min=1),
    "layers": Param(None, "empty = sentence embedding; an int, a list, or 'all' = mean-pooled hidden states",
                    type=object, check=_check_layers,
                    allowed="empty or null (the sentence embedding), 'all', a layer number or a list like 0,3,6"),
    "max_items": Param(20, "invert the first N texts / vectors (0 or null = all)", min=0, nullable=True),
    "batch_size": Param(128, "candidates per embedder forward", min=1),
    "precision": Param("auto", "search arithmetic: fp32, bf16 (embedder under bf16 autocast, proposer as a bf16 copy; "
                       "about 2x faster on a CPU with native bf16; reported cosines are always recomputed in fp32), "
                       "or auto = bf16 where the hardware does bf16 natively", choices=PRECISIONS),
    "check_norms": Param(True, "refuse vectors whose norms do not match a normalising embedder"),
}


def check_vectors(vectors: np.ndarray, embedder: Embedder, check_norms: bool = True) -> None:
    """Raise a WorkbenchError when the vectors cannot come from ``embedder`` (dimension, norms)."""
    if vectors.ndim != 2:
        raise WorkbenchError(f"Vectors must be a 2-D matrix (N, D); got shape {vectors.shape}.")
    if vectors.shape[1] != embedder.dim:
        raise WorkbenchError(
            f"The vectors have {vectors.shape[1]} dimensions but {embedder.model.name} embeds in {embedder.dim}: "
            "pick the embedder that produced them.")
    norms = np.linalg.norm(vectors, axis=1)
    if (norms < 1e-8).any():
        raise WorkbenchError(f"{int((norms < 1e-8).sum())} vector(s) are all zeros (first row "
                             f"{int(np.argmax(norms < 1e-8))}); drop them: a zero vector has no direction to invert.")
    if check_norms and embedder.normalizes:
        bad = np.abs(norms - 1) > NORM_TOLERANCE
        if bad.any():
            raise WorkbenchError(
                f"{embedder.model.name} normalises its embeddings (norm 1), but {int(bad.sum())} of {len(norms)} vectors "
                f"have norms in [{norms.min():.3g}, {norms.max():.3g}] (first row {int(np.argmax(bad))}). They were not "
                "made by this embedder's sentence embedding: pick the right embedder or layer, or set "
                "check_norms=false if you normalised differently on purpose.")


def _config(params: dict, seed: int) -> SearchConfig:
    return SearchConfig(
        beam_width=int(params["beam_width"]), top_k=int(params["top_k"]), top_p=float(params["top_p"]),
        repetition_penalty=float(params["repetition_penalty"]),
        penalize_prompt=bool(params.get("penalize_prompt", True)), max_steps=int(params["max_steps"]),
        refine_steps=int(params["refine_steps"]) if params.get("refine_steps") else None,
        stages=int(params["stages"]), threshold=float(params["threshold"]), randomness=bool(params["randomness"]),
        prompt=str(params["prompt"]), refine_prompt=str(params["refine_prompt"]),
        refine_pool=int(params.get("refine_pool") or 1), seed=seed)


def _embedder_model(ctx: RunContext):
    """The embedder: the run's model, or (CLI --vectors without --model) the 'embedder' parameter."""
    from workbench.models import load_model

    model = ctx.model if ctx.model is not None else load_model(ctx.params.get("embedder") or "minilm-l6")
    if model.kind != "encoder":
        raise WorkbenchError(f"The inversion model is the embedder; {model.name} is a {model.kind}. "
                             "Pick an encoder such as minilm-l6 (the proposer is the 'proposer' parameter).")
    return model


def _targets(ctx: RunContext, model, layers: list, embedders: dict, max_items: int | None):
    """(target texts or Nones, {layer: target vectors [n, D]}): vectors as given, or the texts' through the store."""
    if ctx.vectors is not None:
        if len(layers) != 1:
            raise WorkbenchError("A vectors file holds one kind of vector: give a single layer (or none for "
                                 "the sentence embedding) when inverting vectors.")
        vectors = ctx.vectors[:max_items] if max_items else ctx.vectors
        check_vectors(vectors, embedders[layers[0]], bool(ctx.params["check_norms"]))
        return [None] * len(vectors), {layers[0]: vectors}
    dataset = ctx.require_dataset().subset(max_items)
    if ctx.model is not model:  # the embedder came from the parameter: the store reads it through the context
        ctx = dataclasses.replace(ctx, model=model)
    return list(dataset.texts), context_targets(ctx, dataset, layers, embedders[layers[0]].max_length)


def _row(i: int, layer: int | None, text: str | None, res: InversionResult) -> dict:
    row = {"item": i, "layer": -1 if layer is None else layer, "target": text,
           "reconstruction": res.text, "cosine": res.cosine}
    if text is not None:
        row.update(text_metrics(text, res.text))
    else:
        row.update({"token_f1": np.nan, "bleu": np.nan, "exact_match": None, "leakage": np.nan,
                    "n_sensitive": 0, "leaked": ""})
    row["what_leaked"] = leak_description(text, res.text)
    row.update({"steps": res.steps, "seconds": round(res.seconds, 2),
                "stage_cosines": ", ".join(f"{c:.4f}" for c in res.stage_cosines),
                "stage_texts": " ‖ ".join(res.stage_texts), "n_embedded": res.n_embedded})
    return row


def _summary(table: pd.DataFrame, n_items: int, layers: list, embedder: str, proposer: str, vectors: bool) -> dict:
    summary = {"n_items": n_items, "layers": [-1 if l is None else l for l in layers],
               "embedder": embedder, "proposer": proposer, "mode": "vectors" if vectors else "texts"}

    def mean(column):
        return None if column.isna().all() else float(column.mean())

    for layer, group in table.groupby("layer"):
        key = "output" if layer == -1 else f"layer_{layer}"
        summary[key] = {"mean_cosine": float(group["cosine"].mean()), "mean_token_f1": mean(group["token_f1"]),
                        "mean_bleu": mean(group["bleu"]),
                        "exact_match_rate": None if vectors else float(group["exact_match"].mean()),
                        "mean_leakage": mean(group["leakage"])}
    summary["layer_convention"] = "-1 = the embedder's sentence embedding; l >= 0 = mean-pooled hidden state l"
    summary["metrics"] = ("token_f1: vec2text token-set F1 with the project's regex word tokenizer (no nltk); "
                          "bleu: sacrebleu sentence_bleu 0-100; leakage: share of the target's sensitive strings "
                          "(names, numbers, e-mails, dates; project regex definition) found in the reconstruction")
    return summary


def run(ctx: RunContext, proposer_model=None, step_callback=None):
    """Invert every target at every layer. Progress: ``ctx.progress`` and, if the context has one,
    ``ctx.step(record)`` (keys in the module docstring); ``step_callback(item, n_items, layer, StepInfo)``
    also gets every step."""
    from workbench.models import load_model

    p = ctx.params
    model = _embedder_model(ctx)
    cfg = _config(p, ctx.seed)
    cfg.check()
    layers = parse_layers(p["layers"], model.n_layers)
    max_items = int(p["max_items"]) if p.get("max_items") else None
    precision = str(p.get("precision") or "auto")
    embedders = {layer: Embedder(model, layer, batch_size=int(p["batch_size"]), precision=precision) for layer in layers}
    targets, vectors = _targets(ctx, model, layers, embedders, max_items)
    proposer = Proposer(proposer_model if proposer_model is not None else load_model(p["proposer"]), precision=precision)
    reporter = StepReporter(ctx, cfg, len(targets), len(layers), step_callback)
    rows = []
    for li, layer in enumerate(layers):
        for i, (text, vec) in enumerate(zip(targets, vectors[layer])):
            res = invert(vec, proposer, embedders[layer], cfg, callback=reporter.callback(li, i, layer))
            reporter.item_done()
            rows.append(_row(i, layer, text, res))
    table = pd.DataFrame(rows)
    if ctx.vectors is not None:
        table["exact_match"] = table["exact_match"].astype("boolean")
    summary = _summary(table, len(targets), layers, model.name, p["proposer"], ctx.vectors is not None)
    # ``auto`` depends on the hardware, and near-ties among candidates can break differently under
    # bf16: the arithmetic actually used is part of what makes the result reproducible
    summary["arithmetic"] = {"search": proposer.precision, "requested": precision}
    return table, summary


def figure(result: Result) -> go.Figure:
    t = result.table
    fig = go.Figure()
    if t["layer"].nunique() > 1:
        g = t.groupby("layer").agg(cosine=("cosine", "mean"), token_f1=("token_f1", "mean"),
                                   leakage=("leakage", "mean")).reset_index()
        x = ["output" if l == -1 else str(l) for l in g["layer"]]
        for col in ("cosine", "token_f1", "leakage"):
            fig.add_trace(go.Bar(x=x, y=g[col], name=col))
        fig.update_xaxes(title_text="layer (0 = embeddings; output = sentence embedding)")
        title = "Inversion by layer (means over items)"
    else:
        x = [f"{i + 1}" for i in range(len(t))]
        hover = (t["reconstruction"].fillna("")).str.slice(0, 120)
        fig.add_trace(go.Bar(x=x, y=t["cosine"], name="cosine", hovertext=hover))
        if t["token_f1"].notna().any():
            fig.add_trace(go.Bar(x=x, y=t["token_f1"], name="token F1"))
            fig.add_trace(go.Bar(x=x, y=t["bleu"] / 100, name="BLEU / 100"))
        fig.update_xaxes(title_text="item")
        title = f"Inversion of {len(t)} item(s): mean cosine {t['cosine'].mean():.3f}"
    fig.update_layout(barmode="group", height=380, template="plotly_white", title=title,
                      yaxis=dict(range=[0, 1.05]), margin=dict(t=50, l=50, r=20, b=50))
    return fig


register(AnalysisSpec(
    name="inversion",
    default_model="minilm-l6",
    title="Embedding inversion",
    question="How much of the original text can be recovered from its embedding (or from a layer's mean-pooled state)?",
    run=run,
    figure=figure,
    params=PARAMS,
    inputs=("model", "vectors"),
    readme_tables=results_tables.TABLES,
    page="app_pages/7_Inversion.py",
))
