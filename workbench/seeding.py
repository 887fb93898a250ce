"""Seeding every random number generator a run may use, without importing torch to do it.

A run served from the activation store may never import torch (0.8 s). Its seed must still hold if
torch is imported later in the run (a lazily loaded model, a back-end that imports torch inside a
function), or the same command would give different numbers cold and cached. So when torch is not
yet imported, a one-shot import hook seeds it as soon as its import finishes.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import random
import sys

import numpy as np


class _SeedTorchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first ``import torch`` it lets the other finders locate torch,
    wraps that loader's ``exec_module`` to call ``torch.manual_seed(seed)`` after it, and leaves."""

    def __init__(self) -> None:
        self.seed = 0

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        uninstall()
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        exec_module, seed = spec.loader.exec_module, self.seed

        def exec_and_seed(module) -> None:
            exec_module(module)
            module.manual_seed(seed)

        spec.loader.exec_module = exec_and_seed
        return spec


_HOOK = _SeedTorchOnImport()


def uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (now if imported, else on import)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "manual_seed"):
        uninstall()
        torch.manual_seed(seed)
        return
    _HOOK.seed = seed
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
