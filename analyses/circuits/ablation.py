"""Ablation baseline: one forward pass per head, the drop of the task metric -> reference circuit.

For every head (l, h) of every layer the positive prompts are run with that head's ``hook_z``
replaced by

- ``mean``: its per-position mean over the positive prompts (mean ablation, Wang et al. 2022), or
- ``patch``: its value on the paired negative prompt (activation patching; needs pairs of equal
  token length),

and ``effect = metric(clean) - metric(ablated)``, averaged over prompts (positive = the head helps).
``effect_norm = effect / (metric(clean positive) - metric(negative prompts))`` is the fraction of the
task behaviour the head carries; the reference circuit is ``effect_norm >= threshold``.

The forwards and hooks are the core's (:mod:`workbench.hooked`). The baseline collects its own
means (or patch sources) in a forward pass that is part of its time, rather than reading them from
the SAE path's store entry, so that its runtime never borrows the other method's extraction. The
same pass keeps the clean residual entering every block, and the forward for a head of layer ``l``
resumes from it at block ``l`` (the blocks below cannot see the change): exact, and 1.3-1.7x
faster than running every block on the built-in decoders (``benchmarks/bench_ablation_resume.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from workbench.errors import WorkbenchError
from workbench.hooked import (BatchHooks, block_hooks, collect, forward_logits_at, length_order, mean_ablation_hook,
                              model_shape, pad_right, patch_hook, per_position_mean)

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


def target_positions(task: Task) -> list[list[int]]:
    """The scored positions of each positive prompt."""
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
    resumed: bool = False  # each head's forward started at its layer from the clean residual


def _subtask(task: Task, mode: str, n_examples: int | None) -> Task:
    if mode not in {"mean", "patch"}:
        raise WorkbenchError(f"ablation must be 'mean', 'patch' or 'none', got {mode!r}")
    n = len(task.positive) if n_examples is None else min(int(n_examples), len(task.positive))
    if n < 1:
        raise WorkbenchError("The ablation baseline needs at least one positive prompt.")
    # prompts in length order (pairs and targets stay together): a batch then has few distinct
    # target positions to unembed and little padding; every statistic here is a mean over prompts
    order = length_order([len(s) for s in task.positive[:n]])
    sub = Task(task.name, [task.positive[i] for i in order], [task.negative[i] for i in order],
               [task.targets[i] for i in order], task.metric)
    if mode == "patch" and not sub.paired_same_length:
        raise WorkbenchError("ablation='patch' needs each negative prompt to have the same token length "
                             "as its positive prompt; use ablation='mean'.")
    return sub


def _replacements(bridge, sub: Task, mode: str, names: list[str], residual_names: list[str], batch_size: int
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per layer: the positives' per-position means ``[T, H, e]`` or the negatives' z ``[B, T, H, e]``;
    and the positives' clean ``hook_resid_pre`` ``[B, T, d]`` that each head's forward resumes from
    (empty when ``residual_names`` is). Mean ablation reads both from one forward of the positives."""
    if mode == "patch":
        residual = collect(bridge, sub.positive, residual_names, batch_size) if residual_names else {}
        return collect(bridge, sub.negative, names, batch_size), residual
    acts = collect(bridge, sub.positive, names + residual_names, batch_size)
    _, lengths = pad_right(sub.positive)
    return ({name: per_position_mean(acts.pop(name), lengths) for name in names},
            {name: acts.pop(name) for name in residual_names})


def _head_hooks(mode: str, name: str, head: int, replacement: torch.Tensor) -> BatchHooks:
    if mode == "mean":
        return [(name, mean_ablation_hook(head, replacement))]
    return lambda rows: [(name, patch_hook(head, replacement, rows))]


@torch.no_grad()
def ablation_effects(bridge, task: Task, mode: str = "mean", n_examples: int | None = None,
                     batch_size: int = 32, progress: Callable[[int, int], None] | None = None,
                     resume: bool = True) -> AblationResult:
    """Per-head ablation effect on the task metric (one forward of the positive prompts per head).

    ``resume`` (default): the forward for a head of layer ``l`` starts at block ``l`` from the
    positives' clean residual (``blocks.{l}.hook_resid_pre``, collected once): the blocks below
    cannot see the ablation, so the effects are those of full forwards exactly, with about half the
    blocks run on average (:func:`workbench.hooked.forward_logits_at`). ``resume=False`` runs
    every forward from the tokens (the benchmark's baseline). Its time counts the clean, negative
    and mean- (or patch-source-) collecting passes.
    """
    sub = _subtask(task, mode, n_examples)
    n_layers, n_heads, _ = model_shape(bridge)
    names = block_hooks("attn.hook_z", n_layers)
    positions = target_positions(sub)
    t0, c0 = time.time(), time.process_time()
    residual_names = block_hooks("hook_resid_pre", n_layers) if resume else []
    replacement, residual = _replacements(bridge, sub, mode, names, residual_names, batch_size)
    clean = task_metric(sub, forward_logits_at(bridge, sub.positive, positions, batch_size)).mean()
    negative = task_metric(sub, forward_logits_at(bridge, sub.negative, positions, batch_size)).mean()
    effect = np.zeros(n_layers * n_heads)
    for index in range(n_layers * n_heads):
        layer, head = divmod(index, n_heads)
        hooks = _head_hooks(mode, names[layer], head, replacement[names[layer]])
        start = (layer, residual[residual_names[layer]]) if resume else None
        logits = forward_logits_at(bridge, sub.positive, positions, batch_size, hooks=hooks, resume=start)
        effect[index] = clean - task_metric(sub, logits).mean()
        if progress:
            progress(index + 1, n_layers * n_heads)
    seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
    gap = clean - negative
    norm = effect / gap if abs(gap) > 1e-12 else np.full_like(effect, np.nan)
    return AblationResult(effect, norm, float(clean), float(negative), seconds, mode,
                          n_forwards=n_layers * n_heads + 3 + int(resume and mode == "patch"),
                          cpu_seconds=cpu_seconds, resumed=resume)
