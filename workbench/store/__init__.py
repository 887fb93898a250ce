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

from .cache import ActivationStore  # noqa: F401
from .entry import CacheEntry  # noqa: F401
from .extract import char_budget, tokenize  # noqa: F401
from .files import (FORMAT_VERSION, KEY_RE, STALE_SECONDS, TOKENS_FILE, CorruptEntry, Progress,  # noqa: F401
                    is_pattern_hook, memmap_safetensors, read_meta, write_safetensors_files, write_safetensors_parts)
