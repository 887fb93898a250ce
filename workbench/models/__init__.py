"""Models: the registry of built-ins, loading on a device and dtype, fingerprints, hooked access.

- :mod:`.registry`: built-in models that load offline, resolving a name to its weights;
- :mod:`.info`: hook names, :class:`ModelInfo` (shape and fingerprint without weights), model cards
  and :class:`LazyModel`;
- :mod:`.loaded`: :class:`LoadedModel`, plain transformers plus a TransformerBridge for hooks;
- :mod:`.loading`: :func:`load_model` (device, dtype, device maps, the memory estimate, the load check).
"""

from .info import (HOOK_GROUPS, SENTENCE_EMBEDDING, LazyModel, ModelInfo, fingerprint_of, hook_layer,  # noqa: F401
                   resid_hook)
from .loaded import LoadedModel  # noqa: F401
from .loading import (DTYPES, LOAD_CHECK_TOLERANCE, LOGIT_CHECK_TOLERANCE, available_devices,  # noqa: F401
                      load_model, load_tokenizer, model_card, parse_max_memory, resolve_device, resolve_dtype,
                      shared_twin)
from .registry import DEFAULT_MODEL, ModelSpec, builtin_models, list_models, resolve_source  # noqa: F401


def clear_loaded() -> None:
    """Forget loaded models (tests; frees memory)."""
    from .loading import _load_cached

    _load_cached.cache_clear()
