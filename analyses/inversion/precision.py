"""The inversion search's arithmetic: fp32 (the official code's), bf16, or auto (bf16 where the
hardware does bf16 natively), and the bf16 copy of a proposer (docs/methods.md, "Embedding inversion")."""

from __future__ import annotations

import copy
import weakref

import torch

from workbench.errors import WorkbenchError
from workbench.hardware import native_bf16

#: the search's arithmetic: fp32, bf16, or auto (bf16 where the hardware does bf16 natively)
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``fp32`` or ``bf16``: ``auto`` is bf16 where :func:`native_bf16`, else fp32."""
    precision = str(precision or "auto").lower()
    if precision not in PRECISIONS:
        raise WorkbenchError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


#: bf16 copies of proposers' transformers models, one per fp32 model while it lives
_BF16_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def bf16_copy(hf_model):
    """A bf16 copy of a transformers model (made once per model; the model itself is untouched)."""
    if hf_model not in _BF16_COPIES:
        _BF16_COPIES[hf_model] = copy.deepcopy(hf_model).to(torch.bfloat16).eval()
    return _BF16_COPIES[hf_model]
