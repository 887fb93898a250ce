"""The store's files: safetensors written streamed with checksums, memory-mapped reads, the
checksummed metadata, and the readers' locks that keep an entry from being deleted under them."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import xxhash

from ..paths import atomic_write, file_digest

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
#: xxh3 of each text of the entry, so a dataset that is a prefix of it can be served from it
TEXT_HASHES_FILE = "text_hashes.safetensors"

Progress = Callable[[int, int, str], None]

_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64, "F64": np.float64,
           "U8": np.uint8, "U64": np.uint64}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


class CorruptEntry(Exception):
    """Raised internally when an entry fails a check; the message says which."""


def _xxh3_file(path: Path) -> str:
    """xxh3 of a file (the store's checksums: fast, not cryptographic)."""
    return file_digest(path, xxhash.xxh3_64(), chunk=1 << 24)


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
    """Writes shards on one background thread, recording size and checksum.

    ``submit`` waits until the previous shard is on disk, so at most two shards are in memory: the
    one being written and the one filling (the store's memory bound)."""

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
            finally:
                del item, buffer
                self.queue.task_done()

    def submit(self, name: str, buffer: dict) -> None:
        self.queue.join()  # the previous shard is written (and its buffer freed) before this one queues
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


def _folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def is_pattern_hook(hook: str) -> bool:
    """Attention patterns ``[B, H, T, T]``: stored per text as ``[len, H, len]``, flattened."""
    return hook.endswith("attn.hook_pattern")
