"""Loading a model: device and dtype, models spread over several devices, the memory estimate,
the TransformerBridge for decoders, and the load check (:mod:`.load_check`) run on every load.

torch is imported where weights are loaded or a GPU is asked about, not with the module: a run served
wholly from the activation store (a :class:`LazyModel` from the model's card) never pays for it.

Decoder-only models are hooked through transformer-lens's ``TransformerBridge`` (TransformerLens hook
names); encoders and sentence embedders through plain transformers hidden states.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import WorkbenchError
from .info import LazyModel, fingerprint_of, read_card, save_card
from .registry import DEFAULT_MODEL, WEIGHT_SUFFIXES, builtin_models, resolve_source

if TYPE_CHECKING:
    from .loaded import LoadedModel

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
#: max |log-probs(hooked) - log-probs(plain)| and |cached step - full forward| tolerated per dtype.
#: In fp32 the two paths differ only by kernel order (eager vs sdpa attention): 4e-5 on smollm2-135m.
#: Half precision rounds every matmul to 8 (bf16) or 11 (fp16) mantissa bits, and the two paths
#: round differently: measured 0.57 (bf16) and 0.068 (fp16) nats on smollm2-135m on the CPU.
LOAD_CHECK_TOLERANCE = {"float32": 1e-3, "bfloat16": 1.0, "float16": 0.25}
LOGIT_CHECK_TOLERANCE = LOAD_CHECK_TOLERANCE["float32"]
LOGIT_CHECK_TEXT = "The capital of France is"
#: greedy tokens generated through the KV cache in the load check
LOAD_CHECK_NEW_TOKENS = 4


# ---- device and dtype --------------------------------------------------------------------------
#: device nodes without which no CUDA (NVIDIA, ROCm, WSL) device can exist on Linux
_GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def _no_gpu_possible() -> bool:
    """True on a Linux machine with no GPU device node: torch would find no GPU there, so it need not
    be imported (0.8 s) to say so. Elsewhere (and wherever a node exists) torch is asked."""
    return sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _GPU_DEVICE_NODES)


def available_devices() -> list[str]:
    """What this machine can run on: "cpu", then "cuda:N" per GPU, then "mps"."""
    devices = ["cpu"]
    if _no_gpu_possible():
        return devices
    import torch

    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | None) -> str:
    """``auto`` -> the first GPU when there is one, else the CPU; checks that the device exists."""
    device = (device or "auto").strip().lower()
    have = available_devices()
    if device == "auto":
        return next((d for d in have if d != "cpu"), "cpu")
    if device == "cuda":
        device = "cuda:0"
    if device not in have:
        raise WorkbenchError(f"--device {device}: not available here (this machine has {', '.join(have)}); "
                             "use --device auto or one of those.")
    return device


def resolve_dtype(dtype: str | None, device: str) -> str:
    """``auto`` -> bfloat16 on GPUs that support it, float32 elsewhere."""
    dtype = (dtype or "auto").strip().lower()
    if dtype == "auto":
        if device.startswith("cuda") and _bf16_gpu():
            return "bfloat16"
        return "float32"
    if dtype not in DTYPES:
        raise WorkbenchError(f"--dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}.")
    return dtype


def _bf16_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


def parse_max_memory(spec: str | dict | None) -> dict | None:
    """``"0=20GiB,1=20GiB,cpu=64GiB"`` (or a dict) -> transformers' ``max_memory`` mapping."""
    if spec is None or spec == "" or isinstance(spec, dict):
        return spec or None
    out = {}
    for part in str(spec).split(","):
        if "=" not in part:
            raise WorkbenchError(f"--max-memory takes DEVICE=SIZE pairs such as 0=20GiB,cpu=64GiB; got {part!r}.")
        key, size = (x.strip() for x in part.split("=", 1))
        out[int(key) if key.isdigit() else key] = size
    return out


def _to_bytes(size) -> int:
    if isinstance(size, (int, float)):
        return int(size)
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
             "gib": 2**30, "tib": 2**40}
    text = str(size).strip().lower().replace(" ", "")
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * units[unit])
            except ValueError:
                break
    raise WorkbenchError(f"--max-memory size {size!r} is not a size such as 20GiB or 512MB.")


def weight_bytes(folder: Path | None, dtype: str) -> int | None:
    """Bytes the weights take in ``dtype``, from the safetensors headers (None when unknown)."""
    if folder is None:
        return None
    per = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    n_params = 0
    for path in folder.iterdir():
        if path.suffix != ".safetensors":
            continue
        try:
            with open(path, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(min(size, 100 * 2**20)))
        except (OSError, ValueError):
            return None  # a damaged file: loading it reports the problem
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                n_params += count
    return n_params * per or None


def free_bytes(device: str) -> int:
    """Free memory on a device: CUDA's own count, or the system's available RAM for the CPU."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(name: str, folder: Path | None, dtype: str, device: str, device_map, max_memory: dict | None) -> None:
    """Refuse, before loading, a model whose weights cannot fit where they are asked to go."""
    need = weight_bytes(folder, dtype)
    if need is None:
        return
    if max_memory:
        budget = sum(_to_bytes(v) for v in max_memory.values())
        where = f"the --max-memory budget ({', '.join(f'{k}={v}' for k, v in max_memory.items())})"
    elif device_map:
        return  # transformers places layers wherever they fit, offloading to CPU or disk
    else:
        budget = free_bytes(device)
        where = f"the free memory of {device}"
    if need * 1.1 > budget:  # +10 %: buffers, activations of the load check
        raise WorkbenchError(
            f"{name} needs about {need / 2**30:.1f} GiB of weights in {dtype}, more than {where} "
            f"({budget / 2**30:.1f} GiB). Use --dtype bfloat16 to halve it, --device-map auto to spread it over "
            "several GPUs (and the CPU), or a larger --max-memory.")


# ---- loading -----------------------------------------------------------------------------------
def load_model(name: str = DEFAULT_MODEL, *, device: str | None = "auto", dtype: str | None = "auto",
               device_map: str | dict | None = None, max_memory: str | dict | None = None,
               trust_remote_code: bool = False, check_logits: bool = True, lazy: bool = False):
    """Load a built-in short name, a local folder, or a hub id; decoders come hooked.

    ``device``: auto | cpu | cuda | cuda:N | mps; ``dtype``: auto | float32 | bfloat16 | float16;
    ``device_map`` ("auto", ...) and ``max_memory`` ("0=20GiB,cpu=64GiB") spread a model over several
    devices (transformers / accelerate). ``lazy=True`` returns a :class:`LazyModel` from the model's
    card when one is on disk (no weights loaded until needed), else loads. On every load the hooked
    path and the KV-cache path are checked against a plain forward (``load_report``).
    """
    dev = "auto-map" if device_map else resolve_device(device)
    gpu_map = bool(device_map) and any(d.startswith("cuda") for d in available_devices())
    dt = resolve_dtype(dtype, "cuda" if gpu_map else dev)
    mm = parse_max_memory(max_memory)
    key = (name, dev, dt, json.dumps(device_map, sort_keys=True, default=str), json.dumps(mm, sort_keys=True, default=str),
           bool(trust_remote_code), bool(check_logits))
    if lazy:
        info = model_card(name, dev, dt)
        if info is not None:
            return LazyModel(info, lambda: _load_cached(*key))
    model = _load_cached(*key)
    if model.folder is not None and read_card(model.fingerprint, model.device_kind) is None:
        save_card(model)  # loaded earlier under another cache folder: this one gets its card too
    return model


def model_card(name: str, device: str, dtype: str):
    """The card of a local model (built-in or folder) in this device kind and dtype, if one was saved."""
    specs = builtin_models()
    folder = None
    if name in specs:
        folder = specs[name].resolve()
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
    if folder is None or not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
        return None
    info = read_card(fingerprint_of(folder, name, dtype), device.split(":")[0])
    if info is not None:
        info.device = device
    return info


@lru_cache(maxsize=4)
def _load_cached(name, device, dtype, device_map_json, max_memory_json, trust_remote_code, check_logits):
    return _load(name, device, dtype, json.loads(device_map_json), json.loads(max_memory_json),
                 trust_remote_code, check_logits)


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


def _load_error(name: str, source: str, exc: Exception) -> WorkbenchError:
    first = str(exc).splitlines()[0][:240] if str(exc) else ""
    where = f"the folder {source}" if Path(source).exists() else f"{name!r} from the hub"
    return WorkbenchError(f"Could not load {where}: {exc.__class__.__name__}: {first}. Check that its config, "
                          "tokenizer and weights are complete and undamaged.")


def _shape(cfg, tokenizer) -> dict:
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    def first(*names, default=0):
        return next((getattr(text_cfg, n) for n in names if getattr(text_cfg, n, None)), default)

    max_length = min(int(first("max_position_embeddings", "n_positions", default=512)),
                     int(getattr(tokenizer, "model_max_length", 10**9) or 10**9), 8192)
    return {"n_layers": int(first("num_hidden_layers", "num_layers", "n_layer", "encoder_layers")),
            "d_model": int(first("hidden_size", "d_model", "n_embd")),
            "n_heads": int(first("num_attention_heads", "num_heads", "n_head")),
            "vocab_size": int(first("vocab_size")), "max_length": max_length}


def _load(name, device, dtype, device_map, max_memory, trust_remote_code, check_logits) -> LoadedModel:
    t0 = time.time()
    specs = builtin_models()
    # resolved and checked before transformers is even imported: a bad name fails in about a second
    folder, source, local_only = resolve_source(name)
    check_fits(name, folder, dtype, device, device_map, max_memory)
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hub = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
    placement = {"device_map": device_map, "max_memory": max_memory} if device_map else {}
    try:
        config = AutoConfig.from_pretrained(source, **hub)
        kind = specs[name].kind if name in specs else _kind_of(config)
        loader = {"decoder": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModel}[kind]
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_model = loader.from_pretrained(source, dtype=getattr(torch, dtype), **hub, **placement)
    except WorkbenchError:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise WorkbenchError(f"{name} did not fit on {device} in {dtype}: use --dtype bfloat16, --device-map auto "
                             "or --max-memory.") from exc
    except Exception as exc:  # damaged or incomplete folders fail in many ways inside transformers
        raise _load_error(name, source, exc) from exc
    if not device_map:
        hf_model.to(device)
    hf_model.eval()
    # hub snapshots are identified by the commit hash in their cache path
    revision = None if folder is not None else (getattr(config, "_commit_hash", None) or "unknown-revision")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pooling, normalize = _sentence_settings(folder)
    from .loaded import LoadedModel

    model = LoadedModel(name=name, kind=kind, fingerprint=fingerprint_of(folder, name, dtype, revision),
                        folder=folder, dtype=dtype, device=device, sentence_pooling=pooling,
                        sentence_normalize=normalize, hf_model=hf_model, tokenizer=tokenizer,
                        **_shape(hf_model.config, tokenizer))
    if device_map:
        model.load_report["device_map"] = {str(k): str(v) for k, v in getattr(hf_model, "hf_device_map", {}).items()}
    if kind == "decoder":
        from .load_check import load_check, plain_logits

        reference = plain_logits(model) if check_logits else None
        model.bridge = _bridge(source, hf_model, tokenizer, device if not device_map else None)
        model.n_layers = int(model.bridge.cfg.n_layers)
        if check_logits:
            model.load_report.update(load_check(model, *reference))
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
    memo = {id(t): t for t in list(hf_model.parameters()) + list(hf_model.buffers())}
    return copy.deepcopy(hf_model, memo)


def _bridge(source: str, hf_model, tokenizer, device: str | None):
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
                                                     device=device)
        bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()
    return bridge


@lru_cache(maxsize=8)
def load_tokenizer(name: str):
    """A model's tokenizer alone (no weights): for previews of prompts and token counts."""
    from transformers import AutoTokenizer

    folder, source, local_only = resolve_source(name)
    tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok
