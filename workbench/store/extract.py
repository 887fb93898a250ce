"""Extraction: token rows batch by batch, forwards sized in tokens (halved on out-of-memory), shards
written on a background thread, token metadata spooled to disk."""

from __future__ import annotations

import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import WorkbenchError
from ..models import SENTENCE_EMBEDDING
from .files import Progress, _ShardWriter, is_pattern_hook, write_safetensors_files

if TYPE_CHECKING:
    import torch

    from ..models import LoadedModel
    from .cache import ActivationStore


class _Extraction:
    """One extraction: batches sized in tokens, forwards (halving the batch on out-of-memory), and
    shards written on a background thread so disk I/O overlaps the next forwards.

    Memory is bounded by two shards (one filling, one being written) plus one batch.
    """

    def __init__(self, store: "ActivationStore", tmp: Path, model: LoadedModel, hooks: list[str],
                 spool: "_TokenSpool", progress: Progress | None):
        self.store, self.tmp, self.model, self.hooks, self.spool, self.progress = store, tmp, model, hooks, spool, progress
        self.shards: list[dict] = []
        self.shapes: dict[str, list] = {}
        self.writer = _ShardWriter(tmp)
        self.buffer: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
        self.buffered_bytes = 0
        self.shard_text_start = 0
        self.max_batch_tokens = store.batch_tokens
        self.halvings = 0
        self.pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0

    def write(self, dataset, max_length: int, prepend_bos, batch_size: int) -> int:
        """Every batch of ``dataset``; returns the number of truncated texts."""
        n, n_truncated, done, t0 = len(dataset), 0, 0, time.time()
        try:
            for start in range(0, n, batch_size):
                rows, truncated = _rows(self.model, dataset, start, start + batch_size, max_length, prepend_bos)
                n_truncated += truncated
                self.spool.add(rows)
                self._forward(rows)
                done = start + len(rows)
                if self.buffered_bytes >= self.store.shard_bytes:
                    self._flush(done)
                if self.progress is not None:
                    eta = (time.time() - t0) / done * (n - done)
                    self.progress(done, n, f"extracted {done}/{n} texts, {eta:.0f} s left")
            self._flush(n)
        finally:
            written = self.writer.close()
        for shard in self.shards:
            shard.update(written[shard["file"]])
        return n_truncated

    def batch_report(self) -> dict:
        return {"max_batch_tokens": self.max_batch_tokens, "halved_on_out_of_memory": self.halvings}

    def _forward(self, rows: list[dict]) -> None:
        """Forward ``rows`` in sub-batches of at most ``max_batch_tokens`` padded tokens; on
        out-of-memory the budget is halved (once said, recorded in the entry) and the sub-batch retried."""
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and (j + 1 - i) * max(len(r["ids"]) for r in rows[i:j + 1]) <= self.max_batch_tokens:
                j += 1
            import torch  # loaded with the model; never on a run served from the store

            try:
                acts = self.model.run_hooks(*self._padded(rows[i:j]), self.hooks)
            except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
                if j - i == 1 or self.max_batch_tokens <= 1:
                    raise WorkbenchError(f"Out of memory on a single text of {len(rows[i]['ids'])} tokens: lower "
                                         "max_length or use a device with more memory.") from exc
                self.max_batch_tokens = max(1, self.max_batch_tokens // 2)
                if self.halvings == 0:
                    warnings.warn(f"Out of memory: batches are halved until they fit (now {self.max_batch_tokens} "
                                  "tokens); the final size is recorded in the cache entry.")
                self.halvings += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            self._append(acts, rows[i:j])
            i = j

    def _padded(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        width = max(len(r["ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, :len(r["ids"])] = torch.tensor(r["ids"])
            mask[k, :len(r["ids"])] = 1
        return ids, mask

    def _append(self, acts: dict, rows: list[dict]) -> None:
        dtype = np.float16 if self.store.dtype == "float16" else np.float32
        for hook in self.hooks:
            value = acts[hook]
            if hook == SENTENCE_EMBEDDING:
                parts = [value.numpy()]
                self.shapes.setdefault(hook, list(value.shape[1:]))
            elif is_pattern_hook(hook):  # [B, H, T, T] -> per text [len, H, len], flattened
                parts = [value[k, :, :len(r["ids"]), :len(r["ids"])].permute(1, 0, 2).reshape(-1).numpy()
                         for k, r in enumerate(rows)]
                self.shapes.setdefault(hook, ["pattern", int(value.shape[1])])
            else:
                parts = [value[k, :len(r["ids"])].numpy() for k, r in enumerate(rows)]
                self.shapes.setdefault(hook, list(value.shape[2:]))
            for part in parts:
                # a compact copy: a view would keep the whole padded batch alive until the shard is written
                with np.errstate(over="ignore"):  # an overflow is caught just below, with its fix
                    source, part = part, np.array(part, dtype=dtype, copy=True)
                if dtype is np.float16 and not np.isfinite(part).all() and np.isfinite(source).all():
                    raise WorkbenchError(
                        f"{hook} reaches {float(np.abs(source).max()):,.0f}, beyond float16's range (65,504): "
                        "store these activations in float32 (--store-dtype float32 in the CLI, dtype='float32' in the API).")
                self.buffer[hook].append(part)
                self.buffered_bytes += part.nbytes
        del acts

    def _flush(self, text_end: int) -> None:
        if text_end == self.shard_text_start:
            return
        name = f"shard_{len(self.shards):05d}.safetensors"
        self.shards.append({"file": name, "text_start": self.shard_text_start, "text_end": text_end})
        self.writer.submit(name, self.buffer)
        self.buffer = {h: [] for h in self.hooks}
        self.buffered_bytes = 0
        self.shard_text_start = text_end


def _rows(model: LoadedModel, dataset, start: int, stop: int, max_length: int, prepend_bos) -> tuple[list[dict], int]:
    """Token rows ``{"ids", "offsets", "strings"}`` of texts ``start:stop`` and how many were truncated."""
    if dataset.texts is None:  # a token dataset: the ids as given, cut at max_length
        seqs = dataset.ids[start:stop]
        rows = [{"ids": seq[:max_length], "offsets": [[0, 0]] * min(len(seq), max_length),
                 "truncated": len(seq) > max_length} for seq in seqs]
        _decode_strings(model.tokenizer, rows)
        return rows, sum(len(seq) > max_length for seq in seqs)
    rows, truncated = tokenize(model, dataset.texts[start:stop], max_length, prepend_bos)
    empty = next((j for j, t in enumerate(rows) if not t["ids"]), None)
    if empty is not None:
        raise WorkbenchError(f"Text {start + empty} tokenizes to no tokens; remove empty texts.")
    return rows, truncated


class _TokenSpool:
    """Token metadata appended batch by batch to raw files, assembled into one safetensors file at
    the end by streaming copies (memory: one batch)."""

    COLUMNS = {"lengths": (np.int64, ()), "ids": (np.int32, ()), "char_offsets": (np.int32, (2,)),
               "string_starts": (np.int64, ()), "string_bytes": (np.uint8, ()), "truncated": (np.uint8, ())}

    def __init__(self, folder: Path):
        self.folder = folder
        self.handles = {name: open(folder / f".spool-{name}", "wb") for name in self.COLUMNS}
        self.rows = {name: 0 for name in self.COLUMNS}
        self.n_tokens = 0
        self.n_bytes = 0
        self._write("string_starts", np.zeros(1, np.int64))

    def _write(self, name: str, array: np.ndarray) -> None:
        dtype, _ = self.COLUMNS[name]
        array = np.ascontiguousarray(array, dtype=dtype)
        self.handles[name].write(memoryview(array).cast("B"))
        self.rows[name] += array.shape[0]

    def add(self, batch: list[dict]) -> None:
        lengths = np.array([len(t["ids"]) for t in batch], np.int64)
        encoded = [s.encode("utf-8") for t in batch for s in t["strings"]]
        sizes = np.fromiter((len(b) for b in encoded), np.int64, len(encoded))
        self._write("lengths", lengths)
        self._write("ids", np.fromiter((i for t in batch for i in t["ids"]), np.int64, int(lengths.sum())))
        self._write("char_offsets", np.array([o for t in batch for o in t["offsets"]], np.int64).reshape(-1, 2))
        self._write("string_starts", self.n_bytes + np.cumsum(sizes))
        self._write("string_bytes", np.frombuffer(b"".join(encoded), np.uint8))
        self._write("truncated", np.array([t["truncated"] for t in batch], np.uint8))  # per text (prefix views)
        self.n_tokens += int(lengths.sum())
        self.n_bytes += int(sizes.sum())

    def finish(self, path: Path) -> dict:
        for handle in self.handles.values():
            handle.close()
        sources = {name: (self.folder / f".spool-{name}", np.dtype(dtype), (self.rows[name], *shape))
                   for name, (dtype, shape) in self.COLUMNS.items()}
        record = write_safetensors_files(path, sources)
        for source, _, _ in sources.values():
            source.unlink()
        return record


@lru_cache(maxsize=16)
def _max_token_chars(tokenizer) -> int:
    """Characters the longest vocabulary entry spans (byte-level markers count one each)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return max((len(p) for p in pieces if isinstance(p, str)), default=16)


def char_budget(tokenizer, max_length: int) -> int:
    """Characters kept of a text before tokenising: twice what ``max_length`` of the tokenizer's
    longest tokens can span, so the cut never reaches the tokens that are kept, while a huge text
    never reaches the tokenizer whole."""
    return int(max_length) * 2 * max(_max_token_chars(tokenizer), 8) + 1024


def tokenize(model: LoadedModel, texts: list[str], max_length: int,
             prepend_bos: bool | None) -> tuple[list[dict], int]:
    """Token ids, token strings and character offsets per text, with BOS handling and truncation.

    Truncation is the tokenizer's own (``truncation=True``): it cuts content tokens and keeps the
    special tokens it adds, e.g. BERT's closing ``[SEP]`` and T5's ``</s>``, exactly as plain
    transformers and sentence-transformers do. ``prepend_bos`` True/False adds or strips a leading
    BOS after truncation, so the budget given to the tokenizer is adjusted by that one token and
    every stored text has at most ``max_length`` tokens. Texts are first cut to
    :func:`char_budget` characters. Returns ``(rows, n_truncated)``.
    """
    tok = model.tokenizer
    bos = tok.bos_token_id
    if prepend_bos and bos is None:
        raise WorkbenchError(f"{model.name}'s tokenizer has no BOS token: use prepend_bos=None or False.")
    probe = tok("a", add_special_tokens=True)["input_ids"]
    adds_bos = bos is not None and bool(probe) and probe[0] == bos
    budget = max_length
    if prepend_bos is True and not adds_bos:
        budget -= 1
    elif prepend_bos is False and adds_bos:
        budget += 1
    if budget < 1 + max(0, len(probe) - len(tok("a", add_special_tokens=False)["input_ids"])):
        raise WorkbenchError(f"max_length {max_length} leaves no room for content after {model.name}'s special tokens.")
    limit = char_budget(tok, max_length)
    cut = [len(t) > limit for t in texts]
    texts = [t[:limit] if c else t for t, c in zip(texts, cut)]
    enc = tok(texts, add_special_tokens=True, truncation=True, max_length=budget,
              return_offsets_mapping=tok.is_fast)
    if tok.is_fast:
        truncated = [bool(e.overflowing) or c for e, c in zip(enc.encodings, cut)]
    else:  # slow tokenizers do not report overflow: compare with the untruncated length
        full = tok(texts, add_special_tokens=True, truncation=False)["input_ids"]
        truncated = [len(f) > budget or c for f, c in zip(full, cut)]
    out = []
    for i in range(len(texts)):
        ids = list(enc["input_ids"][i])
        offsets = [list(o) for o in enc["offset_mapping"][i]] if tok.is_fast else [[0, 0]] * len(ids)
        if prepend_bos is True and (not ids or ids[0] != bos):
            ids, offsets = [bos] + ids, [[0, 0]] + offsets
        elif prepend_bos is False and ids and bos is not None and ids[0] == bos:
            ids, offsets = ids[1:], offsets[1:]
        out.append({"ids": ids, "offsets": offsets, "truncated": truncated[i]})
    _decode_strings(tok, out)
    return out, int(sum(truncated))


def _decode_strings(tokenizer, rows: list[dict]) -> None:
    """Each row's tokens decoded one by one (``strings``), in one batched call."""
    flat = [i for t in rows for i in t["ids"]]
    strings = tokenizer.batch_decode([[i] for i in flat]) if flat else []
    pos = 0
    for t in rows:
        t["strings"] = strings[pos:pos + len(t["ids"])]
        pos += len(t["ids"])
