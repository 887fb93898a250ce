"""Saving, finding and loading SAEs, in SAELens's file layout.

A trained SAE is a folder (docs/methods.md, "SAEs on embeddings and residual streams"):

    cfg.json                 SAELens config: architecture ("topk" / "standard"), d_in, d_sae, k, dtype,
                             apply_b_dec_to_input, normalize_activations, model_name, hook_name,
                             hook_layer, context_size, dataset_path, metadata {...}; and a "workbench"
                             block: the SAE's fingerprint, the model's fingerprint, target, data, settings,
                             training log, quality, deviations
    sae_weights.safetensors  W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] (float32)
    sparsity.safetensors     sparsity [d_sae]: log10 of each latent's firing density on the training rows

so that ``sae_lens.SAE.load_from_disk(folder)`` reads it. The SAE's *fingerprint* names the model (its
fingerprint), the target and the data (content hash), and a hash of the settings; its folder is
``cache_dir()/saes/<model fingerprint>/<target>-<architecture>-k<k>-<d_sae>-<data hash>-<settings hash>/``
(or an ``--out`` folder), where the analyses find it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from workbench.errors import WorkbenchError
from workbench.paths import atomic_write, cache_dir

from .sae import SparseAutoencoder
from .settings import NOT_IDENTITY

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
FORMAT = 1
_ARCH_TO_SAELENS = {"topk": "topk", "relu": "standard"}


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def identity(model, target, dataset, settings: dict) -> dict:
    """What makes two SAEs the same: model weights, target, data content and every weight-relevant setting."""
    return {"model_fingerprint": model.fingerprint, "target": target.name, "hook": target.hook,
            "data_hash": dataset.content_hash,
            "settings": {k: v for k, v in sorted(settings.items()) if k not in NOT_IDENTITY}}


def fingerprint(ident: dict) -> str:
    """``<model fingerprint>|<target>|<data hash 12>|<settings hash 12>``."""
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return f"{ident['model_fingerprint']}|{ident['target']}|{ident['data_hash'][:12]}|{digest[:12]}"


def model_root(model_fingerprint: str) -> Path:
    return cache_dir() / "saes" / safe_name(model_fingerprint)


def sae_dir(ident: dict) -> Path:
    """The cache folder of the SAE with this identity."""
    s = ident["settings"]
    digest = fingerprint(ident).rsplit("|", 1)[1]
    name = f"{ident['target'].replace(':', '')}-{s['architecture']}-k{s['k']}-{s['d_sae']}-{ident['data_hash'][:8]}-{digest[:8]}"
    return model_root(ident["model_fingerprint"]) / name


def is_complete(folder: Path) -> bool:
    return (Path(folder) / CFG_FILE).exists() and (Path(folder) / WEIGHTS_FILE).exists()


def saelens_config(sae: SparseAutoencoder, info: dict) -> dict:
    """The cfg.json of ``sae``: SAELens's fields (v6 ``metadata`` and the older top-level names) + ours."""
    layer = info.get("layer")
    hook_layer = 0 if layer in (None, 0) else int(layer) - 1  # the block index in the hook name
    meta = {"model_name": info["model"], "hook_name": info["hook"], "hook_layer": hook_layer,
            "hook_head_index": None, "dataset_path": info["data"]["name"],
            "context_size": info["settings"].get("max_length") or None, "prepend_bos": None,
            "sae_lens_training_version": None}
    cfg = {"architecture": _ARCH_TO_SAELENS[sae.architecture], "d_in": sae.d_in, "d_sae": sae.d_sae,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none", "activation_fn_str": sae.architecture if sae.architecture == "topk" else "relu",
           "activation_fn_kwargs": {"k": sae.k} if sae.architecture == "topk" else {},
           "finetuning_scaling_factor": False, **{k: v for k, v in meta.items() if k != "sae_lens_training_version"},
           "metadata": meta, "workbench": {**info, "format": FORMAT}}
    if sae.architecture == "topk":
        cfg["k"] = sae.k
    return cfg


def save_sae(folder: Path, sae: SparseAutoencoder, info: dict, log10_density: torch.Tensor | None = None) -> Path:
    """Write the three files atomically (weights first, cfg.json last: a folder with cfg.json is complete)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().float().cpu().contiguous() for name, p in sae.named_parameters()}
    tmp = folder / f".{WEIGHTS_FILE}.{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"sae_fingerprint": info["sae_fingerprint"]})
    os.replace(tmp, folder / WEIGHTS_FILE)
    if log10_density is not None:
        tmp = folder / f".{SPARSITY_FILE}.{os.getpid()}"
        save_file({"sparsity": log10_density.float().cpu().contiguous()}, str(tmp))
        os.replace(tmp, folder / SPARSITY_FILE)
    with atomic_write(folder / CFG_FILE) as handle:
        json.dump(saelens_config(sae, info), handle, indent=1, default=str)
    return folder


def read_config(folder: Path) -> dict:
    folder = Path(folder).expanduser()
    if not is_complete(folder):
        raise WorkbenchError(f"No SAE at {folder}: an SAE folder holds {CFG_FILE} and {WEIGHTS_FILE} (SAELens layout); "
                             "train one with `workbench train-sae`.")
    try:
        return json.loads((folder / CFG_FILE).read_text())
    except ValueError as exc:
        raise WorkbenchError(f"{folder / CFG_FILE} is not valid JSON ({exc}).") from None


def load_sae(folder: Path, device: str | torch.device = "cpu") -> tuple[SparseAutoencoder, dict]:
    """The SAE in ``folder`` (ours or any SAELens topk / standard SAE) and its cfg.json."""
    cfg = read_config(folder)
    arch = {"topk": "topk", "standard": "relu", "relu": "relu"}.get(cfg.get("architecture"))
    if arch is None:
        raise WorkbenchError(f"{folder}: architecture {cfg.get('architecture')!r} is not supported; this workbench "
                             "reads topk and standard (ReLU) SAEs.")
    k = int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 1)
    tensors = load_file(str(Path(folder) / WEIGHTS_FILE))
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    sae = SparseAutoencoder(d_in, d_sae, k, arch)
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    with torch.no_grad():
        for name, shape in expected.items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                got = None if name not in tensors else tuple(tensors[name].shape)
                raise WorkbenchError(f"{folder / WEIGHTS_FILE}: {name} should be {list(shape)}, found {got}.")
            getattr(sae, name).copy_(tensors[name].float())
    return sae.to(device).eval(), cfg


def check_model(cfg: dict, model, folder: Path) -> None:
    """Refuse an SAE trained on another model (by weights fingerprint) or for another width."""
    ours = cfg.get("workbench") or {}
    if ours.get("model_fingerprint") and ours["model_fingerprint"] != model.fingerprint:
        raise WorkbenchError(f"The SAE at {folder} was trained on {ours['model_fingerprint']}, not on {model.name} "
                             f"({model.fingerprint}): give an SAE of this model, or train one with "
                             f"`workbench train-sae --model {model.name}`.")
    if int(cfg["d_in"]) != int(model.d_model):
        raise WorkbenchError(f"The SAE at {folder} reads vectors of dimension {cfg['d_in']}; {model.name} has "
                             f"d_model = {model.d_model}: it is an SAE of another model.")


def list_saes(model_fingerprint: str) -> list[dict]:
    """Every complete SAE of a model in the cache, newest first: ``{"folder", "target", "data", "settings",
    "quality", "created"}``."""
    rows = []
    root = model_root(model_fingerprint)
    for folder in sorted(root.glob("*/")) if root.exists() else []:
        try:
            info = read_config(folder).get("workbench") or {}
        except WorkbenchError:
            continue
        rows.append({"folder": str(folder), "target": info.get("target"), "data": (info.get("data") or {}).get("name"),
                     "settings": info.get("settings", {}), "quality": info.get("quality", {}),
                     "created": info.get("created", "")})
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
