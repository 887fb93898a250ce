"""What an SAE reads: its target (a sentence embedding or a residual layer) and rows streamed from the store.

docs/methods.md, "SAEs on embeddings and residual streams". Targets:

- ``sentence``: an encoder's pooled, normalised sentence embedding (hook ``sentence_embedding``), one
  row per text;
- ``layer:L``: a decoder's residual stream at layer ``L`` (0 = embeddings, ``L`` = after block ``L-1``:
  :func:`workbench.models.resid_hook`), one row per token (position 0 of every text left out with
  ``skip_first``, where massive activations sit);
- ``auto``: ``sentence`` for an encoder, the middle layer ``layer:{n_layers // 2}`` for a decoder.

Rows are read through the activation store batch by batch (:class:`StoreRows`), so that memory is one
batch whatever the corpus: the store's shards are memory-mapped, and the pages a pass has touched are
handed back to the kernel after every batch (:func:`release_pages`; they stay in the page cache).
"""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from workbench.errors import WorkbenchError
from workbench.models import SENTENCE_EMBEDDING, resid_hook

TARGET_FORMAT = "'auto', 'sentence' or 'layer:L' (L a residual layer, 0 = embeddings)"
_LAYER = re.compile(r"layer:?(-?\d+)")


def check_target(value) -> str:
    """The target as written, normalised (a ``Param`` check: ValueError when it is not a target)."""
    text = str(value).strip().lower().replace(" ", "")
    if text in ("auto", "sentence"):
        return text
    match = _LAYER.fullmatch(text)
    if match is None:
        raise ValueError(f"not a target: {value!r}")
    return f"layer:{int(match[1])}"


@dataclass(frozen=True)
class Target:
    """A resolved target: its name (``sentence`` / ``layer:L``), the store hook, the layer (None: sentence)."""

    name: str
    hook: str
    layer: int | None

    @property
    def token_level(self) -> bool:
        return self.layer is not None


def resolve_target(model, value) -> Target:
    """The :class:`Target` of ``value`` for ``model``, with one clear error when the model has no such target."""
    name = check_target(value)
    if name == "auto":
        name = "sentence" if model.kind == "encoder" else f"layer:{model.n_layers // 2}"
    if name == "sentence":
        if model.kind != "encoder":
            raise WorkbenchError(f"target=sentence needs a sentence embedder (an encoder such as minilm-l6); "
                                 f"{model.name} is a {model.kind}: give target=layer:L with L in 0..{model.n_layers}.")
        return Target("sentence", SENTENCE_EMBEDDING, None)
    layer = int(name.split(":")[1])
    if model.kind != "decoder":
        raise WorkbenchError(f"target={name} reads a decoder's residual stream; {model.name} is an {model.kind}: "
                             "use target=sentence.")
    if not 0 <= layer <= model.n_layers:
        raise WorkbenchError(f"{model.name} has residual layers 0..{model.n_layers}; target=layer:{layer} does not "
                             f"exist (the middle one is layer:{model.n_layers // 2}).")
    return Target(name, resid_hook(layer), layer)


def split_texts(n_texts: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) text indices, sorted: a seeded random split by text (no text on both sides)."""
    n_held = int(round(heldout_fraction * n_texts)) if n_texts > 1 else 0
    if heldout_fraction > 0 and n_texts > 1:
        n_held = min(max(n_held, 1), n_texts - 1)
    perm = np.random.default_rng([int(seed), 7]).permutation(n_texts)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def row_index(entry, target: Target, texts: np.ndarray, skip_first: bool) -> np.ndarray:
    """Store row ids int64 ``[n_rows]`` of ``texts``: the texts themselves for a sentence target, else
    every token of them (global index ``offsets[i] + position``; position 0 left out with ``skip_first``)."""
    texts = np.asarray(texts, dtype=np.int64)
    if not target.token_level:
        return np.sort(texts)
    keep = np.isin(entry.text_ids(), texts)
    if skip_first:
        keep &= entry.position_ids() != 0
    return np.flatnonzero(keep).astype(np.int64)


def release_pages(entry, hook: str) -> None:
    """Hand the memory-mapped pages of ``hook``'s shards back to the kernel (they stay in the page cache
    and are read again on the next access): a streamed pass then holds one batch, not the corpus."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return
    for arrays in entry.shards():
        handle = getattr(arrays.get(hook), "_mmap", None)
        if handle is not None:
            handle.madvise(advice)


class ArrayRows:
    """Rows of an in-memory matrix ``X [n, d]`` (synthetic data, user vectors)."""

    def __init__(self, X: np.ndarray):
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        if self.X.ndim != 2 or len(self.X) < 1:
            raise WorkbenchError(f"SAE training rows must be a non-empty [n, d] matrix; got shape {self.X.shape}.")
        self.n_rows, self.d = self.X.shape

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.X[np.asarray(idx, dtype=np.int64)]

    def release(self) -> None:
        pass

    def chunks(self, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(positions, rows)`` of consecutive batches of at most ``batch`` rows."""
        for start in range(0, self.n_rows, batch):
            pos = np.arange(start, min(self.n_rows, start + batch))
            yield pos, self.rows(pos)


class StoreRows(ArrayRows):
    """One hook's rows of a cache entry, selected by ``index`` (store row ids from :func:`row_index`)."""

    def __init__(self, entry, hook: str, index: np.ndarray):
        self.entry, self.hook = entry, hook
        self.index = np.asarray(index, dtype=np.int64)
        if len(self.index) == 0:
            raise WorkbenchError("no rows to read: the texts selected are empty (or of one token with skip_first).")
        self.n_rows, self.d = len(self.index), int(entry.meta["shapes"][hook][-1])

    def rows(self, idx: np.ndarray) -> np.ndarray:
        ids = self.index[np.asarray(idx, dtype=np.int64)]
        if self.hook == SENTENCE_EMBEDDING:
            return np.stack([np.asarray(self.entry.text_activations(self.hook, int(i)), np.float32) for i in ids])
        return self.entry.rows(self.hook, ids)

    def release(self) -> None:
        release_pages(self.entry, self.hook)

    def chunks(self, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for item in super().chunks(batch):
            yield item
            self.release()


def text_and_position(entry, target: Target, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text index, position) of store row ids (sentence rows: position 0)."""
    ids = np.asarray(ids, dtype=np.int64)
    if not target.token_level:
        return ids, np.zeros_like(ids)
    text = np.searchsorted(entry.offsets, ids, side="right") - 1
    return text, ids - entry.offsets[text]


def extract(model, dataset, target: Target, max_length: int | None, *, ctx=None, store=None, progress=None):
    """The cache entry of ``target``'s hook over ``dataset`` (extracted once, then read from the store)."""
    if ctx is not None:
        return ctx.activations([target.hook], max_length=max_length, dataset=dataset)
    from workbench.store import ActivationStore

    return (store or ActivationStore()).get_or_extract(model, dataset, [target.hook], max_length=max_length,
                                                      progress=progress)
