"""Subprocess driver for the Ray fault test: extract on a running cluster until killed.

usage: python _ray_driver.py GCS_ADDRESS MODEL_DIR STORE_ROOT N_TEXTS OUT_JSON
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.data import TextDataset  # noqa: E402
from workbench.distributed import connect  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.store import ActivationStore  # noqa: E402

address, model_dir, root, n, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
connect(address)
texts = [f"the cat sat on the mat {i % 7} one two three {'red blue green ' * (i % 5)}" for i in range(n)]
entry = ActivationStore(root=Path(root)).get_or_extract(load_model(model_dir), TextDataset.from_texts(texts),
                                                        batch_size=1, engine="ray", workers=2)
Path(out).write_text(json.dumps({"key": entry.key}))
