"""DecoderLens: let the decoder of an encoder-decoder model read an intermediate encoder layer.

Method (Langedijk, Mohebbi, Sarti, Zuidema, Jumelet, "DecoderLens: Layerwise Interpretation of
Encoder-Decoder Transformers", Findings of NAACL 2024, arXiv 2310.03686): for each encoder layer
``l in 0..L_e`` take ``H_l = encoder(x).hidden_states[l]`` (``[batch, src_len, d_model]``; layer 0 is
the embedding output, layer ``l`` the output of block ``l-1``, layer ``L_e`` the encoder's own output)
and run the *unchanged* decoder on it::

    model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=N(H_l)),
                   attention_mask=src_mask, **same_generation_settings)

so every layer gets one output text. ``H_l`` comes from a states source
(:mod:`analyses.decoder_lens.states`): the activation store in the registered analysis, or the
encoder run here for direct calls and non-text inputs. Per (example, layer) we record the
generated text, the teacher-forced log-probability of the reference
(``sum_t log p(y_t | y_<t, N(H_l))`` in nats, from ``log_softmax`` in fp32) and task scores (exact
match, chrF from sacrebleu).

Normalisation ``N`` (docs/methods.md, "DecoderLens"; which one the paper uses is unverified): in HF
the final encoder norm (T5/MT5 ``final_layer_norm``, Whisper/M2M100/NLLB/MBart/Pegasus
``layer_norm``) is already inside ``hidden_states[L_e]`` but not in the intermediate states.
``apply_final_norm=True`` applies that norm to ``H_l`` for ``l < L_e`` only (never twice at
``L_e``), the convention of the logit lens. It is the default for pre-LN encoders; post-LN
encoders (BART, Marian) have no final norm, so there it does not apply. ``"both"`` records both
variants. The ``variant`` column says what the decoder read: ``"final_norm"`` (norm applied here),
``"raw"`` (intermediate state as is), ``"encoder_output"`` (layer ``L_e``: the encoder's own
output, identical to plain ``generate``).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import pandas as pd

from workbench.errors import WorkbenchError

# Attribute names of a final encoder norm, per architecture family (pre-LN encoders only).
_FINAL_NORM_ATTRS = ("final_layer_norm", "layer_norm", "ln_f", "norm")
# model_type -> the encoder is post-LN, whatever attributes it has.
_POST_LN_TYPES = {"bart", "marian", "fsmt", "blenderbot-small"}

COLUMNS = [
    "example", "task", "layer", "depth", "variant", "output", "logprob", "logprob_per_token",
    "n_ref_tokens", "exact_match", "chrf", "source", "reference",
]


def encoder_final_norm(hf_model):
    """The final norm module of a pre-LN encoder, or ``None`` for post-LN encoders (BART, Marian)."""
    if getattr(hf_model.config, "model_type", None) in _POST_LN_TYPES:
        return None
    enc = hf_model.get_encoder()
    for name in _FINAL_NORM_ATTRS:
        mod = getattr(enc, name, None)
        if mod is not None and "norm" in type(mod).__name__.lower():
            return mod
    return None


def _variants(hf_model, apply_final_norm) -> list[bool]:
    """Resolve ``apply_final_norm`` ('auto' | None | True | False | 'both') to a list of flags."""
    norm = encoder_final_norm(hf_model)
    mt = getattr(hf_model.config, "model_type", "?")
    if apply_final_norm in (None, "auto"):
        return [norm is not None]
    if apply_final_norm == "both":
        if norm is None:
            raise WorkbenchError(
                f"apply_final_norm='both': this {mt} encoder is post-LN and has no final norm, so "
                "there is only one variant; use apply_final_norm='auto' or False."
            )
        return [True, False]
    if apply_final_norm is True or apply_final_norm == "true":
        if norm is None:
            raise WorkbenchError(
                f"apply_final_norm=True: this {mt} encoder is post-LN (no final encoder norm); "
                "intermediate states are already normalised. Use apply_final_norm='auto' or False."
            )
        return [True]
    if apply_final_norm is False or apply_final_norm == "false":
        return [False]
    raise WorkbenchError(
        f"apply_final_norm={apply_final_norm!r}: choose 'auto', True, False or 'both'."
    )


def _score(output: str, reference: str | None) -> tuple[float, float]:
    """(exact match in {0, 1}, sentence chrF in 0..100) of one output; NaN without a reference."""
    if reference is None:
        return float("nan"), float("nan")
    import sacrebleu

    em = float(output.strip() == reference.strip())
    chrf = sacrebleu.sentence_chrf(output.strip(), [reference.strip()]).score
    return em, float(chrf)


def _reference_labels(tokenizer, references, device=None):
    """Reference token ids as ``labels`` ([batch, tgt_len], right-padded with -100) and their counts.

    Padded by hand on the right whatever the tokenizer's ``padding_side``: the model shifts labels
    right to make decoder inputs, so left padding would change the teacher-forced prefix.
    """
    import torch

    ids = tokenizer(text_target=list(references))["input_ids"]
    width = max(1, max(len(x) for x in ids))
    lab = torch.full((len(ids), width), -100, dtype=torch.long)
    for i, x in enumerate(ids):
        lab[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
    return lab.to(device), torch.as_tensor([len(x) for x in ids])


def _check_inputs(hf_model, sources, references, tasks) -> None:
    cfg = hf_model.config
    if not getattr(cfg, "is_encoder_decoder", False):
        raise WorkbenchError(
            f"DecoderLens needs an encoder-decoder model (T5, BART, Marian, Whisper, ...); "
            f"{getattr(cfg, 'model_type', type(hf_model).__name__)} is not one."
        )
    n = len(sources)
    if n == 0:
        raise WorkbenchError("DecoderLens got no sources; the dataset is empty.")
    if references is not None and len(references) != n:
        raise WorkbenchError(f"{n} sources but {len(references)} references; give one per source.")
    if tasks is not None and len(tasks) != n:
        raise WorkbenchError(f"{n} sources but {len(tasks)} task labels; give one per source.")


def resolve_layers(layers: Iterable[int] | None, n_layers: int) -> list[int]:
    """The encoder layers to read, sorted (``None``: all ``0..L_e``); WorkbenchError when out of range."""
    want = list(range(n_layers + 1)) if layers is None else sorted({int(x) for x in layers})
    bad = [x for x in want if not 0 <= x <= n_layers]
    if bad:
        raise WorkbenchError(f"layers {bad} out of range; this encoder has layers 0..{n_layers}.")
    return want


def lens_passes(layers: Sequence[int], n_layers: int, variants: Sequence[bool]) -> list[tuple[int, bool, str]]:
    """``(layer, apply the final norm, variant name)`` for every decoder pass of one batch: each
    intermediate layer once per variant, layer ``L_e`` once (its own output, never normed twice)."""
    passes = []
    for layer in layers:
        if layer == n_layers:
            passes.append((layer, False, "encoder_output"))
        else:
            passes += [(layer, bool(apply), "final_norm" if apply else "raw") for apply in variants]
    return passes


def _read_state(hf_model, tokenizer, h, mask, labels, gen: dict) -> tuple[list[str], list[float] | None]:
    """The decoder reading ``h`` [B, T, D]: generated texts, and the summed reference log-probs
    (teacher-forced, fp32 ``log_softmax``) when ``labels`` are given."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    eo = BaseModelOutput(last_hidden_state=h)
    kw = {"attention_mask": mask} if mask is not None else {}
    seq = hf_model.generate(encoder_outputs=eo, **kw, **gen)
    texts = tokenizer.batch_decode(seq, skip_special_tokens=True)
    if labels is None:
        return texts, None
    logits = hf_model(encoder_outputs=eo, labels=labels, **kw).logits
    lp = torch.log_softmax(logits.float(), dim=-1)
    tok_lp = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)
    return texts, tok_lp.sum(-1).tolist()


def _row(i: int, layer: int, n_layers: int, variant: str, text: str, logprob: float | None, n_tok: int,
         sources, references, tasks) -> dict:
    """One table row: example ``i`` read at ``layer`` (``COLUMNS``)."""
    ref = references[i] if references is not None else None
    em, chrf = _score(text, ref)
    known = ref is not None
    return {
        "example": i,
        "task": tasks[i] if tasks is not None else "",
        "layer": layer,
        "depth": layer / n_layers if n_layers else 1.0,
        "variant": variant,
        "output": text.strip(),
        "logprob": float(logprob) if known else float("nan"),
        "logprob_per_token": float(logprob) / n_tok if known and n_tok else float("nan"),
        "n_ref_tokens": n_tok,
        "exact_match": em,
        "chrf": chrf,
        "source": sources[i] if isinstance(sources[i], str) else f"<{', '.join(sources[i])}>",
        "reference": ref if known else "",
    }


def decoder_lens(
    hf_model,
    tokenizer,
    sources: Sequence[str] | Sequence[dict],
    references: Sequence[str] | None = None,
    *,
    tasks: Sequence[str] | None = None,
    layers: Iterable[int] | None = None,
    apply_final_norm: bool | str | None = "auto",
    generation: dict | None = None,
    batch_size: int = 32,
    max_source_length: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    states=None,
) -> pd.DataFrame:
    """Run the DecoderLens over ``sources`` and return one tidy row per (example, layer, variant).

    Args:
        hf_model: a transformers encoder-decoder model (T5/MT5, BART, Marian, M2M100, Whisper, ...),
            in eval mode.
        tokenizer: its tokenizer; sources are tokenised with padding, references as ``text_target``.
        sources: source texts, or (for non-text encoders like Whisper) dicts of per-example encoder
            inputs, e.g. ``{"input_features": float[n_mels, T]}``.
        references: target texts (optional; without them logprob and scores are NaN).
        tasks: a task label per example (optional; for grouping).
        layers: encoder layers to read (default all, ``0..L_e``).
        apply_final_norm: ``"auto"`` (on for pre-LN encoders), True, False or ``"both"``.
        generation: keyword arguments for ``generate`` (default greedy, ``max_new_tokens=32``);
            the same for every layer, so layer ``L_e`` reproduces plain ``generate`` exactly.
        batch_size: examples per forward pass.
        max_source_length: truncation of text sources when the encoder is run here (``states=None``).
        progress: optional ``progress(done, total, message)`` callback.
        states: where the encoder states come from (:mod:`analyses.decoder_lens.states`): a
            :class:`~analyses.decoder_lens.states.StoreStates` of the activation store (what the
            registered analysis passes), or ``None`` to run the encoder here (``ForwardStates``).

    Returns:
        DataFrame with columns ``COLUMNS``: example (index into sources), task, layer (0..L_e),
        depth (layer / L_e), variant, output (decoded text), logprob (sum over reference tokens,
        nats), logprob_per_token, n_ref_tokens, exact_match (0/1), chrf (0..100), source, reference.
    """
    import torch

    from .states import ForwardStates

    _check_inputs(hf_model, sources, references, tasks)
    n = len(sources)
    if states is None:
        states = ForwardStates(hf_model, tokenizer, sources, max_source_length, batch_size)
    if states.n_texts != n:
        raise WorkbenchError(f"{n} sources but encoder states of {states.n_texts} texts.")
    gen = {"max_new_tokens": 32, "do_sample": False, "num_beams": 1}
    gen.update(generation or {})
    variants = _variants(hf_model, apply_final_norm)  # before any forward: a bad choice fails at once
    L = states.n_layers
    want = resolve_layers(layers, L)
    passes = lens_passes(want, L, variants)
    norm = encoder_final_norm(hf_model)
    spans = [(lo, min(n, lo + batch_size)) for lo in range(0, n, batch_size)]
    total = len(spans) * len(passes)
    rows: list[dict] = []
    hf_model.eval()
    with torch.no_grad():
        for b, (lo, hi) in enumerate(spans):
            hs, mask = states.batch(lo, hi, want)
            labels, n_tok = (None, None) if references is None else \
                _reference_labels(tokenizer, references[lo:hi], device=hs[want[0]].device)
            for k, (layer, apply, variant) in enumerate(passes):
                h = norm(hs[layer]) if apply else hs[layer]
                texts, seq_lp = _read_state(hf_model, tokenizer, h, mask, labels, gen)
                rows += [_row(lo + j, layer, L, variant, text, None if seq_lp is None else seq_lp[j],
                              0 if n_tok is None else int(n_tok[j]), sources, references, tasks)
                         for j, text in enumerate(texts)]
                if progress is not None:
                    progress(b * len(passes) + k + 1, total,
                             f"encoder layer {layer}/{L} ({variant}), batch {b + 1}/{len(spans)}")
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["example", "layer", "variant"], kind="stable").reset_index(drop=True)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean scores per (task, variant, layer): columns task, variant, layer, depth, exact_match, chrf,
    logprob, logprob_per_token, n. The last layer (variant ``encoder_output``) is repeated under every
    intermediate variant so that each curve runs to ``L_e``."""
    t = table.copy()
    inter = sorted(v for v in t["variant"].unique() if v != "encoder_output")
    if inter:
        last = t[t["variant"] == "encoder_output"]
        t = pd.concat([t[t["variant"] != "encoder_output"]] + [last.assign(variant=v) for v in inter])
    g = t.groupby(["task", "variant", "layer"], sort=True)
    out = g.agg(
        depth=("depth", "first"), exact_match=("exact_match", "mean"), chrf=("chrf", "mean"),
        logprob=("logprob", "mean"), logprob_per_token=("logprob_per_token", "mean"),
        n=("example", "nunique"),
    ).reset_index()
    return out
