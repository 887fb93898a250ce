"""The store's housekeeping: listing its folders, removing entries and orphans, LRU eviction, and the
integrity and lock checks they rest on. Only folders of the cache's own form are ever deleted."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import WorkbenchError
from .files import (_DELETING_PREFIX, _TMP_RE, KEY_RE, STALE_SECONDS, TOKENS_FILE, CorruptEntry, _exclusive,
                    _folder_bytes, _xxh3_file, read_meta)

log = logging.getLogger("workbench.store.cache")


def describe_hooks(hooks: list[str]) -> str:
    """A short human summary of a hook list: ``resid_post x30 + embed``-style counts by hook kind."""
    counts: dict[str, int] = {}
    for hook in hooks:
        kind = re.sub(r"^blocks\.\d+\.", "", hook).replace("hook_", "")
        counts[kind] = counts.get(kind, 0) + 1
    return " + ".join(f"{kind} ×{n}" if n > 1 else kind for kind, n in counts.items())


class StoreHousekeeping:
    """Listing, removal and eviction for :class:`~workbench.store.ActivationStore` (needs ``root`` and
    ``max_bytes``)."""

    root: Path
    max_bytes: int

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
                                "settings": {"prepend_bos": meta.get("prepend_bos"), "hooks": meta["hooks"],
                                             "dtype": meta.get("dtype", "float32")},
                                "hooks_summary": describe_hooks(meta["hooks"])})
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
