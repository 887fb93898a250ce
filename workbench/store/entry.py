"""A cache entry, read memory-mapped: the one object that answers every "layer l, these positions,
pooled or not" question (in the spirit of TransformerLens's ``ActivationCache``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import WorkbenchError
from ..models import SENTENCE_EMBEDDING
from .files import TOKENS_FILE, _Lease, is_pattern_hook, memmap_safetensors

@dataclass
class CacheEntry:
    """A complete cache entry, read memory-mapped. Token activations are float32 ``[len_i, ...]``.

    While the object is alive it holds a reader's lease, so no process deletes the entry under it;
    :meth:`close` gives the lease back early.
    """

    path: Path
    meta: dict
    lease: "_Lease | None" = field(default=None, repr=False)
    extracted: bool = False  # True when this call made the entry (not a cache hit)

    def __post_init__(self):
        self._shards: list[dict[str, np.ndarray]] | None = None
        self._tok = memmap_safetensors(self.path / TOKENS_FILE)
        # a view (see view()) shows the first n_texts only: every accessor below reads these
        self.lengths = np.asarray(self._tok["lengths"][:int(self.meta["n_texts"])], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.text_starts = np.asarray([0] + [s["text_end"] for s in self.meta["shards"]], dtype=np.int64)

    def view(self, n_texts: int, hooks: list[str], dataset_name: str, dataset_hash: str) -> "CacheEntry":
        """This entry restricted to its first ``n_texts`` texts and to ``hooks``: what the store returns
        for a dataset that is a prefix of this entry's (nothing is copied; the lease is shared).

        The view's ``meta`` describes the view (texts, tokens, hooks, shards clipped at ``n_texts``,
        truncation count, the requested dataset) and names its source under ``view``; ``key`` stays
        the entry's own."""
        if not 0 < n_texts <= self.n_texts:
            raise WorkbenchError(f"a view needs 1..{self.n_texts} texts; got {n_texts}")
        missing = [h for h in hooks if h not in self.meta["hooks"]]
        if missing:
            raise WorkbenchError(f"this cache entry has no hook(s) {missing[:4]}")
        shards = []
        for s in self.meta["shards"]:
            if s["text_start"] >= n_texts:
                break
            shards.append({**s, "text_end": min(s["text_end"], n_texts)})
        offsets = self.offsets[:n_texts + 1]
        truncated = self._tok.get("truncated")
        meta = {**self.meta, "hooks": list(hooks), "shapes": {h: self.meta["shapes"][h] for h in hooks},
                "n_texts": n_texts, "n_tokens": int(offsets[-1]), "shards": shards,
                "n_truncated": int(np.asarray(truncated[:n_texts]).sum()) if truncated is not None else 0,
                "dataset_name": dataset_name, "dataset_hash": dataset_hash,
                "view": {"of": self.key, "of_dataset": self.meta["dataset_name"], "of_n_texts": self.n_texts,
                         "first_texts": n_texts}}
        return CacheEntry(self.path, meta, self.lease)

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()

    # ---- metadata --------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def n_texts(self) -> int:
        return int(self.meta["n_texts"])

    @property
    def hooks(self) -> list[str]:
        return list(self.meta["hooks"])

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def token_ids(self, i: int) -> np.ndarray:
        """Token ids of text ``i`` ``[len_i]`` (int64)."""
        self._check_text(i)
        return np.asarray(self._tok["ids"][self.offsets[i]:self.offsets[i + 1]], dtype=np.int64)

    def token_strings(self, i: int) -> list[str]:
        """Each token of text ``i`` decoded on its own (as the tokenizer's ``decode([id])``)."""
        self._check_text(i)
        starts = self._tok["string_starts"][self.offsets[i]:self.offsets[i + 1] + 1]
        blob = bytes(self._tok["string_bytes"][starts[0]:starts[-1]])
        base = int(starts[0])
        return [blob[int(a) - base:int(b) - base].decode("utf-8") for a, b in zip(starts[:-1], starts[1:])]

    def char_offsets(self, i: int) -> list[list[int]]:
        """``[start, end)`` character span of each token of text ``i`` in the original text."""
        self._check_text(i)
        return np.asarray(self._tok["char_offsets"][self.offsets[i]:self.offsets[i + 1]]).tolist()

    # ---- arrays ----------------------------------------------------------------------------
    def shards(self) -> list[dict[str, np.ndarray]]:
        if self._shards is None:
            self._shards = [memmap_safetensors(self.path / s["file"]) for s in self.meta["shards"]]
        return self._shards

    def _check_hook(self, hook: str) -> None:
        if hook not in self.meta["hooks"]:
            raise WorkbenchError(f"This cache entry has no hook {hook!r}; it has {self.hooks[:6]}...")

    def _check_text(self, i: int) -> None:
        if not 0 <= i < self.n_texts:
            raise WorkbenchError(f"text index {i} out of range (0..{self.n_texts - 1})")

    def _locate(self, i: int) -> tuple[int, int]:
        self._check_text(i)
        shard = int(np.searchsorted(self.text_starts, i, side="right") - 1)
        return shard, int(self.text_starts[shard])

    def text_activations(self, hook: str, i: int) -> np.ndarray:
        """Activations of text ``i``: ``[len_i, ...]`` (sentence hooks: ``[D]``), memory-mapped as stored
        (float16 when the entry was written in float16; the accessors below always give float32)."""
        self._check_hook(hook)
        if is_pattern_hook(hook):
            raise WorkbenchError(f"{hook} holds attention patterns: read them with attention_pattern(layer, i).")
        shard, first_text = self._locate(i)
        arr = self.shards()[shard][hook]
        if hook == SENTENCE_EMBEDDING:
            return arr[i - first_text]
        start = self.offsets[i] - self.offsets[first_text]
        return arr[start:start + self.lengths[i]]

    def iter_texts(self, hook: str) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(i, activations of text i)`` shard by shard (bounded memory)."""
        for i in range(self.n_texts):
            yield i, self.text_activations(hook, i)

    def iter_shards(self, hook: str) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(text range, [tokens_in_shard, ...])`` per shard, as stored: the fastest way to stream."""
        self._check_hook(hook)
        for s, arrays in zip(self.meta["shards"], self.shards()):
            arr = arrays[hook]
            if "view" in self.meta:  # the last shard of a view may hold texts past its end
                arr = arr[:self._shard_rows(s, hook)]
            yield slice(s["text_start"], s["text_end"]), arr

    def _shard_rows(self, shard: dict, hook: str) -> int:
        a, b = shard["text_start"], shard["text_end"]
        if hook == SENTENCE_EMBEDDING:
            return b - a
        if is_pattern_hook(hook):
            return int((self.lengths[a:b] ** 2).sum()) * int(self.meta["shapes"][hook][1])
        return int(self.offsets[b] - self.offsets[a])

    # ---- "give me layer l" (in the spirit of TransformerLens's ActivationCache) ---------------
    def keep_mask(self, skip_first: bool = False) -> np.ndarray | None:
        """bool ``[total_tokens]``: the rows kept when position 0 of every text is left out (None: all)."""
        return self.position_ids() != 0 if skip_first else None

    def layer_chunks(self, hook: str, skip_first: bool = False) -> Iterator[np.ndarray]:
        """One hook's token rows as float32 chunks, one per shard (bounded memory); ``skip_first``
        leaves out position 0 of every text (BOS / [CLS], where massive activations sit)."""
        if is_pattern_hook(hook):
            raise WorkbenchError(f"{hook} holds attention patterns: read them with attention_pattern(hook, i).")
        keep = self.keep_mask(skip_first)
        start = 0
        for _, arr in self.iter_shards(hook):
            x = np.asarray(arr, dtype=np.float32)
            if keep is not None and hook != SENTENCE_EMBEDDING:
                x = x[keep[start:start + len(arr)]]
                start += len(arr)
            yield x

    def layer(self, hook: str, skip_first: bool = False) -> np.ndarray:
        """One hook's rows concatenated, float32 ``[rows, ...]`` (copies into RAM; position 0 of every
        text left out with ``skip_first``). Sentence hooks give one row per text."""
        parts = list(self.layer_chunks(hook, skip_first))
        return np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0])

    def tokens(self, hook: str) -> np.ndarray:
        """All token activations concatenated ``[total_tokens, ...]`` float32 (copies into RAM)."""
        return self.layer(hook)

    def rows(self, hook: str, index: np.ndarray) -> np.ndarray:
        """Token rows by global index (``offsets[i] + position``), float32 ``[len(index), ...]``, in
        the order given; reads only the shards that hold them."""
        index = np.asarray(index, dtype=np.int64)
        self._check_hook(hook)
        starts = self.offsets[self.text_starts]
        shard_of = np.searchsorted(starts, index, side="right") - 1
        out = np.empty((len(index),) + tuple(self.meta["shapes"][hook]), np.float32)
        arrays = self.shards()
        for shard in np.unique(shard_of):
            sel = shard_of == shard
            out[sel] = arrays[shard][hook][index[sel] - starts[shard]]
        return out

    def stack(self, hooks: list[str], skip_first: bool = False) -> np.ndarray:
        """Several hooks' rows stacked, float32 ``[len(hooks), rows, ...]`` (e.g. every layer's residual:
        TransformerLens's ``accumulated_resid`` / ``stack_activation``)."""
        return np.stack([self.layer(h, skip_first) for h in hooks])

    def mean_pooled(self, hook: str, skip_first: bool = False) -> np.ndarray:
        """Per-text mean over tokens ``[n_texts, ...]`` (float32; accumulated in float64). A text of
        one token keeps it even with ``skip_first``."""
        self._check_hook(hook)
        if hook == SENTENCE_EMBEDDING:
            return self.layer(hook)
        out = None
        for i, acts in self.iter_texts(hook):
            if skip_first and len(acts) > 1:
                acts = acts[1:]
            if out is None:
                out = np.zeros((self.n_texts,) + acts.shape[1:], np.float32)
            out[i] = acts.astype(np.float64).mean(0)
        return out

    def attention_pattern(self, hook: str, i: int) -> np.ndarray:
        """Attention pattern of text ``i`` at a ``blocks.{l}.attn.hook_pattern`` hook, float32
        ``[heads, query, key]`` (rows sum to 1 over the causal keys)."""
        self._check_hook(hook)
        if not is_pattern_hook(hook):
            raise WorkbenchError(f"{hook} is not an attention-pattern hook (blocks.L.attn.hook_pattern).")
        shard, first_text = self._locate(i)
        n_heads = int(self.meta["shapes"][hook][1])
        lengths = self.lengths[first_text:i + 1]
        start = int((lengths[:-1] ** 2).sum()) * n_heads
        n = int(lengths[-1])
        flat = self.shards()[shard][hook][start:start + n * n_heads * n]
        return np.asarray(flat, dtype=np.float32).reshape(n, n_heads, n).transpose(1, 0, 2)

    def position_ids(self) -> np.ndarray:
        """Token position within its text for every stored token ``[total_tokens]``."""
        return np.concatenate([np.arange(n) for n in self.lengths]) if self.n_texts else np.zeros(0, int)

    def text_ids(self) -> np.ndarray:
        """Text index of every stored token ``[total_tokens]``."""
        return np.repeat(np.arange(self.n_texts), self.lengths)
