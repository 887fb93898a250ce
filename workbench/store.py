"""Activation store: hooked extraction streamed to a disk cache, read back memory-mapped.

An entry holds named activations for every token of every text of one dataset, keyed by
``sha256(model fingerprint, dataset content hash, hook names, max_length, prepend_bos)``.

Layout of ``<root>/<key>/``::

    meta.json                 key parts, hooks and shapes, lengths, shard list with checksums
    tokens.json               token ids, token strings and character offsets per text
    shard_00000.safetensors   {hook: float32 [tokens_in_shard, ...]} (sentence hooks: [texts_in_shard, D])
    ...

Token activations of a text are stored contiguously without padding; ``offsets`` locates them.

Guarantees:

- Writes are atomic: an entry is built in a temporary folder and renamed into place, so a reader
  sees no entry or a complete one (a writer killed midway leaves only a temporary folder, which is
  removed by the next writer of the same key).
- Two processes asking for the same key serialise on a file lock; the second finds the entry built.
- Each shard has an xxh3 checksum; an entry is verified (sizes and checksums) the first time a
  process opens it, and a corrupt or truncated entry is deleted and rebuilt.
- The cache has a size cap with least-recently-used eviction (``WORKBENCH_CACHE_MAX_GB``, default 20).
- Memory during extraction is bounded by one batch plus one shard, never the whole corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import xxhash
from filelock import FileLock

from .data import TextDataset
from .errors import WorkbenchError
from .models import SENTENCE_EMBEDDING, LoadedModel
from .paths import atomic_write, cache_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: truncation keeps the tokenizer's special tokens
DEFAULT_SHARD_BYTES = 256 * 2**20
DEFAULT_MAX_GB = 20.0

Progress = Callable[[int, int, str], None]


def _xxh3_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def memmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file as a read-only numpy array (no copy, no read)."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64, "F64": np.float64}
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    base = 8 + header_len
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == begin:
            arrays[name] = np.zeros(shape, dtypes[info["dtype"]])
            continue
        arrays[name] = np.memmap(path, dtype=dtypes[info["dtype"]], mode="r", offset=base + begin, shape=shape)
    return arrays


@dataclass
class CacheEntry:
    """A complete cache entry, read memory-mapped. Token activations are float32 ``[len_i, ...]``."""

    path: Path
    meta: dict

    def __post_init__(self):
        self._tokens: dict | None = None
        self._shards: list[dict[str, np.ndarray]] | None = None
        self.lengths = np.asarray(self.meta["lengths"], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.text_starts = np.asarray([0] + [s["text_end"] for s in self.meta["shards"]], dtype=np.int64)

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

    def _token_meta(self) -> dict:
        if self._tokens is None:
            self._tokens = json.loads((self.path / "tokens.json").read_text())
        return self._tokens

    def token_ids(self, i: int) -> np.ndarray:
        return np.asarray(self._token_meta()["ids"][i], dtype=np.int64)

    def token_strings(self, i: int) -> list[str]:
        return self._token_meta()["strings"][i]

    def char_offsets(self, i: int) -> list[list[int]]:
        return self._token_meta()["offsets"][i]

    # ---- arrays ----------------------------------------------------------------------------
    def shards(self) -> list[dict[str, np.ndarray]]:
        if self._shards is None:
            self._shards = [memmap_safetensors(self.path / s["file"]) for s in self.meta["shards"]]
        return self._shards

    def _check_hook(self, hook: str) -> None:
        if hook not in self.meta["hooks"]:
            raise WorkbenchError(f"This cache entry has no hook {hook!r}; it has {self.hooks[:6]}...")

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.n_texts:
            raise WorkbenchError(f"text index {i} out of range (0..{self.n_texts - 1})")
        shard = int(np.searchsorted(self.text_starts, i, side="right") - 1)
        return shard, int(self.text_starts[shard])

    def text_activations(self, hook: str, i: int) -> np.ndarray:
        """Activations of text ``i``: ``[len_i, ...]`` (sentence hooks: ``[D]``), memory-mapped."""
        self._check_hook(hook)
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
        """Yield ``(text range, [tokens_in_shard, ...])`` per shard: the fastest way to stream."""
        self._check_hook(hook)
        for s, arrays in zip(self.meta["shards"], self.shards()):
            yield slice(s["text_start"], s["text_end"]), arrays[hook]

    def tokens(self, hook: str) -> np.ndarray:
        """All token activations concatenated ``[total_tokens, ...]`` (copies into RAM)."""
        self._check_hook(hook)
        parts = [arr for _, arr in self.iter_shards(hook)]
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])

    def mean_pooled(self, hook: str, skip_first: bool = False) -> np.ndarray:
        """Per-text mean over tokens ``[n_texts, ...]`` (float32; accumulated in float64)."""
        self._check_hook(hook)
        if hook == SENTENCE_EMBEDDING:
            return self.tokens(hook)
        out = None
        for i, acts in self.iter_texts(hook):
            if skip_first and len(acts) > 1:
                acts = acts[1:]
            if out is None:
                out = np.zeros((self.n_texts,) + acts.shape[1:], np.float32)
            out[i] = acts.astype(np.float64).mean(0)
        return out

    def position_ids(self) -> np.ndarray:
        """Token position within its text for every stored token ``[total_tokens]``."""
        return np.concatenate([np.arange(n) for n in self.lengths]) if self.n_texts else np.zeros(0, int)

    def text_ids(self) -> np.ndarray:
        """Text index of every stored token ``[total_tokens]``."""
        return np.repeat(np.arange(self.n_texts), self.lengths)


class ActivationStore:
    """The disk cache of activations. ``get_or_extract`` is the one way analyses get activations."""

    def __init__(self, root: Path | None = None, max_bytes: int | None = None,
                 shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.root = Path(root) if root is not None else cache_dir() / "activations"
        self.root.mkdir(parents=True, exist_ok=True)
        if max_bytes is None:
            max_bytes = int(float(os.environ.get("WORKBENCH_CACHE_MAX_GB", DEFAULT_MAX_GB)) * 2**30)
        self.max_bytes = max_bytes
        self.shard_bytes = shard_bytes
        self._verified: set[tuple[str, float]] = set()

    # ---- keys ------------------------------------------------------------------------------
    @staticmethod
    def key_for(model: LoadedModel, dataset: TextDataset, hooks: list[str], max_length: int,
                prepend_bos: bool | None) -> str:
        parts = {"format": FORMAT_VERSION, "model": model.fingerprint, "data": dataset.content_hash,
                 "hooks": sorted(hooks), "max_length": int(max_length), "prepend_bos": prepend_bos}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    # ---- public API -------------------------------------------------------------------------
    def get_or_extract(self, model: LoadedModel, dataset: TextDataset, hooks: list[str] | None = None, *,
                       max_length: int | None = None, prepend_bos: bool | None = None, batch_size: int = 8,
                       progress: Progress | None = None) -> CacheEntry:
        """Return the cached entry for these activations, extracting (once) if it is missing or corrupt.

        ``hooks`` defaults to the residual stream at every layer. ``max_length`` defaults to the
        model's context; longer texts are truncated with a warning. ``prepend_bos``: None keeps the
        tokenizer's own special tokens, True makes sure each text starts with BOS, False removes it.
        """
        hooks = list(dict.fromkeys(hooks or model.resid_hooks()))
        model.check_hooks(hooks)
        if max_length is None:
            max_length = model.max_length
        if max_length < 1:
            raise WorkbenchError(f"max_length must be >= 1, got {max_length}")
        max_length = min(int(max_length), model.max_length)
        if len(dataset) == 0:
            raise WorkbenchError("The dataset is empty: nothing to extract.")
        key = self.key_for(model, dataset, hooks, max_length, prepend_bos)
        entry = self.open(key)
        if entry is not None:
            return entry
        with FileLock(str(self.root / f"{key}.lock")):
            entry = self.open(key)  # another process may have built it while we waited
            if entry is not None:
                return entry
            self._remove_stale_tmp(key)
            self._extract(key, model, dataset, hooks, max_length, prepend_bos, batch_size, progress)
        self.evict(keep={key})
        entry = self.open(key)
        assert entry is not None
        return entry

    def open(self, key: str, verify: bool = True) -> CacheEntry | None:
        """The entry for ``key`` if it exists and is intact; a corrupt entry is deleted (None)."""
        path = self.root / key
        meta_path = path / "meta.json"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            problem = self._check(path, meta, full=verify and (key, meta_path.stat().st_mtime) not in self._verified)
        except (OSError, ValueError, KeyError) as exc:
            problem = f"unreadable metadata ({exc})"
        if problem:
            warnings.warn(f"Cache entry {key} is corrupt ({problem}); deleting it so it is rebuilt.")
            self._delete(path)
            return None
        self._verified.add((key, meta_path.stat().st_mtime))
        os.utime(path / "last_used", None) if (path / "last_used").exists() else (path / "last_used").touch()
        return CacheEntry(path, meta)

    def verify(self, key: str) -> str | None:
        """Full check of one entry; returns a problem description or None if intact (no deletion)."""
        path = self.root / key
        try:
            meta = json.loads((path / "meta.json").read_text())
            return self._check(path, meta, full=True)
        except (OSError, ValueError, KeyError) as exc:
            return f"unreadable metadata ({exc})"

    def entries(self) -> list[dict]:
        """One summary row per complete entry (newest use first)."""
        rows = []
        for meta_path in self.root.glob("*/meta.json"):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            path = meta_path.parent
            used = (path / "last_used").stat().st_mtime if (path / "last_used").exists() else meta_path.stat().st_mtime
            rows.append({"key": meta["key"], "model": meta["model_name"], "fingerprint": meta["model_fingerprint"],
                         "dataset": meta["dataset_name"], "n_texts": meta["n_texts"], "n_tokens": meta["n_tokens"],
                         "hooks": len(meta["hooks"]), "max_length": meta["max_length"],
                         "bytes": _folder_bytes(path), "created": meta["created"], "last_used": used})
        return sorted(rows, key=lambda r: -r["last_used"])

    def total_bytes(self) -> int:
        return sum(r["bytes"] for r in self.entries())

    def remove(self, key: str) -> bool:
        matches = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(key)]
        if len(matches) > 1:
            raise WorkbenchError(f"Key prefix {key!r} matches {len(matches)} entries; give more characters.")
        if not matches:
            return False
        self._delete(matches[0])
        return True

    def clear(self) -> int:
        n = 0
        for path in list(self.root.iterdir()):
            if path.is_dir():
                self._delete(path)
                n += 1
            elif path.suffix == ".lock":
                path.unlink(missing_ok=True)
        return n

    def evict(self, keep: set[str] = frozenset()) -> list[str]:
        """Delete least-recently-used entries until the cache is under its size cap."""
        rows = self.entries()
        total = sum(r["bytes"] for r in rows)
        evicted = []
        for row in sorted(rows, key=lambda r: r["last_used"]):
            if total <= self.max_bytes:
                break
            if row["key"] in keep:
                continue
            self._delete(self.root / row["key"])
            total -= row["bytes"]
            evicted.append(row["key"])
        if evicted:
            log.info("evicted %d cache entries (LRU) to stay under %.1f GB", len(evicted), self.max_bytes / 2**30)
        return evicted

    # ---- internals --------------------------------------------------------------------------
    def _check(self, path: Path, meta: dict, full: bool) -> str | None:
        if meta.get("format") != FORMAT_VERSION:
            return f"format {meta.get('format')} != {FORMAT_VERSION}"
        if not (path / "tokens.json").exists():
            return "tokens.json missing"
        for shard in meta["shards"]:
            file = path / shard["file"]
            if not file.exists():
                return f"{shard['file']} missing"
            if file.stat().st_size != shard["bytes"]:
                return f"{shard['file']} has {file.stat().st_size} bytes, expected {shard['bytes']} (truncated?)"
            if full and _xxh3_file(file) != shard["xxh3"]:
                return f"{shard['file']} checksum mismatch"
        return None

    def _delete(self, path: Path) -> None:
        # rename first so no reader ever sees a half-deleted entry
        doomed = path.with_name(f".deleting-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def _remove_stale_tmp(self, key: str) -> None:
        # called under the key's lock: any temporary folder of this key belongs to a dead writer
        for tmp in self.root.glob(f".tmp-{key}-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def _extract(self, key, model: LoadedModel, dataset: TextDataset, hooks, max_length, prepend_bos,
                 batch_size, progress) -> None:
        t0 = time.time()
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            tokenized, n_truncated = tokenize(model, dataset.texts, max_length, prepend_bos)
            if n_truncated:
                warnings.warn(f"{n_truncated} of {len(dataset)} texts were longer than {max_length} tokens "
                              f"and were truncated (raise max_length, up to the model's {model.max_length}).")
            lengths = [len(t["ids"]) for t in tokenized]
            if min(lengths) == 0:
                empty = lengths.index(0)
                raise WorkbenchError(f"Text {empty} tokenizes to no tokens; remove empty texts.")
            shards = self._write_shards(tmp, model, tokenized, hooks, batch_size, progress)
            token_meta = {"ids": [t["ids"] for t in tokenized], "strings": [t["strings"] for t in tokenized],
                          "offsets": [t["offsets"] for t in tokenized]}
            (tmp / "tokens.json").write_text(json.dumps(token_meta))
            shapes = {}
            first = memmap_safetensors(tmp / shards[0]["file"])
            for hook in hooks:
                shapes[hook] = list(first[hook].shape[1:])
            meta = {
                "format": FORMAT_VERSION, "key": key, "model_name": model.name,
                "model_fingerprint": model.fingerprint, "dataset_name": dataset.name,
                "dataset_hash": dataset.content_hash, "hooks": hooks, "shapes": shapes,
                "max_length": max_length, "prepend_bos": prepend_bos, "n_texts": len(tokenized),
                "n_tokens": int(sum(lengths)), "lengths": lengths, "n_truncated": n_truncated,
                "shards": shards, "created": time.time(), "seconds": round(time.time() - t0, 2),
                "dtype": "float32",
            }
            with atomic_write(tmp / "meta.json") as handle:
                json.dump(meta, handle)
            (tmp / "last_used").touch()
            os.replace(tmp, self.root / key)  # the commit point
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_shards(self, tmp: Path, model: LoadedModel, tokenized: list[dict], hooks: list[str],
                      batch_size: int, progress: Progress | None) -> list[dict]:
        """Forward batches and write shards; a writer thread overlaps disk I/O with the next forwards.

        Memory is bounded by two shards (one filling, one being written) plus one batch.
        """
        pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        shards: list[dict] = []
        writer = _ShardWriter(tmp)
        buffer: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
        buffered_bytes = 0
        shard_text_start = 0
        n = len(tokenized)
        t0 = time.time()

        def flush(text_end: int) -> None:
            nonlocal buffer, buffered_bytes, shard_text_start
            if text_end == shard_text_start:
                return
            name = f"shard_{len(shards):05d}.safetensors"
            shards.append({"file": name, "text_start": shard_text_start, "text_end": text_end})
            writer.submit(name, buffer)
            buffer = {h: [] for h in hooks}
            buffered_bytes = 0
            shard_text_start = text_end

        try:
            for start in range(0, n, batch_size):
                batch = tokenized[start:start + batch_size]
                width = max(len(t["ids"]) for t in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, t in enumerate(batch):
                    ids[row, :len(t["ids"])] = torch.tensor(t["ids"])
                    mask[row, :len(t["ids"])] = 1
                acts = model.run_hooks(ids, mask, hooks)
                for hook in hooks:
                    value = acts[hook]
                    if hook == SENTENCE_EMBEDDING:
                        parts = [value.numpy()]
                    else:
                        parts = [value[row, :len(t["ids"])].numpy() for row, t in enumerate(batch)]
                    for part in parts:
                        buffer[hook].append(part.astype(np.float32, copy=False))
                        buffered_bytes += part.nbytes
                del acts
                done = min(start + batch_size, n)
                if buffered_bytes >= self.shard_bytes:
                    flush(done)
                if progress is not None:
                    elapsed = time.time() - t0
                    eta = elapsed / done * (n - done)
                    progress(done, n, f"extracted {done}/{n} texts, {eta:.0f} s left")
            flush(n)
        finally:
            written = writer.close()
        for shard in shards:
            shard.update(written[shard["file"]])
        return shards


class _ShardWriter:
    """Writes shards on one background thread (bounded queue of one), recording size and checksum."""

    def __init__(self, folder: Path):
        import queue
        import threading

        self.folder = folder
        self.queue: "queue.Queue" = queue.Queue(maxsize=1)
        self.results: dict[str, dict] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            name, buffer = item
            try:
                self.results[name] = write_safetensors_parts(self.folder / name, buffer)
            except BaseException as exc:  # reported to the extracting thread in close()
                self.error = exc

    def submit(self, name: str, buffer: dict) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((name, buffer))

    def close(self) -> dict[str, dict]:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.results


def write_safetensors_parts(path: Path, tensors: dict[str, list[np.ndarray]]) -> dict:
    """Write a safetensors file whose tensors are given as lists of row blocks, streamed.

    Each tensor is the concatenation of its parts along axis 0 (all float32, same trailing
    shape). Parts are written straight from their buffers — no concatenated copy, no serialised
    copy — and the xxh3 checksum is computed on the bytes as they are written, so the file is
    not read back. The layout is standard safetensors (8-byte header length, JSON header padded
    to 8 bytes, raw little-endian data), readable by ``safetensors.safe_open``.
    """
    header, offset = {}, 0
    for name, parts in tensors.items():
        rows = sum(p.shape[0] for p in parts)
        shape = [rows, *parts[0].shape[1:]]
        nbytes = rows * int(np.prod(parts[0].shape[1:], dtype=np.int64)) * 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    digest = xxhash.xxh3_64()
    with open(path, "wb") as handle:
        for block in (struct.pack("<Q", len(raw)), raw):
            handle.write(block)
            digest.update(block)
        for parts in tensors.values():
            for part in parts:
                view = memoryview(np.ascontiguousarray(part, dtype=np.float32)).cast("B")
                handle.write(view)
                digest.update(view)
    return {"bytes": 8 + len(raw) + offset, "xxh3": digest.hexdigest()}


def tokenize(model: LoadedModel, texts: list[str], max_length: int,
             prepend_bos: bool | None) -> tuple[list[dict], int]:
    """Token ids, token strings and character offsets per text, with BOS handling and truncation.

    Truncation is the tokenizer's own (``truncation=True``): it cuts content tokens and keeps the
    special tokens it adds, e.g. BERT's closing ``[SEP]`` and T5's ``</s>``, exactly as plain
    transformers and sentence-transformers do. ``prepend_bos`` True/False adds or strips a leading
    BOS after truncation, so the budget given to the tokenizer is adjusted by that one token and
    every stored text has at most ``max_length`` tokens. Returns ``(rows, n_truncated)``.
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
    enc = tok(texts, add_special_tokens=True, truncation=True, max_length=budget,
              return_offsets_mapping=tok.is_fast)
    if tok.is_fast:
        truncated = [bool(e.overflowing) for e in enc.encodings]
    else:  # slow tokenizers do not report overflow: compare with the untruncated length
        full = tok(texts, add_special_tokens=True, truncation=False)["input_ids"]
        truncated = [len(f) > budget for f in full]
    out = []
    for i in range(len(texts)):
        ids = list(enc["input_ids"][i])
        offsets = [list(o) for o in enc["offset_mapping"][i]] if tok.is_fast else [[0, 0]] * len(ids)
        if prepend_bos is True and (not ids or ids[0] != bos):
            ids, offsets = [bos] + ids, [[0, 0]] + offsets
        elif prepend_bos is False and ids and bos is not None and ids[0] == bos:
            ids, offsets = ids[1:], offsets[1:]
        out.append({"ids": ids, "offsets": offsets})
    flat = [i for t in out for i in t["ids"]]
    strings = tok.batch_decode([[i] for i in flat]) if flat else []
    pos = 0
    for t in out:
        t["strings"] = strings[pos:pos + len(t["ids"])]
        pos += len(t["ids"])
    return out, int(sum(truncated))


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
