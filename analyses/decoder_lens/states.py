"""Where the DecoderLens gets the encoder's hidden states ``H_l`` from, one batch of examples at a time.

Two sources with one interface, ``n_layers`` (``L_e``), ``n_texts`` and
``batch(lo, hi, layers) -> ({layer: H_l [B, T, D]}, attention mask [B, T] or None)``:

- :class:`StoreStates` reads them from an activation-store entry (:mod:`workbench.store`): the
  encoder's residual hooks ``resid_hook(l)`` of every source text, stored per text without padding,
  rebuilt here right-padded with the attention mask from the stored lengths. This is what the
  registered analysis uses (:func:`store_states`), so a second identical run does no encoder forward.
  The store tokenises with the tokenizer's own defaults and truncation (special tokens kept, e.g.
  T5's closing ``</s>``), i.e. exactly ``tokenizer(sources, truncation=True, max_length=m)``.
- :class:`ForwardStates` runs the encoder itself: for direct calls of
  :func:`analyses.decoder_lens.lens.decoder_lens` on any transformers model (no store, no model
  card), and for non-text encoder inputs such as Whisper's ``input_features`` that the store does
  not hold.

Layer ``L_e`` is the encoder's own output (``last_hidden_state``, already normed for pre-LN
encoders); in transformers it is also ``hidden_states[L_e]``, which is what the store keeps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from workbench.data import TextDataset
from workbench.models import resid_hook

Batch = tuple[dict[int, torch.Tensor], "torch.Tensor | None"]


def _model_place(hf_model) -> tuple[torch.device, torch.dtype]:
    param = next(hf_model.parameters())
    return param.device, param.dtype


def encode_sources(tokenizer, sources, max_source_length: int | None = None) -> dict[str, torch.Tensor]:
    """Tokenise text sources (padded as the tokenizer pads, truncated by it at ``max_source_length``), or
    stack pre-computed encoder inputs (dicts of tensors, e.g. Whisper ``{"input_features": ...}``)."""
    if len(sources) and isinstance(sources[0], dict):
        keys = sources[0].keys()
        return {k: torch.stack([torch.as_tensor(s[k]) for s in sources]) for k in keys}
    enc = tokenizer(list(sources), return_tensors="pt", padding=True, truncation=max_source_length is not None,
                    max_length=max_source_length)
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def pad_states(arrays: Sequence[np.ndarray], device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text states ``[len_i, D]`` -> (zero-padded ``[B, max_len, D]``, attention mask int64 ``[B, max_len]``)."""
    width = max(len(a) for a in arrays)
    states = torch.zeros((len(arrays), width) + tuple(arrays[0].shape[1:]), dtype=torch.float32)
    mask = torch.zeros((len(arrays), width), dtype=torch.long)
    for k, a in enumerate(arrays):
        states[k, :len(a)] = torch.from_numpy(np.array(a, dtype=np.float32))  # a copy: the store is read-only
        mask[k, :len(a)] = 1
    return states.to(device=device, dtype=dtype), mask.to(device)


class StoreStates:
    """Encoder states of every source text, read from an activation-store entry."""

    def __init__(self, entry, n_layers: int, hf_model):
        self.entry = entry
        self.n_layers = int(n_layers)
        self.n_texts = entry.n_texts
        self.device, self.dtype = _model_place(hf_model)

    def batch(self, lo: int, hi: int, layers: Sequence[int]) -> Batch:
        out, mask = {}, None
        for layer in layers:
            hook = resid_hook(layer)
            out[layer], mask = pad_states([self.entry.text_activations(hook, i) for i in range(lo, hi)],
                                         self.device, self.dtype)
        return out, mask


class ForwardStates:
    """Encoder states computed by running ``hf_model``'s encoder on each batch of sources."""

    def __init__(self, hf_model, tokenizer, sources, max_source_length: int | None = None, batch_size: int = 32):
        self.hf_model, self.tokenizer, self.sources = hf_model, tokenizer, sources
        self.max_source_length = max_source_length
        self.n_texts = len(sources)
        self._last: tuple[tuple[int, int], list, "torch.Tensor | None"] | None = None
        self._n_layers: int | None = None
        self._first = (0, min(int(batch_size), self.n_texts))  # its forward tells n_layers, then serves it

    @property
    def n_layers(self) -> int:
        """``L_e``, known after the first batch's forward (kept for the first ``batch`` call)."""
        if self._n_layers is None:
            self._forward(*self._first)
        return self._n_layers

    @torch.no_grad()
    def _forward(self, lo: int, hi: int) -> tuple[list, "torch.Tensor | None"]:
        if self._last is None or self._last[0] != (lo, hi):
            device, _ = _model_place(self.hf_model)
            enc_in = {k: v.to(device) for k, v in
                      encode_sources(self.tokenizer, self.sources[lo:hi], self.max_source_length).items()}
            out = self.hf_model.get_encoder()(**enc_in, output_hidden_states=True, return_dict=True)
            hs = list(out.hidden_states)
            hs[-1] = out.last_hidden_state  # what the decoder normally reads
            self._n_layers = len(hs) - 1
            self._last = ((lo, hi), hs, enc_in.get("attention_mask"))
        return self._last[1], self._last[2]

    def batch(self, lo: int, hi: int, layers: Sequence[int]) -> Batch:
        hs, mask = self._forward(lo, hi)
        return {layer: hs[layer] for layer in layers}, mask


def store_states(ctx, model, sources: list[str], layers: Sequence[int], batch_size: int,
                 dataset_name: str = "sources") -> StoreStates:
    """The encoder states of ``sources`` at ``layers`` through the run's store (``ctx.activations``),
    tokenised as the store does at the model's ``max_length``; extracted once, then a cache hit."""
    dataset = TextDataset.from_texts(list(sources), name=dataset_name)
    entry = ctx.activations([resid_hook(layer) for layer in layers], max_length=model.max_length,
                            dataset=dataset, batch_size=batch_size)
    return StoreStates(entry, model.n_layers, model.hf_model)
