"""Models: the registry of built-ins, loading on a device and dtype, fingerprints, hooked access.

- :mod:`.registry`: built-in models that load offline, resolving a name to its weights;
- :mod:`.info`: hook names, :class:`ModelInfo` (shape and fingerprint without weights), model cards
  and :class:`LazyModel`;
- :mod:`.loaded`: :class:`LoadedModel`, plain transformers plus a TransformerBridge for hooks;
- :mod:`.loading`: :func:`load_model` (device, dtype, device maps, the memory estimate, the load check).
"""

from .info import (HOOK_GROUPS, SENTENCE_EMBEDDING, LazyModel, ModelInfo, fingerprint_of, hook_layer,  # noqa: F401
                   resid_hook)
from .registry import DEFAULT_MODEL, ModelSpec, builtin_models, list_models, resolve_source  # noqa: F401

# Loading needs torch (about 0.8 s to import). A run served wholly from the activation store never
# loads a model, so these names are imported on first use (PEP 562), not with the package.
_LAZY = {"LoadedModel": "loaded", **{name: "loading" for name in (
    "DTYPES", "LOAD_CHECK_TOLERANCE", "LOGIT_CHECK_TOLERANCE", "available_devices", "load_model", "load_tokenizer",
    "model_card", "parse_max_memory", "resolve_device", "resolve_dtype", "shared_twin")}}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def clear_loaded() -> None:
    """Forget loaded models (tests; frees memory)."""
    from .loading import _load_cached

    _load_cached.cache_clear()
