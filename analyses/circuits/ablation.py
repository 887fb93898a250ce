"""Ablation baseline: one forward pass per head, the drop of the task metric -> reference circuit.

For every head (l, h) of every layer the positive prompts are run with that head's ``hook_z``
replaced by

- ``mean``: its per-position mean over the positive prompts (mean ablation, Wang et al. 2022), or
- ``patch``: its value on the paired negative prompt (activation patching; needs pairs of equal
  token length),

and ``effect = metric(clean) - metric(ablated)``, averaged over prompts (positive = the head helps).
``effect_norm = effect / (metric(clean positive) - metric(negative prompts))`` is the fraction of the
task behaviour the head carries; the reference circuit is ``effect_norm >= threshold``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from workbench.errors import WorkbenchError

from .hooked import collect_z, forward_logits_at, model_shape, pad_batch, per_position_mean
from .tasks import Task


def task_metric(task: Task, logits_at: list[torch.Tensor]) -> np.ndarray:
    """Per-prompt metric, float64 [n_positive], from logits at each prompt's target positions."""
    values = np.empty(len(task.targets))
    for i, (targets, logits) in enumerate(zip(task.targets, logits_at)):
        per_target = []
        for j, (_, correct, wrong) in enumerate(targets):
            row = logits[j].double()
            if task.metric == "logit_diff":
                w = row[wrong].mean() if wrong else torch.logsumexp(row, 0)
                per_target.append(float(row[correct].mean() - w))
            elif task.metric == "prob_diff":
                p = torch.softmax(row, 0)
                per_target.append(float(p[correct].sum() - (p[wrong].sum() if wrong else 0.0)))
            elif task.metric == "logprob":
                per_target.append(float(torch.log_softmax(row, 0)[correct].mean()))
            else:
                raise WorkbenchError(f"Unknown task metric {task.metric!r}")
        values[i] = float(np.mean(per_target))
    return values


def _positions(task: Task) -> list[list[int]]:
    return [[t[0] for t in targets] for targets in task.targets]


@dataclass
class AblationResult:
    effect: np.ndarray  # float64 [n_layers * n_heads]
    effect_norm: np.ndarray  # float64 [n_layers * n_heads]
    clean_metric: float
    negative_metric: float
    seconds: float
    mode: str
    n_forwards: int
    cpu_seconds: float = float("nan")


@torch.no_grad()
def ablation_effects(bridge, task: Task, mode: str = "mean", n_examples: int | None = None,
                     batch_size: int = 32, progress: Callable[[int, int], None] | None = None
                     ) -> AblationResult:
    """Per-head ablation effect on the task metric (one forward of the positive prompts per head)."""
    if mode not in {"mean", "patch"}:
        raise WorkbenchError(f"ablation must be 'mean', 'patch' or 'none', got {mode!r}")
    n = len(task.positive) if n_examples is None else min(int(n_examples), len(task.positive))
    if n < 1:
        raise WorkbenchError("The ablation baseline needs at least one positive prompt.")
    pos, neg = task.positive[:n], task.negative[:n]
    sub = Task(task.name, pos, neg, task.targets[:n], task.metric)
    if mode == "patch" and not sub.paired_same_length:
        raise WorkbenchError("ablation='patch' needs each negative prompt to have the same token length "
                             "as its positive prompt; use ablation='mean'.")
    n_layers, n_heads, _ = model_shape(bridge)
    positions = _positions(sub)
    t0, c0 = time.time(), time.process_time()
    # clean run, collecting z (for the means) -- counted in the baseline's time
    z_pos = collect_z(bridge, pos, batch_size) if mode == "mean" else None
    clean = task_metric(sub, forward_logits_at(bridge, pos, positions, batch_size)).mean()
    negative = task_metric(sub, forward_logits_at(bridge, neg, positions, batch_size)).mean()
    if mode == "mean":
        _, lengths = pad_batch(pos)
        replacement = {l: per_position_mean(z_pos[l], lengths) for l in range(n_layers)}  # [T, H, e]
        del z_pos
    else:
        replacement = collect_z(bridge, neg, batch_size)  # [B, T, H, e]
    effect = np.zeros(n_layers * n_heads)
    current: dict = {}
    total = n_layers * n_heads
    for l in range(n_layers):
        for h in range(n_heads):
            def hook(z, hook=None, l=l, h=h):
                sl = current["slice"]
                T = z.shape[1]
                if mode == "mean":
                    z[:, :, h] = replacement[l][:T, h].to(z.dtype)
                else:
                    z[:, :, h] = replacement[l][sl, :T, h].to(z.dtype)
                return z

            logits = forward_logits_at(
                bridge, pos, positions, batch_size, fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)],
                on_batch=lambda sl: current.__setitem__("slice", sl))
            effect[l * n_heads + h] = clean - task_metric(sub, logits).mean()
            if progress:
                progress(l * n_heads + h + 1, total)
    seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
    gap = clean - negative
    norm = effect / gap if abs(gap) > 1e-12 else np.full_like(effect, np.nan)
    return AblationResult(effect, norm, float(clean), float(negative), seconds, mode,
                          n_forwards=total + 3, cpu_seconds=cpu_seconds)
