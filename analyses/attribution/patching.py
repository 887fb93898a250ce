"""Activation patching and attribution patching, on one grid of patch points.

docs/methods.md, "Attention, DLA and patching". The grid (blocks ``l`` of ``layers``):

- ``resid_pre``: ``blocks.{l}.hook_resid_pre`` (the residual stream entering block l), per position;
- ``attn_out``: ``blocks.{l}.hook_attn_out``, per position;
- ``mlp_out``: ``blocks.{l}.hook_mlp_out``, all positions at once;
- ``z``: ``blocks.{l}.attn.hook_z`` of each head ``h`` (its output before ``W_O``), all positions at once;

``positions=each`` / ``all`` overrides the default granularity (``auto``). Each cell is scored by the
normalised metric ``(LD_patched - LD_corr) / (LD_clean - LD_corr)`` (0 = corrupted, 1 = clean; means
over the prompts before the ratio).

- **Activation patching** (exact; the reference is TransformerLens ``patching``): the corrupted
  prompts run with the cell's activation replaced by its value on the clean prompt
  (:func:`workbench.hooked.patch_sweep`): one forward per cell and prompt.
- **Attribution patching** (Nanda 2023): ``LD_patched - LD_corr ≈ Σ (a_clean - a_corr) · ∂LD/∂a``,
  the gradient taken on the corrupted run and the sum over the cell's positions, (head) and
  features: one clean forward, one corrupted forward and one backward for the whole grid
  (:func:`workbench.hooked.activation_gradients`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.hooked import Patch, activation_gradients, collect_and_score, patch_sweep
from workbench.params import Param
from workbench.tasks import Task

from .inputs import block_list, check_pairs, layers_param, logit_diff_metric, normalised, position_labels

POINTS = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "z": "attn.hook_z"}
#: the granularity of positions=auto
PER_POSITION = {"resid_pre": True, "attn_out": True, "mlp_out": False, "z": False}

PATCH_PARAMS = {
    "patch": Param("z", "what is patched: resid_pre (the residual stream entering each block), attn_out, mlp_out, "
                        "or z (each head's output before W_O)", choices=tuple(POINTS)),
    "positions": Param("auto", "each: one cell per position; all: every position at once; auto: each for resid_pre "
                               "and attn_out, all for mlp_out and z", choices=("auto", "each", "all")),
    "layers": layers_param("patch"),
}


@dataclass
class Grid:
    """The cells of one patching grid: a :class:`Patch` each, and their table columns."""

    point: str
    patches: list[Patch]
    frame: pd.DataFrame  # one row per cell: point, layer, head (-1: none), position (-1: all), token, label

    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys(p.hook for p in self.patches))


def per_position(params: dict) -> bool:
    return PER_POSITION[params["patch"]] if params["positions"] == "auto" else params["positions"] == "each"


def make_grid(model, task: Task, params: dict) -> Grid:
    """The grid of ``params`` (patch, positions, layers) on ``task``'s prompts, pairs checked first."""
    each = per_position(params)
    check_pairs(task, each)
    point = params["patch"]
    heads = range(model.n_heads) if point == "z" else [None]
    positions = list(range(len(task.positive[0]))) if each else [None]
    labels = position_labels(model.tokenizer, task.positive[0]) if each else []
    patches, rows = [], []
    for layer in block_list(params["layers"], model):
        hook = f"blocks.{layer}.{POINTS[point]}"
        for head in heads:
            for position in positions:
                patches.append(Patch(hook, position, head))
                name = f"L{layer}" + (f"H{head}" if head is not None else f" {point}")
                rows.append({"point": point, "layer": layer, "head": -1 if head is None else head,
                             "position": -1 if position is None else position,
                             "token": "" if position is None else labels[position],
                             "label": name + ("" if position is None else f" @{labels[position]}")})
    return Grid(point, patches, pd.DataFrame(rows))


@dataclass
class Scores:
    """A grid's scores: normalised effect per cell, the clean and corrupted metric, cost."""

    effect: np.ndarray  # float64 [cells]
    clean: float
    corrupted: float
    seconds: float
    n_forwards: int
    n_backwards: int = 0


def exact_patching(bridge, task: Task, grid: Grid, batch_size: int, progress=None) -> Scores:
    """Activation patching of every cell (clean activations from one clean forward)."""
    metric = logit_diff_metric(task)
    t0 = time.time()
    sources, clean = collect_and_score(bridge, task.positive, grid.hooks, metric, batch_size)
    corrupted = collect_and_score(bridge, task.negative, [], metric, batch_size)[1]
    patched = patch_sweep(bridge, task.negative, sources, grid.patches, metric, batch_size, progress=progress)
    seconds = time.time() - t0
    effect = normalised(patched.mean(1), clean.mean(), corrupted.mean())
    return Scores(effect, float(clean.mean()), float(corrupted.mean()), seconds, len(grid.patches) + 2)


def cell_estimates(grid: Grid, delta: dict[str, torch.Tensor], grad: dict[str, torch.Tensor]) -> np.ndarray:
    """First-order estimate of ``LD_patched - LD_corr`` per cell, mean over prompts, float64 [cells]:
    ``Σ delta · grad`` over the cell's part (features summed; positions too for an all-positions cell)."""
    per_hook = {h: (delta[h].double() * grad[h].double()).sum(-1) for h in grid.hooks}  # [N, T(, H)]
    out = np.empty(len(grid.patches))
    for k, patch in enumerate(grid.patches):
        value = per_hook[patch.hook]
        value = value.sum(1) if patch.position is None else value[:, patch.position]
        value = value if patch.head is None else value[:, patch.head]
        out[k] = float(value.mean())
    return out


def attribution_patching(bridge, task: Task, grid: Grid, batch_size: int) -> Scores:
    """Attribution patching of every cell: one clean forward, one corrupted forward + backward."""
    metric = logit_diff_metric(task)
    t0 = time.time()
    clean_acts, clean = collect_and_score(bridge, task.positive, grid.hooks, metric, batch_size)
    corrupted_acts, grads, corrupted = activation_gradients(bridge, task.negative, grid.hooks, metric, batch_size)
    delta = {h: clean_acts[h] - corrupted_acts[h] for h in grid.hooks}
    estimate = cell_estimates(grid, delta, grads)
    seconds = time.time() - t0
    effect = normalised(corrupted.mean() + estimate, clean.mean(), corrupted.mean())
    return Scores(effect, float(clean.mean()), float(corrupted.mean()), seconds, 2, 1)


def top_cells(frame: pd.DataFrame, column: str, k: int = 10) -> list[str]:
    """Labels of the ``k`` cells with the largest value of ``column``."""
    return frame.nlargest(k, column)["label"].tolist()


def scores_summary(scores: Scores, grid: Grid, task: Task, metric: str) -> dict:
    return {"task": task.name, "n_prompts": len(task.positive), "patch": grid.point, "n_cells": len(grid.patches),
            "metric": metric, "clean_metric": scores.clean, "corrupted_metric": scores.corrupted,
            "n_forwards": scores.n_forwards, "seconds": round(scores.seconds, 3)}


def comparison(exact: Scores, approx: Scores) -> dict:
    """Pearson and Spearman correlation between the exact and approximate grids, and the speed ratio."""
    from scipy.stats import pearsonr, spearmanr

    same = len(exact.effect) > 1 and np.ptp(exact.effect) > 0 and np.ptp(approx.effect) > 0
    return {"pearson": float(pearsonr(exact.effect, approx.effect)[0]) if same else None,
            "spearman": float(spearmanr(exact.effect, approx.effect)[0]) if same else None,
            "seconds_exact": round(exact.seconds, 3), "seconds_attribution": round(approx.seconds, 3),
            "speedup": exact.seconds / approx.seconds if approx.seconds > 0 else None,
            "n_forwards_exact": exact.n_forwards}
