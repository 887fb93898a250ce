"""Activation store: hooked extraction streamed to a disk cache, read back memory-mapped.

An entry holds named activations for every token of every text of one dataset, keyed by
``sha256(model fingerprint, dataset content hash, hook names, max_length, prepend_bos)``.

Layout of ``<root>/<key>/`` (``key`` is 32 lowercase hex digits; nothing else is ever deleted)::

    meta.json                 key parts, hooks and shapes, counts, every other file with size and xxh3
    meta.xxh3                 the xxh3 of meta.json, so an edit anywhere in the entry is detected
    tokens.safetensors        columnar token metadata, memory-mapped: lengths [N], ids [T],
                              char_offsets [T, 2], string_starts [T + 1], string_bytes [B] (UTF-8)
    shard_00000.safetensors   {hook: float32 [tokens_in_shard, ...]} (sentence hooks: [texts_in_shard, D])
    reader.lock               readers hold a shared lock on it; deleting needs the exclusive one
    last_used                 its mtime orders least-recently-used eviction

Token activations of a text are stored contiguously without padding; ``offsets`` locates them.

Guarantees:

- Writes are atomic: an entry is built in ``.tmp-<key>-<pid>-<nonce>/`` and renamed into place, so
  a reader sees no entry or a complete one. A writer that died leaves its temporary folder: it is
  listed by ``cache ls``, counted against the size cap, and removed by the next write once it is
  older than :data:`STALE_SECONDS` (or by ``cache clean`` / ``cache verify`` at once) provided no
  live writer holds the key's lock.
- Two processes asking for the same key serialise on a file lock; the second finds the entry built.
- Every file of an entry is covered by a checksum (meta.json by meta.xxh3, the others by meta.json).
  The metadata is checked on every open, the data files the first time a process opens the entry;
  a corrupt, truncated or unreadable entry is moved aside and rebuilt.
- An entry open in any process (a :class:`CacheEntry` alive) is never deleted by eviction or
  ``cache rm``: deletion takes the exclusive lock on ``reader.lock`` without waiting, and skips
  entries whose readers hold the shared one.
- The cache has a size cap with least-recently-used eviction (``WORKBENCH_CACHE_MAX_GB``, default 20).
- Memory during extraction is bounded by one batch plus one shard, never the whole corpus: texts
  are tokenised batch by batch and token metadata is spooled to disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import time
import uuid
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import xxhash
from filelock import FileLock, Timeout

from .data import TextDataset
from .errors import WorkbenchError
from .models import SENTENCE_EMBEDDING, LoadedModel
from .paths import atomic_write, cache_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: truncation keeps special tokens; 3: columnar tokens, meta checksum, reader locks
DEFAULT_SHARD_BYTES = 256 * 2**20
DEFAULT_MAX_GB = 20.0
#: a dead writer's temporary folder older than this is removed by the next write
STALE_SECONDS = 3600.0
KEY_RE = re.compile(r"^[0-9a-f]{32}$")
_TMP_RE = re.compile(r"^\.tmp-(?P<key>[0-9a-f]{32})-")
_DELETING_PREFIX = ".deleting-"
READER_LOCK = "reader.lock"
META_SUM = "meta.xxh3"
TOKENS_FILE = "tokens.safetensors"

Progress = Callable[[int, int, str], None]

_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64, "F64": np.float64,
           "U8": np.uint8}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


class CorruptEntry(Exception):
    """Raised internally when an entry fails a check; the message says which."""


def _xxh3_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def memmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file as a read-only numpy array (no copy, no read)."""
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
            arrays[name] = np.zeros(shape, _DTYPES[info["dtype"]])
            continue
        arrays[name] = np.memmap(path, dtype=_DTYPES[info["dtype"]], mode="r", offset=base + begin, shape=shape)
    return arrays


# ---- readers' leases ---------------------------------------------------------------------------
class _Lease:
    """A shared flock on an entry's ``reader.lock``: while held, nobody deletes the entry."""

    def __init__(self, path: Path):
        self.fd: int | None = os.open(path / READER_LOCK, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        # the entry may have been moved aside between our open and our lock: then it is gone
        try:
            same = os.stat(path / READER_LOCK).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            self.release()
            raise FileNotFoundError(path)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.release()


def _exclusive(path: Path) -> int | None:
    """The exclusive flock of an entry without waiting (an fd to close), or None if a reader holds it."""
    try:
        fd = os.open(path / READER_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return -1  # no lock file (a half-written or foreign folder): nobody can be reading it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# ---- metadata ----------------------------------------------------------------------------------
_META_FIELDS = {"format": int, "key": str, "model_name": str, "model_fingerprint": str, "dataset_name": str,
                "dataset_hash": str, "hooks": list, "shapes": dict, "max_length": int, "n_texts": int,
                "n_tokens": int, "n_truncated": int, "shards": list, "files": dict, "created": (int, float)}


def read_meta(path: Path) -> dict:
    """meta.json of an entry folder, checked against meta.xxh3 and for its fields; CorruptEntry otherwise."""
    try:
        raw = (path / "meta.json").read_bytes()
        expected = (path / META_SUM).read_text().strip()
    except FileNotFoundError as exc:
        raise CorruptEntry(f"{Path(exc.filename).name} missing") from exc
    if xxhash.xxh3_64(raw).hexdigest() != expected:
        raise CorruptEntry("meta.json does not match its checksum (edited or damaged)")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise CorruptEntry(f"meta.json is not JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CorruptEntry("meta.json is not an object")
    if meta.get("format") != FORMAT_VERSION:
        raise CorruptEntry(f"format {meta.get('format')!r} is not {FORMAT_VERSION} (made by another version)")
    for name, kind in _META_FIELDS.items():
        if not isinstance(meta.get(name), kind):
            raise CorruptEntry(f"meta.json field {name!r} is missing or not {getattr(kind, '__name__', kind)}")
    if meta["key"] != path.name:
        raise CorruptEntry(f"meta.json names key {meta['key']!r}, the folder is {path.name}")
    return meta


def _write_meta(folder: Path, meta: dict) -> None:
    raw = json.dumps(meta).encode()
    with atomic_write(folder / "meta.json", "wb") as handle:
        handle.write(raw)
    with atomic_write(folder / META_SUM) as handle:
        handle.write(xxhash.xxh3_64(raw).hexdigest())


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
        self.lengths = np.asarray(self._tok["lengths"], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.text_starts = np.asarray([0] + [s["text_end"] for s in self.meta["shards"]], dtype=np.int64)

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
            yield slice(s["text_start"], s["text_end"]), arrays[hook]

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


def _max_bytes_from_env() -> int:
    raw = os.environ.get("WORKBENCH_CACHE_MAX_GB", "")
    if raw.strip() == "":
        return int(DEFAULT_MAX_GB * 2**30)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise WorkbenchError(f"WORKBENCH_CACHE_MAX_GB must be a positive number of gigabytes (e.g. 20); got {raw!r}.")
    return int(value * 2**30)


class ActivationStore:
    """The disk cache of activations. ``get_or_extract`` is the one way analyses get activations."""

    def __init__(self, root: Path | None = None, max_bytes: int | None = None,
                 shard_bytes: int = DEFAULT_SHARD_BYTES, dtype: str = "float32", batch_tokens: int = 8192):
        """``dtype``: how activations are written ("float16" halves the disk; readers always get
        float32). ``batch_tokens``: the most padded tokens one forward pass takes (halved on
        out-of-memory)."""
        if dtype not in ("float32", "float16"):
            raise WorkbenchError(f"the store dtype must be float32 or float16; got {dtype!r}.")
        if int(batch_tokens) < 1:
            raise WorkbenchError(f"batch_tokens must be >= 1; got {batch_tokens}.")
        self.dtype = dtype
        self.batch_tokens = int(batch_tokens)
        self.root = Path(root) if root is not None else cache_dir() / "activations"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkbenchError(f"Cannot create the activation cache at {self.root} ({exc.strerror}): set "
                                 "WORKBENCH_CACHE to a writable folder.") from exc
        self.max_bytes = max_bytes if max_bytes is not None else _max_bytes_from_env()
        self.shard_bytes = shard_bytes
        self._verified: set[tuple[str, int]] = set()

    # ---- keys ------------------------------------------------------------------------------
    def key_for(self, model: LoadedModel, dataset: TextDataset, hooks: list[str], max_length: int,
                prepend_bos: bool | None) -> str:
        parts = {"format": FORMAT_VERSION, "model": model.fingerprint, "device": model.device_kind,
                 "data": dataset.content_hash, "hooks": sorted(hooks), "max_length": int(max_length),
                 "prepend_bos": prepend_bos}
        if self.dtype != "float32":  # float32 keys stay as they were
            parts["store_dtype"] = self.dtype
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def _writable(self) -> None:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise WorkbenchError(f"The activation cache {self.root} is not writable: fix its permissions or set "
                                 "WORKBENCH_CACHE to a writable folder.")

    # ---- public API -------------------------------------------------------------------------
    def get_or_extract(self, model: LoadedModel, dataset: TextDataset, hooks: list[str] | None = None, *,
                       max_length: int | None = None, prepend_bos: bool | None = None, batch_size: int = 8,
                       progress: Progress | None = None) -> CacheEntry:
        """Return the cached entry for these activations, extracting (once) if it is missing or corrupt.

        ``hooks`` defaults to the residual stream at every layer. ``max_length`` defaults to the
        model's context; longer texts are truncated with a warning. ``prepend_bos``: None keeps the
        tokenizer's own special tokens, True makes sure each text starts with BOS, False removes it.
        The returned entry's ``extracted`` says whether this call ran the forward passes.
        """
        hooks = list(dict.fromkeys(hooks or model.resid_hooks()))
        model.check_hooks(hooks)
        if max_length is None:
            max_length = model.max_length
        if int(max_length) < 1:
            raise WorkbenchError(f"max_length must be >= 1, got {max_length}")
        if int(batch_size) < 1:
            raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
        max_length = min(int(max_length), model.max_length)
        if len(dataset) == 0:
            raise WorkbenchError("The dataset is empty: nothing to extract.")
        key = self.key_for(model, dataset, hooks, max_length, prepend_bos)
        entry = self.open(key)
        if entry is not None:
            return entry
        self._writable()
        with FileLock(str(self.root / f"{key}.lock")):
            entry = self.open(key)  # another process may have built it while we waited
            if entry is not None:
                return entry
            # under the key's lock every temporary folder of this key is a dead writer's; others' only
            # once they are stale (their key's lock free)
            for tmp in self.root.glob(f".tmp-{key}-*"):
                shutil.rmtree(tmp, ignore_errors=True)
            self.remove_orphans(older_than=STALE_SECONDS)
            try:
                self._extract(key, model, dataset, hooks, max_length, prepend_bos, int(batch_size), progress)
            except OSError as exc:  # full disk, read-only file system, permissions
                raise WorkbenchError(f"Cannot write the activation cache at {self.root} ({exc.strerror or exc}); "
                                     "free space, fix permissions, or set WORKBENCH_CACHE to another folder. "
                                     "Nothing was kept.") from exc
        self.evict(keep={key})
        entry = self.open(key)
        assert entry is not None
        entry.extracted = True
        return entry

    def open(self, key: str, verify: bool = True) -> CacheEntry | None:
        """The entry for ``key`` if it exists and is intact; a corrupt entry is moved aside (None)."""
        if not KEY_RE.match(key):
            raise WorkbenchError(f"{key!r} is not a cache key (32 lowercase hex digits; see `workbench cache ls`).")
        path = self.root / key
        if not (path / "meta.json").exists():
            return None
        try:
            lease = _Lease(path)
        except FileNotFoundError:
            lease = None
        try:
            if lease is None:
                raise CorruptEntry(f"{READER_LOCK} missing")
            meta = read_meta(path)
            ident = (key, os.stat(path / "meta.json").st_ino)
            self._check_files(path, meta, full=verify and ident not in self._verified)
            entry = CacheEntry(path, meta, lease)
        except FileNotFoundError:  # deleted by someone else between our checks: simply not there
            return None
        except (CorruptEntry, OSError, ValueError, KeyError) as exc:
            if lease is not None:
                lease.release()
            warnings.warn(f"Cache entry {key} is corrupt ({exc}); moving it aside so it is rebuilt.")
            self._delete(path, aside_if_busy=True)
            return None
        self._verified.add(ident)
        (path / "last_used").touch()
        return entry

    def verify(self, key: str) -> str | None:
        """Full check of one entry; returns a problem description or None if intact (no deletion)."""
        if not KEY_RE.match(key):
            return f"{key!r} is not a cache key"
        path = self.root / key
        try:
            meta = read_meta(path)
            self._check_files(path, meta, full=True)
        except (CorruptEntry, OSError, ValueError, KeyError) as exc:
            return str(exc)
        return None

    def listing(self) -> list[dict]:
        """One row per folder of the cache root: entries (``state`` ok / corrupt) and the temporary
        folders of writers (``writing``, or ``orphan`` when no live writer holds the key's lock)."""
        rows = []
        for path in sorted(self.root.iterdir()):
            if not path.is_dir():
                continue
            row = {"key": path.name, "model": "", "fingerprint": "", "dataset": "", "n_texts": 0, "n_tokens": 0,
                   "hooks": 0, "max_length": 0, "bytes": _folder_bytes(path), "created": 0.0,
                   "last_used": path.stat().st_mtime, "state": "ok", "problem": ""}
            if KEY_RE.match(path.name):
                try:
                    meta = read_meta(path)
                    self._check_files(path, meta, full=False)
                    row.update({"model": meta["model_name"], "fingerprint": meta["model_fingerprint"],
                                "dataset": meta["dataset_name"], "n_texts": meta["n_texts"],
                                "n_tokens": meta["n_tokens"], "hooks": len(meta["hooks"]),
                                "max_length": meta["max_length"], "created": meta["created"],
                                "settings": {"prepend_bos": meta.get("prepend_bos"), "hooks": meta["hooks"]}})
                    if (path / "last_used").exists():
                        row["last_used"] = (path / "last_used").stat().st_mtime
                except (CorruptEntry, OSError, ValueError, KeyError) as exc:
                    row.update(state="corrupt", problem=str(exc))
            elif path.name.startswith(_DELETING_PREFIX):
                row.update(state="orphan", problem="left by an interrupted deletion")
            elif (m := _TMP_RE.match(path.name)) is not None:
                live = self._key_locked(m["key"])
                row.update(key=m["key"], state="writing" if live else "orphan",
                           problem="" if live else f"left by a writer that died ({path.name})", folder=path.name)
            else:
                continue  # not ours: never listed, never deleted
            row.setdefault("folder", path.name)
            rows.append(row)
        return sorted(rows, key=lambda r: -r["last_used"])

    def entries(self) -> list[dict]:
        """One summary row per intact entry (newest use first)."""
        return [r for r in self.listing() if r["state"] == "ok"]

    def total_bytes(self) -> int:
        """Bytes of every folder the store owns, orphans included (what the size cap limits)."""
        return sum(r["bytes"] for r in self.listing())

    def remove(self, key: str) -> bool:
        """Delete one entry by key or unique key prefix; refuses while a process is reading it."""
        if not re.fullmatch(r"[0-9a-f]{1,32}", key):
            raise WorkbenchError(f"{key!r} is not a cache key or key prefix (lowercase hex; see `workbench cache ls`).")
        matches = [p for p in self.root.iterdir() if p.is_dir() and KEY_RE.match(p.name) and p.name.startswith(key)]
        if len(matches) > 1:
            raise WorkbenchError(f"Key prefix {key!r} matches {len(matches)} entries; give more characters.")
        if not matches:
            return False
        if not self._delete(matches[0]):
            raise WorkbenchError(f"Cache entry {matches[0].name} is open in a running process; close it (or stop "
                                 "that process) and try again.")
        return True

    def clear(self) -> int:
        """Delete every entry no process is reading, and every orphan; returns how many went."""
        n = 0
        for row in self.listing():
            if row["state"] == "writing":
                continue
            n += self._delete(self.root / row["folder"])
        for lock in self.root.glob("*.lock"):
            if KEY_RE.match(lock.stem):
                lock.unlink(missing_ok=True)
        return n

    def remove_orphans(self, older_than: float = 0.0) -> list[str]:
        """Delete dead writers' temporary folders (and interrupted deletions) older than ``older_than`` s."""
        removed, now = [], time.time()
        for row in self.listing():
            if row["state"] == "orphan" and now - row["last_used"] >= older_than:
                fd = _exclusive(self.root / row["folder"])
                if fd is None:
                    continue  # a corrupt entry moved aside while a process still reads it
                shutil.rmtree(self.root / row["folder"], ignore_errors=True)
                if fd >= 0:
                    os.close(fd)
                removed.append(row["folder"])
        return removed

    def clean(self) -> dict[str, list[str]]:
        """``cache clean``: remove orphans and corrupt entries (those no process is reading)."""
        corrupt = [r["key"] for r in self.listing() if r["state"] == "corrupt"
                   and self._delete(self.root / r["folder"])]
        return {"orphans": self.remove_orphans(), "corrupt": corrupt}

    def evict(self, keep: set[str] = frozenset()) -> list[str]:
        """Delete least-recently-used entries until the cache (orphans included) is under its cap.

        Entries open in any process are skipped, never pulled from under a reader."""
        rows = self.listing()
        total = sum(r["bytes"] for r in rows)
        evicted, busy = [], 0
        for row in sorted(rows, key=lambda r: r["last_used"]):
            if total <= self.max_bytes:
                break
            if row["key"] in keep or row["state"] == "writing":
                continue
            if row["state"] == "orphan" and time.time() - row["last_used"] < STALE_SECONDS:
                continue
            if self._delete(self.root / row["folder"]):
                total -= row["bytes"]
                evicted.append(row["key"])
            else:
                busy += 1
        if evicted:
            log.info("evicted %d cache entries (LRU) to stay under %.1f GB", len(evicted), self.max_bytes / 2**30)
        if total > self.max_bytes and busy:
            log.warning("the activation cache is over its cap: %d entries are open in running processes", busy)
        return evicted

    # ---- internals --------------------------------------------------------------------------
    def _key_locked(self, key: str) -> bool:
        """Whether a live writer holds ``key``'s lock (an attempt that does not wait)."""
        lock = FileLock(str(self.root / f"{key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    @staticmethod
    def _check_files(path: Path, meta: dict, full: bool) -> None:
        files = meta["files"]
        needed = {s["file"] for s in meta["shards"]} | {TOKENS_FILE}
        if not needed <= set(files):
            raise CorruptEntry(f"meta.json does not cover {sorted(needed - set(files))}")
        for name, info in files.items():
            file = path / name
            if not file.exists():
                raise CorruptEntry(f"{name} missing")
            if file.stat().st_size != info["bytes"]:
                raise CorruptEntry(f"{name} has {file.stat().st_size} bytes, expected {info['bytes']} (truncated?)")
            if full and _xxh3_file(file) != info["xxh3"]:
                raise CorruptEntry(f"{name} checksum mismatch")

    def _delete(self, path: Path, aside_if_busy: bool = False) -> bool:
        """Delete a folder of the store unless a reader holds it (False then). ``aside_if_busy``
        renames a busy folder out of the way anyway (a corrupt entry: its readers keep their maps,
        the folder is removed by a later clean once they are gone)."""
        fd = _exclusive(path)
        if fd is None:
            if aside_if_busy:
                self._rename_aside(path)
            return False
        try:
            doomed = self._rename_aside(path)
            if doomed is not None:
                shutil.rmtree(doomed, ignore_errors=True)
        finally:
            if fd >= 0:
                os.close(fd)
        return True

    @staticmethod
    def _rename_aside(path: Path) -> Path | None:
        # rename first so no reader ever opens a half-deleted entry
        doomed = path.with_name(f"{_DELETING_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, doomed)
        except FileNotFoundError:
            return None
        return doomed

    def _extract(self, key, model: LoadedModel, dataset, hooks, max_length, prepend_bos, batch_size,
                 progress) -> None:
        t0 = time.time()
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            spool = _TokenSpool(tmp)
            run = _Extraction(self, tmp, model, hooks, spool, progress)
            n_truncated = run.write(dataset, max_length, prepend_bos, batch_size)
            shards = run.shards
            files = {s["file"]: {"bytes": s["bytes"], "xxh3": s["xxh3"]} for s in shards}
            files[TOKENS_FILE] = spool.finish(tmp / TOKENS_FILE)
            if n_truncated:
                warnings.warn(f"{n_truncated} of {len(dataset)} texts were longer than {max_length} tokens "
                              f"and were truncated (raise max_length, up to the model's {model.max_length}).")
            meta = {
                "format": FORMAT_VERSION, "key": key, "model_name": model.name,
                "model_fingerprint": model.fingerprint, "device": model.device, "dataset_name": dataset.name,
                "dataset_hash": dataset.content_hash, "dataset_kind": "tokens" if dataset.texts is None else "texts",
                "hooks": hooks, "shapes": run.shapes, "max_length": max_length, "prepend_bos": prepend_bos,
                "n_texts": len(dataset), "n_tokens": spool.n_tokens, "n_truncated": n_truncated, "shards": shards,
                "files": files, "created": time.time(), "seconds": round(time.time() - t0, 2), "dtype": self.dtype,
                "batch": run.batch_report(),
            }
            (tmp / READER_LOCK).touch()
            (tmp / "last_used").touch()
            _write_meta(tmp, meta)
            os.replace(tmp, self.root / key)  # the commit point
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def is_pattern_hook(hook: str) -> bool:
    """Attention patterns ``[B, H, T, T]``: stored per text as ``[len, H, len]``, flattened."""
    return hook.endswith("attn.hook_pattern")


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
                part = part.astype(dtype, copy=False)
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
        rows = [{"ids": seq[:max_length], "offsets": [[0, 0]] * min(len(seq), max_length)} for seq in seqs]
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
               "string_starts": (np.int64, ()), "string_bytes": (np.uint8, ())}

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


def _safetensors_header(specs: dict[str, tuple[np.dtype, tuple]]) -> tuple[bytes, int]:
    """The 8-byte length + JSON header (padded to 8 bytes) for tensors given as (dtype, shape)."""
    header, offset = {}, 0
    for name, (dtype, shape) in specs.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_safetensors_files(path: Path, sources: dict[str, tuple[Path, np.dtype, tuple]],
                            chunk: int = 1 << 22) -> dict:
    """A safetensors file whose tensors' raw little-endian bytes are files on disk, copied in
    chunks with the xxh3 computed on the way. Returns ``{"bytes", "xxh3"}``."""
    head, data_bytes = _safetensors_header({n: (d, s) for n, (_, d, s) in sources.items()})
    digest = xxhash.xxh3_64(head)
    with open(path, "wb") as out:
        out.write(head)
        for source, _, _ in sources.values():
            with open(source, "rb") as src:
                while block := src.read(chunk):
                    out.write(block)
                    digest.update(block)
    return {"bytes": len(head) + data_bytes, "xxh3": digest.hexdigest()}


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

    Each tensor is the concatenation of its parts along axis 0 (same dtype and trailing shape).
    Parts are written straight from their buffers — no concatenated copy, no serialised copy — and
    the xxh3 checksum is computed on the bytes as they are written, so the file is not read back.
    The layout is standard safetensors (8-byte header length, JSON header padded to 8 bytes, raw
    little-endian data), readable by ``safetensors.safe_open``. Returns ``{"bytes", "xxh3"}``.
    """
    specs = {name: (np.dtype(parts[0].dtype), (sum(p.shape[0] for p in parts), *parts[0].shape[1:]))
             for name, parts in tensors.items()}
    head, data_bytes = _safetensors_header(specs)
    digest = xxhash.xxh3_64(head)
    with open(path, "wb") as handle:
        handle.write(head)
        for name, parts in tensors.items():
            for part in parts:
                view = memoryview(np.ascontiguousarray(part, dtype=specs[name][0])).cast("B")
                handle.write(view)
                digest.update(view)
    return {"bytes": len(head) + data_bytes, "xxh3": digest.hexdigest()}


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
        out.append({"ids": ids, "offsets": offsets})
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


def _folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total
