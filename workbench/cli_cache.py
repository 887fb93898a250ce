"""``workbench cache ls | verify | clean | rm KEY | clear``, and the plain-text tables the CLI prints."""

from __future__ import annotations

import sys
import time

from .errors import WorkbenchError


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def cmd_cache(args) -> None:
    from .store import ActivationStore

    store = ActivationStore()
    if args.action == "ls":
        rows = store.listing()
        for r in rows:
            r["size"] = f"{r['bytes'] / 2**20:.1f} MiB"
            r["last_used"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_used"]))
        print(_table(rows, ["key", "state", "model", "dataset", "n_texts", "n_tokens", "hooks", "max_length", "size",
                            "last_used", "problem"]))
        states = {s: sum(r["state"] == s for r in rows) for s in ("ok", "corrupt", "orphan", "writing")}
        print(f"{states['ok']} entries, {states['corrupt']} corrupt, {states['orphan']} orphaned temporary folders, "
              f"{states['writing']} being written; {sum(r['bytes'] for r in rows) / 2**20:.1f} MiB "
              f"(cap {store.max_bytes / 2**30:.1f} GiB) in {store.root}")
    elif args.action == "verify":
        rows = [r for r in store.listing() if r["state"] in ("ok", "corrupt")]
        bad = 0
        for r in rows:
            problem = store.verify(r["key"])
            print(f"{r['key']}  {'ok' if problem is None else 'CORRUPT: ' + problem}")
            bad += problem is not None
        orphans = store.remove_orphans()
        print(f"{len(rows) - bad}/{len(rows)} entries intact" + ("; corrupt entries are rebuilt on next use "
              "(`workbench cache clean` removes them now)" if bad else "")
              + (f"; removed {len(orphans)} orphaned temporary folder(s)" if orphans else ""))
        if bad:
            sys.exit(1)
    elif args.action == "clean":
        done = store.clean()
        print(f"removed {len(done['orphans'])} orphaned temporary folder(s) and {len(done['corrupt'])} corrupt "
              f"entr{'y' if len(done['corrupt']) == 1 else 'ies'} from {store.root}")
    elif args.action == "rm":
        if not args.key:
            raise WorkbenchError("cache rm needs a KEY (see `workbench cache ls`).")
        if not store.remove(args.key):
            raise WorkbenchError(f"No cache entry with key {args.key!r}.")
        print(f"removed {args.key}")
    elif args.action == "clear":
        print(f"removed {store.clear()} entries and orphans from {store.root} (entries open in running processes "
              "are kept)")
