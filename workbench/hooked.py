"""Forward passes a back-end runs itself: interventions, generation and embedding of new texts.

Activations of a dataset come from the store (:mod:`workbench.store`). Everything here is for inputs
the store cannot hold in advance: patched or ablated runs, KV-cache generation, and candidate texts
that only exist during a search. One place for batching and padding, hooks, ablation and patching,
generation, and the embedding of texts, so that each is written once.

Interventions work on any decoder-only TransformerBridge (``LoadedModel.bridge``) by TransformerLens
hook name: :func:`run_batched` / :func:`forward_logits_at` (right-padded batches with forward hooks;
the latter can resume at a block from a clean residual, :func:`blocks_skipped`),
:func:`collect` (clean activations of prompts the store does not hold), :func:`per_position_mean`,
and the hooks :func:`mean_ablation_hook` and :func:`patch_hook` that replace one head of a per-head
hook such as ``blocks.{l}.attn.hook_z``. Activation patching is :func:`patch_sweep` (a :class:`Patch`
per replaced activation, sources from :func:`collect_and_score`), attribution patching's gradients
:func:`activation_gradients`. :func:`repeated_random_tokens` and
:func:`repeat_scores_table` are the standard attention-pattern diagnostics (previous-token,
induction, duplicate-token, current-token) on ``[BOS] r r`` sequences.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .errors import WorkbenchError

Hook = tuple[str, Callable]
#: forward hooks for a batched run: one list for every batch, or a function of the batch's rows
#: (a slice of the prompts) giving that batch's list (for hooks that read per-prompt data)
BatchHooks = "Sequence[Hook] | Callable[[slice], Sequence[Hook]] | None"


# ---- batching and padding ----------------------------------------------------------------------
def pad_right(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> (ids int64 [B, T], lengths int64 [B]).

    With causal attention and right padding the real tokens never attend to the pads, so their
    activations equal an unpadded forward; every statistic must skip positions ``>= lengths``.
    """
    if not seqs:
        raise WorkbenchError("No prompts to run: the input produced an empty prompt set.")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, lengths


def batches(n: int, batch_size: int) -> Iterable[slice]:
    """Consecutive slices of at most ``batch_size`` over ``range(n)``."""
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def length_order(lengths: list[int]) -> list[int]:
    """Indices sorted by length, so that a batch of neighbours wastes little compute on padding."""
    return sorted(range(len(lengths)), key=lambda i: lengths[i])


# ---- embedding texts ---------------------------------------------------------------------------
@torch.inference_mode()
def embed_texts(model, texts: list[str], layer: int | None = None, batch_size: int = 64,
                max_length: int | None = None) -> torch.Tensor:
    """Embeddings float32 ``[N, D]`` of new texts, the way the store embeds a dataset.

    ``layer=None``: the model's sentence embedding (its own pooling and normalisation, as
    sentence-transformers); ``layer=l``: the mean over real tokens of hidden state ``l``
    (0 = embeddings). Texts are tokenised with the tokenizer's defaults (special tokens included)
    and truncated by the tokenizer at ``max_length`` (default the model's), then batched by length.
    """
    if model.kind != "encoder":
        raise WorkbenchError(f"{model.name} is a {model.kind}, not a sentence embedder; use e.g. minilm-l6.")
    texts = list(texts)
    if not texts:
        return torch.zeros((0, model.d_model))
    limit = int(min(max_length or model.max_length, model.max_length))
    ids = model.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
    order = length_order([len(i) for i in ids])
    out = []
    for part in batches(len(order), batch_size):
        chunk = order[part]
        enc = model.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
        mask = enc["attention_mask"].to(model.input_device)
        res = model.hf_model(input_ids=enc["input_ids"].to(model.input_device), attention_mask=mask,
                             output_hidden_states=layer is not None)
        if layer is None:
            out.append(model.pool(res.last_hidden_state, mask).cpu())
        else:
            states = res.hidden_states[layer].float()
            m = mask.unsqueeze(-1).to(states.dtype)
            out.append(((states * m).sum(1) / m.sum(1).clamp(min=1)).cpu())
    pooled = torch.cat(out).float()
    result = torch.empty_like(pooled)
    result[torch.tensor(order)] = pooled
    return result


def embed_numpy(model, texts: list[str], **kwargs) -> np.ndarray:
    """:func:`embed_texts` as a numpy array."""
    return embed_texts(model, texts, **kwargs).numpy()


# ---- batched forwards with hooks ---------------------------------------------------------------
def model_shape(bridge) -> tuple[int, int, int]:
    """(n_layers, n_heads per layer, d_model) of a TransformerBridge."""
    cfg = bridge.cfg
    return int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_model)


def block_hooks(name: str, n_layers: int) -> list[str]:
    """``blocks.{l}.{name}`` for every layer, e.g. ``block_hooks("attn.hook_z", 4)``."""
    return [f"blocks.{layer}.{name}" for layer in range(n_layers)]


def _input_device(bridge) -> torch.device:
    param = next(iter(bridge.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _hooks_for(hooks: BatchHooks, rows: slice) -> list[Hook]:
    if hooks is None:
        return []
    return list(hooks(rows) if callable(hooks) else hooks)


@torch.no_grad()
def run_batched(bridge, seqs: list[list[int]], hooks: BatchHooks = None, batch_size: int = 32,
                pad_id: int = 0) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Forward token lists in right-padded batches with forward hooks; yields ``(rows, logits, lengths)``.

    ``rows`` is the slice of ``seqs`` in the batch, ``logits`` ``[B, T, vocab]`` (as the bridge
    returns them), ``lengths`` int64 ``[B]``. ``hooks`` are TransformerLens forward hooks
    ``(name, fn(value, hook))``: a list used for every batch, or a function of ``rows`` returning
    the batch's list. Positions ``>= lengths`` are padding (see :func:`pad_right`).
    """
    device = _input_device(bridge)
    for rows in batches(len(seqs), batch_size):
        ids, lengths = pad_right(seqs[rows], pad_id)
        logits = bridge.run_with_hooks(ids.to(device), fwd_hooks=_hooks_for(hooks, rows))
        yield rows, logits, lengths


@torch.no_grad()
def forward_logits_at(bridge, seqs: list[list[int]], positions: list[list[int]], batch_size: int = 32,
                      hooks: BatchHooks = None, resume: "tuple[int, torch.Tensor] | None" = None
                      ) -> list[torch.Tensor]:
    """Logits at given positions of each prompt, with optional forward hooks: a list of float32
    ``[len(positions[i]), vocab]`` on the CPU, one per prompt.

    Only the batch's wanted positions are unembedded (transformers' ``logits_to_keep``), which
    matters when the vocabulary is large (gemma3: 262k tokens).

    ``resume=(layer, residual)`` starts every batch at block ``layer`` from ``residual[rows]``
    (``[N, T_max, d_model]``: the clean ``blocks.{layer}.hook_resid_pre`` of the same prompts in the
    same order, e.g. from :func:`collect`), and blocks below ``layer`` are skipped
    (:func:`blocks_skipped`). The logits are then those of the full forward exactly, as long as no
    hook below ``layer`` would have changed anything (TransformerBridge does not fire those hooks):
    an intervention at layer ``l`` only needs the blocks from ``l`` on.
    """
    if len(positions) != len(seqs):
        raise WorkbenchError(f"{len(positions)} position lists for {len(seqs)} prompts: give one per prompt.")
    for seq, wanted in zip(seqs, positions):
        if any(not 0 <= p < len(seq) for p in wanted):
            raise WorkbenchError(f"Positions {list(wanted)} are not all inside a prompt of {len(seq)} tokens: give "
                                 "positions 0 .. length - 1 (no negative indices).")
    layer, residual = (None, None) if resume is None else resume
    if residual is not None and (residual.shape[0] != len(seqs) or residual.shape[1] < max(len(s) for s in seqs)):
        raise WorkbenchError(f"resume: the residual has shape {tuple(residual.shape)} but there are {len(seqs)} "
                             f"prompts of up to {max(len(s) for s in seqs)} tokens; collect it on the same prompts.")
    device, dtype = _input_device(bridge), _input_dtype(bridge)
    keep = _accepts_logits_to_keep(bridge)
    out: list[torch.Tensor] = []
    with blocks_skipped(bridge, layer or 0):
        for rows in batches(len(seqs), batch_size):
            ids, _ = pad_right(seqs[rows])
            wanted = sorted({p for b in range(rows.start, rows.stop) for p in positions[b]})
            kwargs = {"logits_to_keep": torch.tensor(wanted, device=device)} if keep else {}
            if layer is None:
                run_input = ids.to(device)
            else:
                run_input = residual[rows, : ids.shape[1]].to(device, dtype)
                kwargs["start_at_layer"] = int(layer)
            logits = bridge.run_with_hooks(run_input, fwd_hooks=_hooks_for(hooks, rows), **kwargs)
            column = {p: j for j, p in enumerate(wanted)} if keep else {p: p for p in wanted}
            for i, b in enumerate(range(rows.start, rows.stop)):
                out.append(logits[i, [column[p] for p in positions[b]]].float().cpu())
    return out


def _input_dtype(bridge) -> torch.dtype:
    param = next(iter(bridge.parameters()), None)
    return param.dtype if param is not None else torch.float32


def _accepts_logits_to_keep(bridge) -> bool:
    """Whether the bridge's transformers model takes ``logits_to_keep`` (every causal LM of recent
    transformers does; an older or custom one gets the full logits)."""
    import inspect

    model = getattr(bridge, "original_model", None)
    return model is not None and "logits_to_keep" in inspect.signature(model.forward).parameters


def _pass_through(*args, **kwargs):
    """A block that returns its incoming hidden states unchanged."""
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def blocks_skipped(bridge, start: int) -> Iterator[None]:
    """Blocks ``0 .. start-1`` of the bridge return their input unchanged while the context is open.

    For ``run_with_hooks(residual, start_at_layer=start)``: TransformerBridge swaps ``residual`` in
    at block ``start`` and discards what the earlier blocks produced, but still runs them; this
    skips that wasted work (on smollm2-135m a forward from layer 15 takes a third of a full one).
    Each block's ``forward`` is shadowed by an instance attribute and restored on exit, also after
    an error. Not for concurrent forwards on the same bridge (like ``start_at_layer`` itself, it
    changes shared module state).
    """
    skipped = list(getattr(bridge, "blocks", []))[: max(0, int(start))]
    for block in skipped:
        # object.__setattr__: the bridge's components forward unknown attributes to the wrapped module
        object.__setattr__(block, "forward", _pass_through)
    try:
        yield
    finally:
        for block in skipped:
            if "forward" in vars(block):
                object.__delattr__(block, "forward")


def _padded(value: torch.Tensor, lengths: torch.Tensor, t_max: int) -> torch.Tensor:
    """A token-major batch ``[B, T, ...]`` padded to ``T_max`` positions, zero past each prompt's length."""
    value = torch.nn.functional.pad(value, [0, 0] * (value.dim() - 2) + [0, t_max - value.shape[1]])
    mask = torch.arange(t_max)[None, :] < lengths[:, None]  # [B, T_max]
    return value * mask.reshape(mask.shape + (1,) * (value.dim() - 2)).to(value.dtype)


def _token_major(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    if any(n.endswith("hook_pattern") for n in names):
        raise WorkbenchError("collect() takes token-major hooks; read attention patterns from the store.")
    return names


def collect(bridge, seqs: list[list[int]], names: Iterable[str], batch_size: int = 32,
            pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Activations of token-major hooks (``[B, T, ...]``: residuals, ``attn.hook_z``, ...) for prompts
    the store does not hold: ``{name: float32 [N, T_max, ...]}`` on the CPU, zero at positions past
    each prompt's length. (Attention patterns are ``[B, H, T, T]``: read them from the store.)"""
    return collect_and_score(bridge, seqs, names, None, batch_size, pad_id)[0]


def collect_and_score(bridge, seqs: list[list[int]], names: Iterable[str], metric: "Metric | None",
                      batch_size: int = 32, pad_id: int = 0) -> tuple[dict[str, torch.Tensor], np.ndarray | None]:
    """:func:`collect`, and ``metric`` of each prompt from the same forward (float64 ``[N]``; None
    without a metric): the clean run of activation and attribution patching."""
    names = _token_major(names)
    check_hook_names(bridge, names)
    wanted, t_max, device = set(names), max(len(s) for s in seqs) if seqs else 0, _input_device(bridge)
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    scores: list[float] = []
    for rows in batches(len(seqs), batch_size):
        ids, lengths = pad_right(seqs[rows], pad_id)
        with torch.no_grad():
            logits, cache = bridge.run_with_cache(ids.to(device), names_filter=lambda n: n in wanted)
            if metric is not None:
                scores += metric(logits, list(range(rows.start, rows.stop))).tolist()
        for n in names:
            chunks[n].append(_padded(cache[n].float().cpu(), lengths, t_max))
    acts = {n: torch.cat(v) for n, v in chunks.items()}
    return acts, (np.asarray(scores, dtype=np.float64) if metric is not None else None)


def per_position_mean(acts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over prompts at each position, over the prompts long enough: ``[B, T, ...] -> [T, ...]``."""
    mask = (torch.arange(acts.shape[1])[None, :] < lengths[:, None]).to(acts.dtype)  # [B, T]
    mask = mask.reshape(mask.shape + (1,) * (acts.dim() - 2))
    return (acts * mask).sum(0) / mask.sum(0).clamp(min=1)


# ---- ablation and patching hooks ---------------------------------------------------------------
def mean_ablation_hook(head: int, means: torch.Tensor) -> Callable:
    """A forward hook for a per-head hook (``[B, T, H, ...]``, e.g. ``attn.hook_z``) that replaces head
    ``head`` at every position ``t`` by ``means[t, head]`` (``means`` ``[T_max, H, ...]``, e.g. from
    :func:`per_position_mean`): mean ablation."""
    def hook(value, hook=None):
        value[:, :, head] = means[: value.shape[1], head].to(value.device, value.dtype)
        return value
    return hook


def patch_hook(head: int, source: torch.Tensor, rows: slice) -> Callable:
    """A forward hook for a per-head hook that replaces head ``head`` of the batch's prompts by its
    value on other prompts: ``source[rows, t, head]`` (``source`` ``[N, T_max, H, ...]``, e.g. from
    :func:`collect` on the paired corrupted prompts; ``rows`` the batch's slice: pass
    ``hooks=lambda rows: [(name, patch_hook(h, source, rows))]`` to :func:`run_batched`)."""
    def hook(value, hook=None):
        value[:, :, head] = source[rows, : value.shape[1], head].to(value.device, value.dtype)
        return value
    return hook


# ---- repeated random tokens: attention-pattern diagnostics -------------------------------------
#: the scores of :func:`repeat_pattern_scores`, in its order
REPEAT_SCORES = ("prev_token_score", "induction_score", "duplicate_token_score", "current_token_score")


def ordinary_token_ids(tokenizer, limit: int | None = None) -> list[int]:
    """Token ids that are not special tokens, among the first ``limit`` (all when None)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = len(tokenizer)
    hi = vocab if limit is None else min(vocab, limit)
    return [i for i in range(hi) if i not in special]


def repeated_random_tokens(pool: Sequence[int], n: int, period: int, bos: int | None = None, seed: int = 0,
                           chunk: int = 50) -> list[list[int]]:
    """``n`` sequences ``[BOS] r r``, ``r`` = ``period`` tokens drawn uniformly from ``pool`` by a torch
    generator seeded with ``seed``, ``chunk`` sequences per draw (a given seed and chunk always give
    the same sequences). No BOS when ``bos`` is None."""
    if period < 1 or not pool:
        raise WorkbenchError("repeated sequences need period >= 1 and a non-empty token pool.")
    ids = torch.tensor(list(pool))
    gen = torch.Generator().manual_seed(int(seed))
    head = [int(bos)] if bos is not None else []
    out: list[list[int]] = []
    while len(out) < n:
        b = min(chunk, n - len(out))
        r = ids[torch.randint(len(ids), (b, period), generator=gen)].tolist()
        out.extend(head + row + row for row in r)
    return out


def repeat_pattern_scores(pattern: np.ndarray, period: int, offset: int = 1) -> np.ndarray:
    """Scores of each head on one ``[prefix] r r`` sequence from its attention pattern ``[H, T, T]``
    (query, key; ``offset`` prefix tokens, 1 for a BOS), float64 ``[H, 4]`` in the order of
    :data:`REPEAT_SCORES`: mean attention from ``t`` to ``t - 1`` over ``t = 1 .. T-1``
    (previous-token), to ``t - period + 1`` over the second copy (induction: the token after the
    previous occurrence, Olsson et al. 2022), to ``t - period`` over the second copy (duplicate-token),
    to ``t`` itself over ``t = 1 .. T-1`` (current-token)."""
    p = np.asarray(pattern, dtype=np.float64)
    t_all = np.arange(1, p.shape[-1])
    t_rep = np.arange(offset + period, offset + 2 * period)
    return np.stack([p[:, t_all, t_all - 1].mean(-1), p[:, t_rep, t_rep - period + 1].mean(-1),
                     p[:, t_rep, t_rep - period].mean(-1), p[:, t_all, t_all].mean(-1)], axis=-1)


def repeat_scores_table(pattern_of: Callable[[int, int], np.ndarray], n_texts: int, n_layers: int, period: int,
                        offset: int = 1) -> pd.DataFrame:
    """Mean :func:`repeat_pattern_scores` over ``n_texts`` sequences, one row per (layer, head).

    ``pattern_of(layer, i)`` gives the pattern ``[H, T, T]`` of sequence ``i`` at ``layer`` (e.g.
    ``CacheEntry.attention_pattern``)."""
    sums = None
    for layer in range(n_layers):
        for i in range(n_texts):
            scores = repeat_pattern_scores(pattern_of(layer, i), period, offset)
            if sums is None:
                sums = np.zeros((n_layers,) + scores.shape)
            sums[layer] += scores
    means = sums / n_texts
    n_heads = means.shape[1]
    table = pd.DataFrame({"layer": np.repeat(np.arange(n_layers), n_heads),
                          "head": np.tile(np.arange(n_heads), n_layers)})
    for k, name in enumerate(REPEAT_SCORES):
        table[name] = means[:, :, k].ravel()
    return table


# ---- activation patching and attribution patching ----------------------------------------------
#: ``metric(logits [B, T, vocab], prompts) -> [B]``: the quantity patched, for batch rows that are
#: the prompts ``prompts`` (indices into the prompt list); differentiable for attribution patching
Metric = Callable[[torch.Tensor, list[int]], torch.Tensor]


@dataclass(frozen=True)
class Patch:
    """One activation replaced by its value on another run (docs/methods.md, "Attention, DLA and
    patching"): ``hook`` a token-major TransformerLens hook (``[B, T, ...]``, e.g.
    ``blocks.3.hook_resid_pre``), ``position`` (None: every position of the prompt), ``head`` (per-head
    hooks ``[B, T, H, d_head]`` such as ``attn.hook_z`` only; None: every head)."""

    hook: str
    position: int | None = None
    head: int | None = None

    def index(self, length: int) -> tuple:
        """The patched part of one prompt's value ``[T, ...]`` (a prompt of ``length`` tokens)."""
        position = slice(0, length) if self.position is None else self.position
        return (position,) if self.head is None else (position, self.head)


def check_hook_names(bridge, names: Iterable[str]) -> None:
    """WorkbenchError naming the hooks the model does not have (and what its names look like)."""
    missing = [n for n in dict.fromkeys(names) if n not in bridge.hook_dict]
    if missing:
        n_layers = int(bridge.cfg.n_layers)
        raise WorkbenchError(f"This model has no hook {', '.join(missing[:3])}: it has blocks 0..{n_layers - 1}, "
                             "with hooks such as blocks.0.hook_resid_pre, blocks.0.attn.hook_z, blocks.0.hook_mlp_out.")


def _patch_hooks(jobs: list[tuple[int, int]], patches: Sequence[Patch], sources: dict[str, torch.Tensor],
                 lengths: list[int]) -> list[Hook]:
    """Forward hooks for one batch whose row ``r`` is prompt ``n`` under patch ``k`` (``jobs[r] = (k, n)``)."""
    by_hook: dict[str, list[tuple[int, tuple]]] = {}
    for row, (k, n) in enumerate(jobs):
        index = patches[k].index(lengths[n])
        by_hook.setdefault(patches[k].hook, []).append((row, n, index))

    def make(source: torch.Tensor, items: list) -> Callable:
        def hook(value, hook=None):
            for row, n, index in items:
                value[(row,) + index] = source[(n,) + index].to(value.device, value.dtype)
            return value
        return hook

    return [(name, make(sources[name], items)) for name, items in by_hook.items()]


@torch.no_grad()
def patch_sweep(bridge, seqs: list[list[int]], sources: dict[str, torch.Tensor], patches: Sequence[Patch],
                metric: Metric, batch_size: int = 32, pad_id: int = 0,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Activation patching: ``metric`` of every prompt under every patch, float64 ``[len(patches), N]``.

    Under patch ``k`` prompt ``n`` runs with the part ``patches[k]`` names of its hook's value replaced
    by ``sources[hook][n]`` at the same positions (and head): ``sources`` ``{hook: [N, T_max, ...]}``
    from :func:`collect` on the paired prompts (same token lengths). (patch, prompt) pairs are packed
    patch-major into batches of ``batch_size`` rows, so that a sweep over one prompt pair fills its
    batches too. Reference: TransformerLens ``patching`` (one forward per patch).
    """
    check_hook_names(bridge, {p.hook for p in patches})
    lacking = sorted({p.hook for p in patches} - set(sources))
    if lacking:
        raise WorkbenchError(f"No patch source for hook(s) {lacking}: collect them on the source prompts first.")
    device = _input_device(bridge)
    sources = {h: sources[h].to(device) for h in {p.hook for p in patches}}
    lengths = [len(s) for s in seqs]
    jobs = [(k, n) for k in range(len(patches)) for n in range(len(seqs))]
    out = np.empty((len(patches), len(seqs)))
    for part in batches(len(jobs), batch_size):
        chunk = jobs[part]
        ids, _ = pad_right([seqs[n] for _, n in chunk], pad_id)
        logits = bridge.run_with_hooks(ids.to(device), fwd_hooks=_patch_hooks(chunk, patches, sources, lengths))
        for (k, n), value in zip(chunk, metric(logits, [n for _, n in chunk]).tolist()):
            out[k, n] = value
        if progress is not None:
            progress(part.stop, len(jobs))
    return out


def activation_gradients(bridge, seqs: list[list[int]], names: Iterable[str], metric: Metric,
                         batch_size: int = 32, pad_id: int = 0
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], np.ndarray]:
    """Activations of token-major hooks on ``seqs``, the gradient of ``metric`` with respect to them,
    and the metric: ``({name: float32 [N, T_max, ...]}, {name: same}, float64 [N])``, on the CPU,
    zero past each prompt's length. One forward and one backward per batch (attribution patching,
    Nanda 2023). Each hook's value gets a zero tensor added and the gradient is read on it, so every
    path from the activation to the metric counts, whatever ``requires_grad`` the weights have; the
    weights get no ``.grad``. Prompt ``n``'s gradient is that of its own metric (the batch sums them).
    """
    names = _token_major(names)
    check_hook_names(bridge, names)
    t_max = max(len(s) for s in seqs) if seqs else 0
    device = _input_device(bridge)
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    grads: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    scores: list[float] = []
    for rows in batches(len(seqs), batch_size):
        ids, lengths = pad_right(seqs[rows], pad_id)
        deltas: dict[str, torch.Tensor] = {}

        def make(name: str) -> Callable:
            def hook(value, hook=None):
                deltas[name] = torch.zeros_like(value, requires_grad=True)
                acts[name].append(_padded(value.detach().float().cpu(), lengths, t_max))
                return value + deltas[name]
            return hook

        with torch.enable_grad():
            logits = bridge.run_with_hooks(ids.to(device), fwd_hooks=[(n, make(n)) for n in names])
            values = metric(logits, list(range(rows.start, rows.stop)))
            found = torch.autograd.grad(values.sum(), [deltas[n] for n in names], allow_unused=True)
        for n, delta, grad in zip(names, (deltas[n] for n in names), found):
            grad = torch.zeros_like(delta) if grad is None else grad
            grads[n].append(_padded(grad.detach().float().cpu(), lengths, t_max))
        scores += values.detach().tolist()
    return ({n: torch.cat(v) for n, v in acts.items()}, {n: torch.cat(v) for n, v in grads.items()},
            np.asarray(scores, dtype=np.float64))
