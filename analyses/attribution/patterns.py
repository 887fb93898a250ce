"""Attention patterns and per-head pattern scores, read from the activation store.

docs/methods.md, "Attention, DLA and patching". The prompt set (``source``):

- ``prompt``: one typed prompt (BOS first when the tokenizer has one);
- ``dataset``: the first ``max_texts`` texts of the run's dataset, truncated at ``max_length``;
- ``repeats``: ``max_texts`` sequences ``[BOS] r r`` of ``period`` random ordinary tokens
  (:func:`workbench.hooked.repeated_random_tokens`).

Patterns are ``blocks.{l}.attn.hook_pattern`` ``[heads, query, key]`` from the store, asked for the
blocks in ``layers`` only (one entry; its size is estimated first and refused above ``max_pattern_mb``)
and read one text and one layer at a time. Scores of each head, means over the prompt set, query
positions ``t >= 1`` (A = the pattern, rows sum to 1 over keys ``<= t``):

- previous-token ``A[t, t-1]``; current-token ``A[t, t]``; sink ``A[t, 0]`` (attention to the first
  position);
- on ``repeats`` (period P, Olsson et al. 2022): induction ``A[t, t-P+1]`` and duplicate-token
  ``A[t, t-P]`` over the second copy (:func:`workbench.hooked.repeat_pattern_scores`);
- on other text, the same by token matching: over queries whose token occurred before, at ``j < t``,
  induction ``Σ_j A[t, j+1]`` and duplicate-token ``Σ_j A[t, j]`` (NaN when no token repeats). On a
  repeated sequence without chance repeats the two definitions agree.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from workbench.data import TokenDataset
from workbench.errors import WorkbenchError
from workbench.hooked import ordinary_token_ids, repeat_pattern_scores, repeated_random_tokens
from workbench.params import Param
from workbench.tasks import encode

from .inputs import block_list, layers_param, token_labels

SCORES = ("prev_token_score", "induction_score", "duplicate_token_score", "current_token_score", "sink_score")
PROMPT = ("The cat sat on the mat, and the dog sat on the rug. The cat sat on the mat, and the dog sat on the rug.")
_HEAD = re.compile(r"^L(\d+)H(\d+)$")


def _head_format(value: str) -> str:
    if value and not _HEAD.match(value.strip()):
        raise ValueError("not a head label")
    return value.strip()


PATTERN_PARAMS = {
    "source": Param("prompt", "the prompt set: prompt (the one below), dataset (the run's --data) or repeats "
                              "(repeated random tokens, for induction scores)", choices=("prompt", "dataset", "repeats")),
    "prompt": Param(PROMPT, "the prompt (source=prompt)"),
    "text": Param(0, "which prompt of the set is drawn (0 = the first)", min=0),
    "max_texts": Param(16, "prompts in the set (source=dataset or repeats)", min=1, max=10000),
    "max_length": Param(64, "tokens per dataset text (longer ones are truncated)", min=2, max=4096),
    "period": Param(20, "period of the repeated random tokens (source=repeats)", min=2, max=1000),
    "layers": layers_param("store and show the patterns of"),
    "head": Param("", "the head drawn large, e.g. L1H2 (blank: the highest induction score, else previous-token)",
                  check=_head_format, allowed="a head label such as L1H2, or blank"),
    "max_pattern_mb": Param(512, "refuse to store more attention patterns than this (MiB): choose fewer layers, "
                                 "texts or tokens", min=1),
}


def prompt_set(ctx, model, p: dict):
    """The dataset to read patterns for, the ``prepend_bos`` of the store request and the repeats period
    (None unless ``source=repeats``)."""
    tok = model.tokenizer
    bos = getattr(tok, "bos_token_id", None)
    if p["source"] == "prompt":
        if not p["prompt"].strip():
            raise WorkbenchError("The prompt is empty: type one, or use source=dataset or source=repeats.")
        return TokenDataset("attribution-prompt", [encode(tok, p["prompt"])]), None, None
    if p["source"] == "repeats":
        seqs = repeated_random_tokens(ordinary_token_ids(tok, 20000), int(p["max_texts"]), int(p["period"]), bos=bos,
                                      seed=ctx.seed)
        return TokenDataset(f"attribution-repeats-p{p['period']}-s{ctx.seed}", seqs), None, int(p["period"])
    if ctx.dataset is None:
        raise WorkbenchError("attention_patterns with source=dataset needs a dataset: pass --data (or pick one in "
                             "the sidebar).")
    return ctx.dataset.subset(int(p["max_texts"])), (True if bos is not None else None), None


def pattern_megabytes(model, dataset, layers: list[int], max_length: int) -> float:
    """Bytes the patterns of ``layers`` take in the store (float32), from the prompts' token counts."""
    if isinstance(dataset, TokenDataset):
        lengths = np.array([len(s) for s in dataset.ids], dtype=np.float64)
    else:
        ids = model.tokenizer(list(dataset.texts), truncation=True, max_length=max_length)["input_ids"]
        lengths = np.minimum(np.array([len(i) + 1 for i in ids], dtype=np.float64), max_length)
    return float((lengths ** 2).sum() * model.n_heads * len(layers) * 4 / 2**20)


def head_scores(pattern: np.ndarray, ids: np.ndarray, period: int | None, offset: int) -> np.ndarray:
    """The scores of :data:`SCORES` of each head on one prompt: float64 ``[H, 5]`` from its pattern
    ``[H, T, T]`` and token ids ``[T]`` (``period``: a repeated sequence; ``offset`` tokens before it)."""
    p = np.asarray(pattern, dtype=np.float64)
    t = np.arange(1, p.shape[-1])
    sink = p[:, t, 0].mean(-1) if len(t) else np.full(p.shape[0], np.nan)
    if period is not None:
        prev, induction, duplicate, current = repeat_pattern_scores(p, period, offset).T
        return np.stack([prev, induction, duplicate, current, sink], axis=-1)
    if not len(t):
        return np.full((p.shape[0], len(SCORES)), np.nan)
    ids = np.asarray(ids)
    earlier = np.tril(ids[:, None] == ids[None, :], k=-1)  # [query, key]: same token, key before the query
    after = np.zeros_like(earlier)
    after[:, 1:] = earlier[:, :-1]  # the token after each earlier occurrence
    seen = earlier.any(1)
    if seen.any():
        induction = (p * after).sum(-1)[:, seen].mean(-1)
        duplicate = (p * earlier).sum(-1)[:, seen].mean(-1)
    else:
        induction = duplicate = np.full(p.shape[0], np.nan)
    return np.stack([p[:, t, t - 1].mean(-1), induction, duplicate, p[:, t, t].mean(-1), sink], axis=-1)


def score_table(entry, hooks: list[str], layers: list[int], period: int | None, offset: int,
                progress=None) -> tuple[pd.DataFrame, float]:
    """Mean scores over the entry's texts per (layer, head), one layer and text at a time (a text where a
    score is undefined, NaN, e.g. induction without a repeated token, is left out of that score's mean);
    and the largest deviation of a pattern row's sum from 1."""
    rows, worst = [], 0.0
    for k, (layer, hook) in enumerate(zip(layers, hooks)):
        total, count = 0.0, 0
        for i in range(entry.n_texts):
            pattern = entry.attention_pattern(hook, i)
            worst = max(worst, float(np.abs(pattern.sum(-1, dtype=np.float64) - 1).max()))
            scores = head_scores(pattern, entry.token_ids(i), period, offset)
            total, count = total + np.nan_to_num(scores), count + np.isfinite(scores)
        with np.errstate(invalid="ignore"):
            means = np.where(count > 0, total / np.maximum(count, 1), np.nan)  # texts where a score is defined
        for head, values in enumerate(means):
            rows.append({"layer": layer, "head": head, "label": f"L{layer}H{head}",
                         **dict(zip(SCORES, values.tolist()))})
        if progress is not None:
            progress(k + 1, len(layers), f"scores of layer {layer}")
    table = pd.DataFrame(rows)
    table["n_texts"] = entry.n_texts
    return table, worst


def shown_pattern(entry, hooks: list[str], layers: list[int], text: int) -> dict:
    """The patterns of one text for the figures: tokens (whitespace visible) and float [layers, H, T, T],
    rounded to 4 decimals (JSON in the summary)."""
    stack = np.stack([entry.attention_pattern(h, text) for h in hooks])
    return {"text": text, "tokens": token_labels(entry.token_strings(text)), "layers": layers,
            "attention": np.round(stack.astype(np.float64), 4).tolist()}


def chosen_head(table: pd.DataFrame, head: str) -> str:
    """The head drawn large: ``head`` when given (checked against the table), else the top induction head
    (previous-token when no token repeats)."""
    if head:
        if head not in set(table["label"]):
            raise WorkbenchError(f"head {head} is not among the heads shown (layers {sorted(set(table['layer']))}, "
                                 f"heads 0..{int(table['head'].max())}): pick one of those.")
        return head
    column = "induction_score" if table["induction_score"].notna().any() else "prev_token_score"
    return str(table.loc[table[column].idxmax(), "label"])


def run_patterns(ctx, model, p: dict):
    """The ``attention_patterns`` analysis: (table per head, summary with the drawn text's patterns)."""
    layers = block_list(p["layers"], model)
    dataset, prepend_bos, period = prompt_set(ctx, model, p)
    if int(p["text"]) >= len(dataset):
        raise WorkbenchError(f"text {p['text']} is out of range: the prompt set has {len(dataset)} prompt(s) "
                             f"(0..{len(dataset) - 1}).")
    size = pattern_megabytes(model, dataset, layers, int(p["max_length"]))
    if size > p["max_pattern_mb"]:
        raise WorkbenchError(
            f"attention_patterns: the patterns of {len(dataset)} prompt(s) x {len(layers)} layer(s) would take "
            f"{size:.0f} MiB (max_pattern_mb={p['max_pattern_mb']}): choose fewer layers (layers=0,5,10), fewer "
            "or shorter texts, or raise max_pattern_mb.")
    hooks = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    # max_length truncates dataset texts only: a typed prompt or a repeated sequence is read whole
    limit = max(map(len, dataset.ids)) if isinstance(dataset, TokenDataset) else int(p["max_length"])
    entry = ctx.activations(hooks, max_length=limit, dataset=dataset, prepend_bos=prepend_bos)
    try:
        offset = 1 if period is not None and getattr(model.tokenizer, "bos_token_id", None) is not None else 0
        table, worst = score_table(entry, hooks, layers, period, offset, ctx.progress)
        summary = {"source": p["source"], "n_texts": entry.n_texts, "layers": layers, "pattern_mb": round(size, 2),
                   "row_sum_max_error": worst, "head": chosen_head(table, p["head"]),
                   "pattern": shown_pattern(entry, hooks, layers, int(p["text"]))}
    finally:
        entry.close()
    for column in SCORES:
        summary[f"top_{column[:-6]}"] = table.nlargest(5, column)["label"].tolist()
    return table, summary
