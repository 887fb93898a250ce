"""Published ground-truth circuits, shipped as JSON in ``sample_data/circuits/ground_truth/``.

Each file names a task, the model it belongs to (``names`` and/or an ``architecture`` signature) and
the heads as ``[layer, head]`` pairs (docs/methods.md, "Ground-truth circuits"). A file applies when
the task matches and either the loaded model's name matches one of ``names`` (case-insensitive, also the folder's last
part) or every key of ``architecture`` equals the loaded model's value (``model_type``,
``n_layers``, ``n_heads``, ``d_model``, ``attention_only``), unless the file says ``"match": "name"``.
The shape must agree in every case.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from workbench.paths import SAMPLE_DATA

GROUND_TRUTH_DIR = SAMPLE_DATA / "circuits" / "ground_truth"


def load_ground_truths(folder: Path = GROUND_TRUTH_DIR) -> list[dict]:
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        entry = json.loads(path.read_text())
        entry["file"] = f"sample_data/circuits/ground_truth/{path.name}"
        out.append(entry)
    return out


def architecture_of(bridge, hf_config=None) -> dict:
    """The signature used for matching: model_type, n_layers, n_heads, d_model, attention_only."""
    cfg = bridge.cfg
    arch = {"n_layers": int(cfg.n_layers), "n_heads": int(cfg.n_heads), "d_model": int(cfg.d_model)}
    hf_config = hf_config if hf_config is not None else getattr(getattr(bridge, "original_model", None), "config", None)
    if hf_config is not None:
        arch["model_type"] = getattr(hf_config, "model_type", None)
        inner = [getattr(hf_config, k, None) for k in ("intermediate_size", "n_inner", "d_mlp")]
        arch["attention_only"] = bool(getattr(hf_config, "attn_only", False)) or any(v == 0 for v in inner)
    else:
        arch["attention_only"] = bool(getattr(cfg, "attn_only", False))
    return arch


def _name_matches(model_name: str | None, names: list[str]) -> bool:
    if not model_name:
        return False
    candidates = {model_name.lower(), Path(str(model_name)).name.lower()}
    return any(n.lower() in candidates for n in names)


def match_ground_truth(task: str, model_name: str | None, arch: dict) -> dict | None:
    """The ground-truth entry for (task, model), with ``mask`` bool [n_layers * n_heads] and ``matched_by``."""
    for entry in load_ground_truths():
        if entry.get("task") != task:
            continue
        spec = entry.get("model", {})
        want = spec.get("architecture", {})
        shape_ok = all(arch.get(k) == want[k] for k in ("n_layers", "n_heads", "d_model") if k in want)
        by_name = _name_matches(model_name, spec.get("names", []))
        # "match": "name" -> the architecture only checks the shape (a project-trained model's truth
        # holds for its own weights, not for every model of that shape)
        by_arch = spec.get("match") != "name" and bool(want) and all(arch.get(k) == v for k, v in want.items())
        if not shape_ok or not (by_name or by_arch):
            continue
        n_layers, n_heads = arch["n_layers"], arch["n_heads"]
        mask = np.zeros(n_layers * n_heads, dtype=bool)
        for layer, head in entry["heads"]:
            mask[layer * n_heads + head] = True
        return {**entry, "mask": mask, "matched_by": "name" if by_name else "architecture"}
    return None
