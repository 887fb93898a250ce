"""Subprocess worker for the store's fault tests: extract a tiny model's activations.

usage: python _store_worker.py MODEL_DIR STORE_ROOT N_TEXTS SLEEP_PER_BATCH OUT_JSON
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.data import TextDataset  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.store import ActivationStore  # noqa: E402

model_dir, root, n, sleep, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
model = load_model(model_dir)
texts = [f"the cat sat on the mat {i % 7} one two three" for i in range(n)]
ds = TextDataset.from_texts(texts, name="worker")
store = ActivationStore(root=Path(root), shard_bytes=4096)
calls = {"n": 0}
original = model.run_hooks


def slow(*args, **kwargs):
    calls["n"] += 1
    Path(out + ".started").touch()
    time.sleep(sleep)
    return original(*args, **kwargs)


model.run_hooks = slow
entry = store.get_or_extract(model, ds, batch_size=4)
Path(out).write_text(json.dumps({"key": entry.key, "forward_calls": calls["n"], "n_tokens": entry.n_tokens,
                                 "extracted": entry.extracted}))
