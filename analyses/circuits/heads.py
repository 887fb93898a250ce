"""Clean activations of the circuits back-end, read through the activation store.

Every clean activation the back-end uses is a store entry of a :class:`~workbench.data.TokenDataset`
(the task's prompts, the random induction sequences), asked for through a *reader*
``read(hooks, dataset, batch_size) -> CacheEntry``: :func:`context_reader` inside an analysis run
(the manifest's ``cache`` list records each read, ``hit`` True on a cache hit), :func:`store_reader`
when :func:`~analyses.circuits.pipeline.find_circuit` is called directly.

Per-head output in the residual basis (TransformerLens ``hook_result`` /
``cache.stack_head_results()``; ``b_O`` is not part of any head)::

    result[i, l, h] = pool(z[i, :, l, h, :]) @ W_O[l, h]

with ``z`` = ``blocks.{l}.attn.hook_z`` ``[len_i, H, d_head]`` of prompt ``i`` as stored and ``W_O``
``[L, H, d_head, d]``; ``pool`` is the mean over the prompt's positions (BOS included, as
TransformerLens' run on a string; the paper's choice) or its last position. The map is linear, so
``z`` is pooled first and then multiplied (docs/methods.md, "SAE circuits").
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from workbench.data import TokenDataset
from workbench.errors import WorkbenchError
from workbench.store import ActivationStore, CacheEntry

from .tasks import Task

Reader = Callable[[list[str], TokenDataset, int], CacheEntry]
POSITIONS = ("mean", "final")


def store_reader(model, store: ActivationStore | None = None,
                 progress: Callable[[int, int, str], None] | None = None) -> Reader:
    """A reader on ``store`` (default: the workbench's activation cache)."""
    def read(hooks: list[str], dataset: TokenDataset, batch_size: int) -> CacheEntry:
        nonlocal store
        store = store if store is not None else ActivationStore()
        return store.get_or_extract(model, dataset, hooks, batch_size=batch_size, progress=progress)
    return read


def context_reader(ctx) -> Reader:
    """A reader through a :class:`~workbench.analysis.RunContext`: each read is a cache event of the run."""
    def read(hooks: list[str], dataset: TokenDataset, batch_size: int) -> CacheEntry:
        return ctx.activations(hooks, dataset=dataset, batch_size=batch_size)
    return read


def prompt_dataset(task: Task) -> TokenDataset:
    """The task's positive prompts then its negative ones, as a token dataset (keyed by the ids)."""
    sides = ["positive"] * len(task.positive) + ["negative"] * len(task.negative)
    frame = pd.DataFrame({"side": sides, "pair": list(range(len(task.positive))) + list(range(len(task.negative)))})
    return TokenDataset(f"circuits-{task.name}-prompts", task.positive + task.negative, frame)


def pooled_z(entry: CacheEntry, hook: str, position: str = "mean") -> torch.Tensor:
    """One layer's ``hook_z`` pooled per prompt: float32 ``[n_prompts, H, d_head]``.

    The mean is a float32 sum over the prompt's positions divided by its length, the arithmetic of
    a masked sum over a right-padded batch, so that the SAE sees bit for bit the inputs a direct
    hooked forward gives (its top-1 codes are sensitive to the last bit).
    """
    if position == "mean":
        return torch.stack([torch.from_numpy(np.array(acts, dtype=np.float32)).sum(0) / int(len(acts))
                            for _, acts in entry.iter_texts(hook)])
    if position == "final":
        return torch.from_numpy(entry.rows(hook, entry.offsets[1:] - 1))
    raise WorkbenchError(f"position must be 'mean' or 'final', got {position!r}")


def head_outputs(entry: CacheEntry, W_O: torch.Tensor, hooks: list[str], position: str = "mean") -> torch.Tensor:
    """Per-head outputs in the residual basis, float32 ``[n_prompts, n_layers * n_heads, d_model]``,
    from the ``hook_z`` entries ``hooks`` (one per layer); heads layer-major (``l * n_heads + h``)."""
    W_O = W_O.detach().float().cpu()  # [L, H, d_head, d]
    n_layers, n_heads, _, d_model = W_O.shape
    if len(hooks) != n_layers:
        raise WorkbenchError(f"{len(hooks)} hook_z names for {n_layers} layers of W_O.")
    out = torch.empty(entry.n_texts, n_layers * n_heads, d_model)
    for layer, hook in enumerate(hooks):
        z = pooled_z(entry, hook, position)
        out[:, layer * n_heads:(layer + 1) * n_heads] = torch.einsum("bhe,hed->bhd", z, W_O[layer])
    return out


def read_head_outputs(model, task: Task, read: Reader, position: str = "mean",
                      batch_size: int = 32) -> tuple[torch.Tensor, bool]:
    """Per-head outputs of the task's positives then negatives, read through the store; and whether
    that read was a cache hit."""
    if position not in POSITIONS:
        raise WorkbenchError(f"position must be 'mean' or 'final', got {position!r}")
    hooks = model.hook_names("attn_z")
    entry = read(hooks, prompt_dataset(task), int(batch_size))
    try:
        return head_outputs(entry, model.bridge.W_O, hooks, position), not entry.extracted
    finally:
        entry.close()
