"""The SAE method's run: per-head outputs read through the store, then one SAE trial per seed.

Per trial (docs/methods.md, "SAE circuits"): one SAE (``n_features`` features, L1 ``lambda``, Adam
``lr``, ``n_epochs`` full-batch epochs) on ``n_sae_examples`` examples drawn from the mixed
positive + negative set; top-1 codes for every (example, head); node score = softmax over heads of
#codes seen on positives and never on negatives; edge-derived node score from code co-occurrences.
Trials share the activations (as the official code, which loads them from disk) and differ in the
SAE's training examples and initialisation.

Timing: ``read_s`` is the store read (the extraction itself when the entry is missing, then the
pooling and the projection by ``W_O``), ``cache_hit`` says which it was; each trial is timed on its
own. A warm-up forward of two prompts runs first so that one-time lazy initialisation is charged
to neither method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from workbench.hooked import collect

from .heads import Reader, read_head_outputs
from .sae import train_sae
from .scoring import edge_node_scores, node_scores, unique_cooccurrences
from .tasks import Task


@dataclass
class SAERun:
    """Scores of every trial (rows = seeds, columns = heads layer-major) and the timings."""

    seeds: list[int]
    node: np.ndarray  # float64 [n_seeds, n_heads_total]: softmax node scores
    raw: np.ndarray  # int64 [n_seeds, n_heads_total]: codes unique to positives
    edge: list[np.ndarray] = field(default_factory=list)  # per seed float64 [n_heads_total]
    losses: list[float] = field(default_factory=list)
    read_s: float = 0.0
    read_cpu: float = 0.0
    cache_hit: bool = False
    trial_s: list[float] = field(default_factory=list)
    trial_cpu: list[float] = field(default_factory=list)

    @property
    def run_s(self) -> float:
        """One SAE run: the store read + one trial (mean over trials)."""
        return self.read_s + float(np.mean(self.trial_s))

    @property
    def run_cpu(self) -> float:
        return self.read_cpu + float(np.mean(self.trial_cpu))


def sae_trial(X: torch.Tensor, is_pos: np.ndarray, seed: int, p: dict, lam: float,
              n_heads_per_layer: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
    """One trial: (node score, raw unique count, edge node score or None, final SAE loss)."""
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(X.shape[0], generator=gen)
    train = X[perm[: int(p["n_sae_examples"])]].to(device)  # on a GPU model the SAE trains on its device
    sae, loss = train_sae(train, n_features=int(p["n_features"]), lam=lam, n_epochs=int(p["n_epochs"]),
                          lr=float(p["lr"]), seed=int(seed))
    codes = sae.codes(X.to(train.device)).cpu().numpy()  # [n_examples, n_heads_total]
    score, count = node_scores(codes, is_pos)
    edge = None
    if p["edges"]:
        edge = edge_node_scores(unique_cooccurrences(codes, is_pos, int(p["n_features"])), n_heads_per_layer)
    return score, count, edge, loss


def run_sae_method(model, task: Task, read: Reader, p: dict, lam: float, seed: int,
                   say: Callable[..., None]) -> SAERun:
    """Read the per-head outputs through the store (timed, hit recorded), then one trial per seed."""
    seqs = task.positive + task.negative
    collect(model.bridge, seqs[:2], model.hook_names("attn_z"), batch_size=2)  # warm-up, charged to neither
    say(0, 1, "head outputs")
    t0, c0 = time.time(), time.process_time()
    X, hit = read_head_outputs(model, task, read, position=p["position"], batch_size=int(p["batch_size"]))
    run = SAERun(seeds=[seed + i for i in range(int(p["seeds"]))], node=np.empty(0), raw=np.empty(0),
                 read_s=time.time() - t0, read_cpu=time.process_time() - c0, cache_hit=hit)
    is_pos = np.r_[np.ones(len(task.positive), bool), np.zeros(len(task.negative), bool)]
    n_heads = int(model.bridge.cfg.n_heads)
    node, raw = [], []
    for i, s in enumerate(run.seeds):
        say(i, len(run.seeds), f"SAE trial {i + 1}/{len(run.seeds)}")
        t1, c1 = time.time(), time.process_time()
        score, count, edge, loss = sae_trial(X, is_pos, s, p, lam, n_heads, device=str(model.input_device))
        node.append(score); raw.append(count); run.losses.append(loss)
        if edge is not None:
            run.edge.append(edge)
        run.trial_s.append(time.time() - t1)
        run.trial_cpu.append(time.process_time() - c1)
    run.node, run.raw = np.stack(node), np.stack(raw)
    return run
