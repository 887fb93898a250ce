"""Facts about the machine that change which arithmetic is fast.

bf16 matmuls are fast only where the hardware does them natively: a CUDA GPU with bf16, or a CPU
with ``avx512_bf16`` / ``amx_bf16``. Elsewhere (an AVX2-only CPU, say) PyTorch's bf16 CPU path is
emulated: measured on a 2-core AMD EPYC without AVX-512, a [128 x 576] @ [576 x 49152] matmul with
log-softmax and backward took 0.47 s in fp32 and 11.4 s under bf16 autocast (24x slower). Back-ends
that default to bf16 resolve an ``auto`` setting with :func:`native_bf16` and record what they used.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` runs bf16 matmuls natively: a CUDA GPU with bf16, or a CPU whose flags
    list ``avx512_bf16`` or ``amx_bf16`` (Linux ``/proc/cpuinfo``; elsewhere False)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return _cpu_bf16()


@lru_cache(maxsize=1)
def _cpu_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))
