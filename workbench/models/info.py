"""What is known about a model without its weights: hook names, shape, fingerprint, and its card.

Layer convention: layer 0 is the embedding output, layer ``l >= 1`` the output of block ``l - 1``,
layer ``L`` the last block's output *before* the final norm (TransformerLens ``hook_resid_post``).

A model's *card* (:class:`ModelInfo` as JSON under ``cache_dir()/models/cards/``) is written on every
full load. With it, a run whose activations are all in the store never loads the weights: the
store key needs only the fingerprint, and :class:`LazyModel` loads the model the first time
something needs it (a forward pass, the tokenizer, the unembedding).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from ..errors import WorkbenchError
from ..paths import atomic_write, cache_dir, sha256_file

SENTENCE_EMBEDDING = "sentence_embedding"
HOOK_GROUPS = ("resid", "resid_mid", "attn_z", "attn_out", "mlp_out", "attn_pattern", "sentence")
_PER_BLOCK = {"resid_mid": "hook_resid_mid", "attn_z": "attn.hook_z", "attn_out": "hook_attn_out",
              "mlp_out": "hook_mlp_out", "attn_pattern": "attn.hook_pattern"}


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


# ---- fingerprints ------------------------------------------------------------------------------
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
        digest.update(sha256_file(p).encode())
    value = digest.hexdigest()
    memo[key] = value
    with atomic_write(memo_path) as handle:
        json.dump(memo, handle)
    return value


def fingerprint_of(folder: Path | None, name: str, dtype: str, revision: str | None = None) -> str:
    """``name@hash16:dtype``: weights hash for local folders, the hub revision for hub snapshots.

    This identifies the weights (what a trained lens or SAE belongs to); the device they run on is
    a separate part of every cache key and manifest (:attr:`ModelInfo.device_kind`).
    """
    ident = revision or (_weights_hash(folder) if folder is not None else "unknown")
    return f"{name}@{ident[:16]}:{dtype}"


# ---- what is known without weights -------------------------------------------------------------
@dataclass
class ModelInfo:
    """A model's identity and shape: enough for hook names and cache keys, no weights.

    ``fingerprint`` identifies the weights and dtype; ``device`` is where they run ("cpu",
    "cuda:0", or "auto-map" for a model spread over several devices).
    """

    name: str
    kind: str  # "decoder" | "encoder" | "seq2seq"
    fingerprint: str
    folder: Path | None = None
    n_layers: int = 0
    d_model: int = 0
    n_heads: int = 0
    max_length: int = 512
    vocab_size: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    sentence_pooling: str = "mean"
    sentence_normalize: bool = False
    load_report: dict = field(default_factory=dict)

    @property
    def device_kind(self) -> str:
        """"cpu", "cuda", "mps": what numerics depend on (cuda:0 and cuda:1 compute alike)."""
        return self.device.split(":")[0]

    # ---- hook names -------------------------------------------------------------------------
    def resid_hooks(self) -> list[str]:
        """Residual stream names for layers 0..L (L+1 names)."""
        return [resid_hook(layer) for layer in range(self.n_layers + 1)]

    def hook_names(self, group: str) -> list[str]:
        """Names in a group: resid, resid_mid, attn_z, attn_out, mlp_out, attn_pattern, sentence."""
        if group == "resid":
            return self.resid_hooks()
        if group == "sentence":
            return [SENTENCE_EMBEDDING]
        if group not in _PER_BLOCK:
            raise WorkbenchError(f"Unknown hook group {group!r}; choose from {', '.join(HOOK_GROUPS)}.")
        if self.kind != "decoder":
            raise WorkbenchError(
                f"Hook group {group!r} needs a decoder-only model hooked through TransformerBridge; "
                f"{self.name} is an {self.kind}: use 'resid' or 'sentence'.")
        return [f"blocks.{b}.{_PER_BLOCK[group]}" for b in range(self.n_layers)]

    def available_hooks(self) -> list[str]:
        groups = ["resid", "sentence"] if self.kind != "decoder" else \
            ["resid", "resid_mid", "attn_z", "attn_out", "mlp_out", "attn_pattern"]
        return [h for g in groups for h in self.hook_names(g)]

    def check_hooks(self, hooks: list[str]) -> None:
        allowed = set(self.available_hooks())
        bad = [h for h in hooks if h not in allowed]
        if bad:
            raise WorkbenchError(
                f"{self.name} has no hook(s) {bad[:5]}; names look like {self.resid_hooks()[:2]} "
                "(see ModelInfo.available_hooks()).")

    def info(self) -> "ModelInfo":
        """The weight-free part of this model (a plain :class:`ModelInfo`)."""
        return ModelInfo(**{f.name: getattr(self, f.name) for f in fields(ModelInfo)})


# ---- cards -------------------------------------------------------------------------------------
def _card_path(fingerprint: str, device_kind: str) -> Path:
    digest = hashlib.sha256(f"{fingerprint}|{device_kind}".encode()).hexdigest()[:32]
    return cache_dir() / "models" / "cards" / f"{digest}.json"


def save_card(info: ModelInfo) -> None:
    card = asdict(info.info())
    card["folder"] = None if info.folder is None else str(info.folder)
    with atomic_write(_card_path(info.fingerprint, info.device_kind)) as handle:
        json.dump(card, handle, default=str)


def read_card(fingerprint: str, device_kind: str) -> ModelInfo | None:
    try:
        card = json.loads(_card_path(fingerprint, device_kind).read_text())
        card["folder"] = None if card.get("folder") is None else Path(card["folder"])
        return ModelInfo(**{f.name: card[f.name] for f in fields(ModelInfo) if f.name in card})
    except (OSError, ValueError, TypeError, KeyError):
        return None


class LazyModel(ModelInfo):
    """A model known by its card: hook names, shape and fingerprint at once, the weights on first use.

    Any attribute a :class:`~workbench.models.loaded.LoadedModel` has and a card does not (``hf_model``,
    ``tokenizer``, ``bridge``, ``run_hooks``, ...) loads the model through ``loader`` and is taken
    from it; ``loaded`` says whether that happened.
    """

    def __init__(self, info: ModelInfo, loader: Callable[[], object]):
        super().__init__(**{f.name: getattr(info, f.name) for f in fields(ModelInfo)})
        self._loader = loader
        self._model = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self):
        if self._model is None:
            self._model = self._loader()
            self.load_report = self._model.load_report
        return self._model

    def __getattr__(self, attr: str):
        # only reached for attributes a card lacks; dunder lookups (copy, pickle) must not load
        if attr.startswith("__") or attr in ("_loader", "_model"):
            raise AttributeError(attr)
        return getattr(self.load(), attr)
