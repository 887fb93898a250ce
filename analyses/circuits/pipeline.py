"""SAE circuit finding end to end, with the ablation baseline and ground truth when there is one.

:func:`find_circuit` is the back-end of the ``circuits`` analysis and usable directly::

    from workbench.models import load_model
    from analyses.circuits import find_circuit
    m = load_model("attn-only-induction")
    table, summary = find_circuit(m.bridge, m.tokenizer, model_name=m.name, task="induction")

Method (O'Neill & Bui, arXiv 2405.12522; METHODS.md section 5): per-head outputs in the residual
basis averaged over positions for ``n_examples`` positive and ``n_examples`` negative prompts; for
each trial seed, one SAE (``n_features`` features, L1 ``lambda``, Adam ``lr``, ``n_epochs`` full-batch
epochs) on ``n_sae_examples`` examples drawn from the mixed set; top-1 codes for every
(example, head); node score = softmax over heads of #codes seen on positives and never on negatives;
edge-derived node score from code co-occurrences. Trials share the activations (as the official
code, which loads them from disk) and differ in the SAE's training examples and initialisation.
Standard deviations over trials are population sds (``np.std``), as the official code reports.

Runtimes: ``sae_run`` = head-output extraction + one trial (SAE training, codes, scores); the
ablation baseline's time includes its clean, negative and mean-collecting passes. A warm-up pass on
two prompts runs first and is counted in neither. ``runtimes_s.cpu`` has the process CPU times.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from workbench.analysis import Param, defaults_of, validate_params
from workbench.errors import WorkbenchError

from .ablation import ablation_effects
from .ground_truth import architecture_of, match_ground_truth
from .hooked import head_outputs, model_shape
from .sae import train_sae
from .scoring import circuit_scores, edge_node_scores, node_scores, unique_cooccurrences
from .tasks import DEFAULT_LAMBDA, TASKS, make_task

PARAMS = {
    "task": Param("ioi", f"one of {', '.join(TASKS)} (csv needs task_file)", choices=TASKS),
    "task_file": Param("", "CSV with columns positive, negative, answer [, wrong]: one prompt pair per row"),
    "n_examples": Param(250, "positive prompts (and as many negative ones); the paper uses 250", min=2),
    "position": Param("mean", "'mean' over positions (paper) or 'final' position only", choices=("mean", "final")),
    "n_features": Param(200, "SAE dictionary size (paper: 200)", min=2),
    "lambda": Param(None, "SAE L1 coefficient; default (null) 0.02 (0.05 for docstring)", type=float, min=0),
    "n_epochs": Param(500, "full-batch Adam epochs (paper: 500)", min=1),
    "lr": Param(1e-3, "Adam learning rate (paper: 1e-3)", min=0, closed="neither"),
    "n_sae_examples": Param(10, "examples the SAE trains on, drawn from positives + negatives (paper: 10; at most "
                            "2 * n_examples)", min=1),
    "seeds": Param(5, "number of trials (seeds seed, seed+1, ...): mean and sd over trials", min=1),
    "edges": Param(True, "also compute the edge (code co-occurrence) score"),
    "ablation": Param("mean", "'mean' (per-position mean ablation), 'patch' (from the paired negative) or 'none'",
                      choices=("mean", "patch", "none")),
    "ablation_examples": Param(None, "positive prompts used by the ablation baseline (default: n_examples)", type=int,
                               min=1),
    "circuit_threshold": Param(0.02, "reference circuit = heads whose ablation removes >= this fraction of the "
                               "clean-minus-negative metric gap", min=0, max=1),
    "period": Param(50, "induction task: length of the repeated random sequence", min=2),
    "prepend_bos": Param(True, "prepend the tokenizer's BOS token to every prompt"),
    "batch_size": Param(32, "prompts per forward pass", min=1),
    "attention_scores": Param(None, "add previous-token / induction attention scores (default: induction task only)",
                              type=bool),
}
DEFAULTS = defaults_of(PARAMS)


def check_params(p: dict) -> None:
    """The constraint between parameters (each one is checked by its :class:`Param`)."""
    if p["n_sae_examples"] > 2 * p["n_examples"]:
        raise WorkbenchError(f"circuits: n_sae_examples ({p['n_sae_examples']}) cannot exceed the 2 * n_examples "
                             f"= {2 * p['n_examples']} prompts available.")


def _sd(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.std(vals)) if vals else None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def find_circuit(bridge, tokenizer, *, model_name: str | None = None, hf_config=None, seed: int = 0,
                 progress: Callable[[int, int, str], None] | None = None, **params) -> tuple[pd.DataFrame, dict]:
    """Run the SAE method (several seeds), the ablation baseline and scoring.

    Returns ``(table, summary)``: one row per (layer, head) with ``sae_score`` (mean over trials of
    the softmax node score) and ``sae_score_sd``, ``sae_unique`` (mean raw count), ``edge_score``,
    ``ablation_effect`` (+ normalised), ``in_ablation_circuit``, ``ground_truth``, ranks; the
    summary holds per-seed and mean +- sd ROC-AUCs, precision/recall, runtimes, rank correlation.
    """
    p = validate_params("circuits", PARAMS, params)
    check_params(p)
    say = progress or (lambda done, total, msg="": None)
    n_layers, n_heads, d_model = model_shape(bridge)
    n_total = n_layers * n_heads
    task_name = "csv" if p["task_file"] else str(p["task"])
    lam = float(p["lambda"]) if p["lambda"] is not None else DEFAULT_LAMBDA.get(task_name, 0.02)
    n = int(p["n_examples"])
    task = make_task(task_name, tokenizer, n, seed=seed, task_file=p["task_file"] or None,
                     period=int(p["period"]), prepend_bos=bool(p["prepend_bos"]))
    n_pos, n_neg = len(task.positive), len(task.negative)
    if n_pos < 1 or n_neg < 1:
        raise WorkbenchError("circuits needs at least one positive and one negative prompt.")
    max_len = int(getattr(bridge.cfg, "n_ctx", 10**9) or 10**9)
    longest = max(len(s) for s in task.positive + task.negative)
    if longest > max_len:
        raise WorkbenchError(f"A prompt has {longest} tokens but the model takes {max_len}; use shorter prompts "
                             f"(e.g. a smaller period).")

    # ---- SAE method -------------------------------------------------------------------------
    seqs = task.positive + task.negative
    # warm-up pass on two prompts: one-time lazy initialisation is charged to neither method
    head_outputs(bridge, seqs[:2], position=p["position"], batch_size=2)
    t0, c0 = time.time(), time.process_time()
    X = head_outputs(bridge, seqs, position=p["position"], batch_size=int(p["batch_size"]),
                     progress=lambda d, t: say(d, t, "head outputs"))
    extraction_s, extraction_cpu = time.time() - t0, time.process_time() - c0
    is_pos = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    seeds = [seed + i for i in range(int(p["seeds"]))]
    node, raw, edge, trial_s, trial_cpu, sae_loss = [], [], [], [], [], []
    for i, s in enumerate(seeds):
        say(i, len(seeds), f"SAE trial {i + 1}/{len(seeds)}")
        t1, c1 = time.time(), time.process_time()
        gen = torch.Generator().manual_seed(int(s))
        perm = torch.randperm(X.shape[0], generator=gen)
        train = X[perm[: int(p["n_sae_examples"])]]
        sae, loss = train_sae(train, n_features=int(p["n_features"]), lam=lam, n_epochs=int(p["n_epochs"]),
                              lr=float(p["lr"]), seed=int(s))
        codes = sae.codes(X).numpy()  # [n_examples, n_heads_total]
        score, count = node_scores(codes, is_pos)
        node.append(score); raw.append(count); sae_loss.append(loss)
        if p["edges"]:
            cooc = unique_cooccurrences(codes, is_pos, int(p["n_features"]))
            edge.append(edge_node_scores(cooc, n_heads))
        trial_s.append(time.time() - t1)
        trial_cpu.append(time.process_time() - c1)
    node_arr, raw_arr = np.stack(node), np.stack(raw)
    sae_run_s = extraction_s + float(np.mean(trial_s))
    sae_run_cpu = extraction_cpu + float(np.mean(trial_cpu))

    # ---- ablation baseline ------------------------------------------------------------------
    abl = None
    if p["ablation"] != "none":
        abl = ablation_effects(bridge, task, mode=p["ablation"], n_examples=p["ablation_examples"],
                               batch_size=int(p["batch_size"]),
                               progress=lambda d, t: say(d, t, "ablating heads"))

    # ---- ground truth / references ----------------------------------------------------------
    arch = architecture_of(bridge, hf_config)
    gt = match_ground_truth(task.name, model_name, arch)
    references: dict[str, np.ndarray] = {}
    if abl is not None:
        references["ablation"] = np.nan_to_num(abl.effect_norm, nan=0.0) >= float(p["circuit_threshold"])
    if gt is not None:
        references["ground_truth"] = gt["mask"]

    attn = None
    want_attn = p["attention_scores"] if p["attention_scores"] is not None else task.name == "induction"
    attn_s = None
    if want_attn:
        from .attention import attention_scores

        t2 = time.time()
        attn = attention_scores(bridge, n_examples=min(100, n), period=int(p["period"]), seed=seed,
                                tokenizer=tokenizer)
        attn_s = time.time() - t2

    # ---- table ------------------------------------------------------------------------------
    layer = np.repeat(np.arange(n_layers), n_heads)
    head = np.tile(np.arange(n_heads), n_layers)
    table = pd.DataFrame({
        "layer": layer, "head": head, "label": [f"L{l}H{h}" for l, h in zip(layer, head)],
        "sae_score": node_arr.mean(0), "sae_score_sd": node_arr.std(0),
        "sae_unique": raw_arr.mean(0), "sae_unique_sd": raw_arr.std(0),
    })
    if edge:
        edge_arr = np.stack(edge)
        table["edge_score"] = edge_arr.mean(0)
        table["edge_score_sd"] = edge_arr.std(0)
    if abl is not None:
        table["ablation_effect"] = abl.effect
        table["ablation_effect_norm"] = abl.effect_norm
        table["in_ablation_circuit"] = references["ablation"]
    table["ground_truth"] = gt["mask"] if gt is not None else None
    if attn is not None:
        table["prev_token_score"] = attn["prev_token_score"].to_numpy()
        table["induction_score"] = attn["induction_score"].to_numpy()
        table["current_token_score"] = attn["current_token_score"].to_numpy()
    table["sae_rank"] = table["sae_score"].rank(ascending=False, method="min").astype(int)
    if abl is not None:
        table["ablation_rank"] = table["ablation_effect"].rank(ascending=False, method="min").astype(int)

    # ---- summary ----------------------------------------------------------------------------
    summary: dict = {
        "task": task.name, "task_description": task.description, "metric": task.metric,
        "task_notes": task.notes, "n_positive": n_pos, "n_negative": n_neg,
        "model_shape": {"n_layers": n_layers, "n_heads": n_heads, "d_model": d_model},
        "architecture": arch, "lambda": lam, "seeds": seeds,
        "sae_final_loss": sae_loss,
        "ground_truth": None if gt is None else {
            "file": gt["file"], "source": gt.get("source"), "matched_by": gt["matched_by"],
            "n_heads": int(gt["mask"].sum())},
    }
    for ref_name, mask in references.items():
        per_seed = [circuit_scores(mask, node_arr[i]) for i in range(len(seeds))]
        aucs = [r.get("roc_auc") for r in per_seed]
        block = {
            "n_reference_heads": int(mask.sum()),
            "reference_heads": [f"L{l}H{h}" for l, h in zip(layer[mask], head[mask])],
            "node_roc_auc_per_seed": aucs, "node_roc_auc_mean": _mean(aucs), "node_roc_auc_sd": _sd(aucs),
            "node_roc_auc_of_mean_score": circuit_scores(mask, node_arr.mean(0)).get("roc_auc"),
        }
        for key in ("tpr_tnr_hmean", "precision", "recall", "f1", "precision_at_k", "recall_at_k"):
            vals = [r.get(key) for r in per_seed]
            block[f"node_{key}_mean"] = _mean(vals)
            block[f"node_{key}_sd"] = _sd(vals)
        if edge:
            e_aucs = [circuit_scores(mask, e).get("roc_auc") for e in edge]
            block.update({"edge_roc_auc_per_seed": e_aucs, "edge_roc_auc_mean": _mean(e_aucs),
                          "edge_roc_auc_sd": _sd(e_aucs)})
        summary[f"vs_{ref_name}"] = block
    if abl is not None:
        from scipy.stats import spearmanr

        constant = np.ptp(table["sae_score"]) == 0 or np.ptp(table["ablation_effect"]) == 0
        rho = np.nan if constant else spearmanr(table["sae_score"], table["ablation_effect"]).statistic
        summary["ablation"] = {
            "mode": abl.mode, "clean_metric": abl.clean_metric, "negative_metric": abl.negative_metric,
            "circuit_threshold": float(p["circuit_threshold"]), "n_forwards": abl.n_forwards,
            "n_examples": int(p["ablation_examples"] or n_pos),
        }
        summary["spearman_sae_vs_ablation"] = None if np.isnan(rho) else float(rho)
        summary["top_heads_ablation"] = table.nlargest(10, "ablation_effect")["label"].tolist()
    summary["top_heads_sae"] = table.nlargest(10, "sae_score")["label"].tolist()
    summary["runtimes_s"] = {
        "sae_extraction": round(extraction_s, 3),
        "sae_trial_mean": round(float(np.mean(trial_s)), 3),
        "sae_trials": [round(t, 3) for t in trial_s],
        "sae_run": round(sae_run_s, 3),
        "ablation": None if abl is None else round(abl.seconds, 3),
        "ablation_over_sae": None if abl is None else round(abl.seconds / sae_run_s, 2),
        "attention_scores": None if attn_s is None else round(attn_s, 3),
        # process CPU time: robust to other jobs on a shared machine (single-threaded runs)
        "cpu": {
            "sae_extraction": round(extraction_cpu, 3),
            "sae_trial_mean": round(float(np.mean(trial_cpu)), 3),
            "sae_run": round(sae_run_cpu, 3),
            "ablation": None if abl is None else round(abl.cpu_seconds, 3),
            "ablation_over_sae": None if abl is None else round(abl.cpu_seconds / max(sae_run_cpu, 1e-9), 2),
            "threads": torch.get_num_threads(),
        },
    }
    say(1, 1, "done")
    return table, summary
