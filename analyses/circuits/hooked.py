"""Hooked access for circuit finding: per-head outputs, head ablation, padded batches.

Works on any decoder-only model wrapped by transformer-lens's ``TransformerBridge`` in
compatibility mode (``workbench.models.load_model(name).bridge``). The quantities:

- per-head output in the residual basis: ``result[b, t, l, h] = z[b, t, l, h, :] @ W_O[l, h]``
  (TransformerLens ``hook_result`` / ``cache.stack_head_results()``; ``b_O`` is not part of any
  head), with ``z`` = ``blocks.{l}.attn.hook_z`` [B, T, H, d_head] and ``W_O`` [L, H, d_head, d].
  Averaged over each prompt's real positions (BOS included, as TransformerLens' run on a string)
  or taken at its last position. Since the map is linear we average ``z`` first, then multiply.
- head ablation: replace ``z[:, :, h]`` of one layer with a per-position mean over a reference set
  (mean ablation) or with the paired corrupted prompt's ``z`` (patching).

Prompts are right-padded: with causal attention the real tokens never attend to the pads, so
their activations equal an unpadded forward (pad positions are excluded from every average).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

from workbench.errors import WorkbenchError


def boot_bridge(folder: str | Path):
    """TransformerBridge (compatibility mode, eval, CPU) for a local causal-LM folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.model_bridge import TransformerBridge

    folder = str(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(folder)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=tok, device="cpu")
        bridge.enable_compatibility_mode()
    bridge.eval()
    return bridge


def model_shape(bridge) -> tuple[int, int, int]:
    """(n_layers, n_heads per layer, d_model) of a bridge."""
    cfg = bridge.cfg
    return int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_model)


def pad_batch(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> (ids int64 [B, T], lengths int64 [B])."""
    if not seqs:
        raise WorkbenchError("No prompts to run: the task produced an empty prompt set.")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, lengths


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def _z_hooks(n_layers: int) -> list[str]:
    return [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]


@torch.no_grad()
def head_outputs(bridge, seqs: list[list[int]], position: str = "mean", batch_size: int = 32,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Per-head outputs in the residual basis, float32 [n_prompts, n_layers * n_heads, d_model].

    ``position="mean"``: averaged over each prompt's real positions (the paper); ``"final"``: the
    last real position. Heads are ordered layer-major (index ``l * n_heads + h``).
    """
    if position not in {"mean", "final"}:
        raise WorkbenchError(f"position must be 'mean' or 'final', got {position!r}")
    n_layers, n_heads, d_model = model_shape(bridge)
    W_O = bridge.W_O.detach().float()  # [L, H, d_head, d]
    out = torch.empty(len(seqs), n_layers * n_heads, d_model)
    pooled: dict[int, torch.Tensor] = {}
    state: dict = {}

    def make_hook(layer: int):
        def hook(z, hook=None):
            lengths = state["lengths"]
            zf = z.detach().float()
            if position == "mean":
                mask = (torch.arange(zf.shape[1])[None, :] < lengths[:, None]).to(zf.dtype)
                pooled[layer] = (zf * mask[:, :, None, None]).sum(1) / lengths[:, None, None].to(zf.dtype)
            else:
                pooled[layer] = zf[torch.arange(zf.shape[0]), lengths - 1]
            return z
        return hook

    hooks = [(name, make_hook(l)) for l, name in enumerate(_z_hooks(n_layers))]
    done = 0
    for sl in _batches(len(seqs), batch_size):
        ids, lengths = pad_batch(seqs[sl])
        state["lengths"] = lengths
        bridge.run_with_hooks(ids, fwd_hooks=hooks)
        for l in range(n_layers):
            res = torch.einsum("bhe,hed->bhd", pooled[l], W_O[l])
            out[sl, l * n_heads:(l + 1) * n_heads] = res
        done += sl.stop - sl.start
        if progress:
            progress(done, len(seqs))
    return out


@torch.no_grad()
def forward_logits_at(bridge, seqs: list[list[int]], positions: list[list[int]], batch_size: int = 32,
                      fwd_hooks: list | None = None, on_batch: Callable[[slice], None] | None = None
                      ) -> list[torch.Tensor]:
    """Logits at the given positions of each prompt: list of float32 [n_pos_i, vocab].

    ``fwd_hooks`` are applied on every batch; ``on_batch(slice)`` is called before each batch (hooks
    read the current slice from their closure).
    """
    result: list[torch.Tensor] = []
    for sl in _batches(len(seqs), batch_size):
        ids, _ = pad_batch(seqs[sl])
        if on_batch:
            on_batch(sl)
        logits = bridge.run_with_hooks(ids, fwd_hooks=fwd_hooks or [])
        for i, b in enumerate(range(sl.start, sl.stop)):
            result.append(logits[i, positions[b]].float())
    return result


@torch.no_grad()
def collect_z(bridge, seqs: list[list[int]], batch_size: int = 32) -> dict[int, torch.Tensor]:
    """``hook_z`` of every layer for right-padded prompts: {layer: float32 [B, T_max, H, d_head]}."""
    n_layers, _, _ = model_shape(bridge)
    names = set(_z_hooks(n_layers))
    t_max = max(len(s) for s in seqs)
    chunks: dict[int, list[torch.Tensor]] = {l: [] for l in range(n_layers)}
    for sl in _batches(len(seqs), batch_size):
        ids, _ = pad_batch(seqs[sl])
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
        for l in range(n_layers):
            z = cache[f"blocks.{l}.attn.hook_z"].float()
            if z.shape[1] < t_max:
                z = torch.nn.functional.pad(z, (0, 0, 0, 0, 0, t_max - z.shape[1]))
            chunks[l].append(z)
    return {l: torch.cat(v) for l, v in chunks.items()}


def per_position_mean(z: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over prompts at each position, over the prompts long enough: [B, T, H, e] -> [T, H, e]."""
    mask = (torch.arange(z.shape[1])[None, :] < lengths[:, None]).to(z.dtype)  # [B, T]
    total = (z * mask[:, :, None, None]).sum(0)
    count = mask.sum(0).clamp(min=1)[:, None, None]
    return total / count
