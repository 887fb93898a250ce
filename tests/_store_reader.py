"""Subprocess reader for the eviction race test: open an entry, wait for a signal file, read it all.

usage: python _store_reader.py STORE_ROOT KEY READY_FILE GO_FILE OUT_JSON
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.store import ActivationStore  # noqa: E402

root, key, ready, go, out = sys.argv[1:6]
entry = ActivationStore(root=Path(root)).open(key)
Path(ready).touch()
deadline = time.time() + 60
while not Path(go).exists() and time.time() < deadline:
    time.sleep(0.05)
# every shard, the token metadata and the per-text reads, after the other process tried to evict
total = sum(float(entry.tokens(h).sum()) for h in entry.hooks)
strings = [entry.token_strings(i) for i in range(entry.n_texts)]
Path(out).write_text(json.dumps({"total": total, "n_strings": sum(map(len, strings))}))
