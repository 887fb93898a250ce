"""The activation store: keys, get-or-extract under a lock, integrity checks, listing, eviction."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from filelock import FileLock

from ..data import TextDataset
from ..errors import TruncationWarning, WorkbenchError, truncation_message
from ..paths import cache_dir
from .entry import CacheEntry
from .extract import _Extraction, _TokenSpool
from .files import (DEFAULT_MAX_GB, DEFAULT_SHARD_BYTES, FORMAT_VERSION, KEY_RE, READER_LOCK, STALE_SECONDS,
                    TEXT_HASHES_FILE, TOKENS_FILE, CorruptEntry, Progress, _Lease, _write_meta, memmap_safetensors,
                    read_meta, write_safetensors_parts)
from .housekeeping import StoreHousekeeping

if TYPE_CHECKING:
    from ..models import LoadedModel

log = logging.getLogger(__name__)

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


def _device_kind(device: str) -> str:
    return str(device).split(":")[0]


class ActivationStore(StoreHousekeeping):
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

    def covering_entry(self, model: LoadedModel, dataset: TextDataset, hooks: list[str], max_length: int,
                       prepend_bos: bool | None) -> CacheEntry | None:
        """A view of an entry that already holds these activations, or None.

        An entry covers a request when it was made with the same model fingerprint, device kind,
        max_length, BOS handling and store dtype, holds every requested hook, and its first
        ``len(dataset)`` texts are the dataset's texts (compared by per-text xxh3, recorded at
        extraction). The view (:meth:`CacheEntry.view`) shows those texts and hooks only, so a run
        on the first 16 texts reuses a 64-text entry instead of extracting again. The most recently
        used covering entry wins.
        """
        wanted = {"model_fingerprint": model.fingerprint, "max_length": int(max_length), "prepend_bos": prepend_bos,
                  "dtype": self.dtype, "dataset_kind": "tokens" if dataset.texts is None else "texts"}
        n, hashes = len(dataset), None
        for row in self.entries():
            if row["fingerprint"] != model.fingerprint or row["n_texts"] < n or row["max_length"] != wanted["max_length"]:
                continue
            path = self.root / row["key"]
            try:
                meta = read_meta(path)
            except (CorruptEntry, OSError, ValueError):
                continue
            if (any(meta.get(k, "float32" if k == "dtype" else None) != v for k, v in wanted.items())
                    or not set(hooks) <= set(meta["hooks"]) or TEXT_HASHES_FILE not in meta["files"]
                    or meta.get("device_kind", _device_kind(meta.get("device", "cpu"))) != model.device_kind):
                continue
            if hashes is None:
                hashes = dataset.item_hashes()
            try:
                stored = memmap_safetensors(path / TEXT_HASHES_FILE)["xxh3"]
                if not np.array_equal(np.asarray(stored[:n]), hashes):
                    continue
            except (OSError, ValueError, KeyError):
                continue
            parent = self.open(row["key"])
            if parent is not None:
                return parent.view(n, hooks, dataset.name, dataset.content_hash)
        return None

    def _writable(self) -> None:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise WorkbenchError(f"The activation cache {self.root} is not writable: fix its permissions or set "
                                 "WORKBENCH_CACHE to a writable folder.")

    # ---- public API -------------------------------------------------------------------------
    def get_or_extract(self, model: LoadedModel, dataset: TextDataset, hooks: list[str] | None = None, *,
                       max_length: int | None = None, prepend_bos: bool | None = None, batch_size: int = 8,
                       progress: Progress | None = None, engine: str = "local", workers: int | None = None,
                       address: str | None = None) -> CacheEntry:
        """Return the cached entry for these activations, extracting (once) if it is missing or corrupt.

        ``hooks`` defaults to the residual stream at every layer. ``max_length`` defaults to the
        model's context; longer texts are truncated with a warning. ``prepend_bos``: None keeps the
        tokenizer's own special tokens, True makes sure each text starts with BOS, False removes it.
        The returned entry's ``extracted`` says whether this call ran the forward passes.
        ``engine="ray"`` extracts contiguous slices on a Ray cluster (``workers`` tasks, ``address`` of
        the cluster; see :mod:`workbench.store.distributed`): the entry is the same.
        """
        if engine not in ("local", "ray"):
            raise WorkbenchError(f"engine must be local or ray; got {engine!r}.")
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
        entry = self.covering_entry(model, dataset, hooks, max_length, prepend_bos)
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
                self._extract(key, model, dataset, hooks, max_length, prepend_bos, int(batch_size), progress,
                              engine, workers, address)
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

    # ---- internals --------------------------------------------------------------------------
    def _extract_here(self, tmp: Path, model, dataset, hooks, max_length, prepend_bos, batch_size, progress) -> dict:
        spool = _TokenSpool(tmp)
        run = _Extraction(self, tmp, model, hooks, spool, progress)
        n_truncated = run.write(dataset, max_length, prepend_bos, batch_size)
        files = {s["file"]: {"bytes": s["bytes"], "xxh3": s["xxh3"]} for s in run.shards}
        files[TOKENS_FILE] = spool.finish(tmp / TOKENS_FILE)
        return {"shards": run.shards, "files": files, "shapes": run.shapes, "n_truncated": n_truncated,
                "n_tokens": spool.n_tokens, "batch": run.batch_report()}

    def _extract(self, key, model: LoadedModel, dataset, hooks, max_length, prepend_bos, batch_size,
                 progress, engine: str = "local", workers: int | None = None, address: str | None = None) -> None:
        t0 = time.time()
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            if engine == "ray":
                from .distributed import extract_on_ray

                out = extract_on_ray(self, key, tmp, model, dataset, hooks, max_length, prepend_bos, batch_size,
                                     workers, address, progress)
            else:
                out = self._extract_here(tmp, model, dataset, hooks, max_length, prepend_bos, batch_size, progress)
            out["files"][TEXT_HASHES_FILE] = write_safetensors_parts(tmp / TEXT_HASHES_FILE,
                                                                     {"xxh3": [dataset.item_hashes()]})
            if out["n_truncated"]:
                warnings.warn(truncation_message(out["n_truncated"], len(dataset), max_length, model.max_length),
                              TruncationWarning)
            meta = {
                "format": FORMAT_VERSION, "key": key, "model_name": model.name,
                "model_fingerprint": model.fingerprint, "device": model.device, "device_kind": model.device_kind,
                "dataset_name": dataset.name,
                "dataset_hash": dataset.content_hash, "dataset_kind": "tokens" if dataset.texts is None else "texts",
                "hooks": hooks, "shapes": out["shapes"], "max_length": max_length, "prepend_bos": prepend_bos,
                "n_texts": len(dataset), "n_tokens": out["n_tokens"], "n_truncated": out["n_truncated"],
                "shards": out["shards"], "files": out["files"], "created": time.time(),
                "seconds": round(time.time() - t0, 2), "dtype": self.dtype, "batch": out["batch"], "engine": engine,
            }
            if "timings" in out:
                meta["timings"] = out["timings"]
            (tmp / READER_LOCK).touch()
            (tmp / "last_used").touch()
            _write_meta(tmp, meta)
            os.replace(tmp, self.root / key)  # the commit point
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
