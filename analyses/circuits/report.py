"""The circuits table (one row per head) and summary (scores against each reference, runtimes).

Standard deviations over trials are population sds (``np.std``), as the official code reports.

Runtimes (``summary["runtimes_s"]``): ``sae_run`` = the SAE path's store read
(``sae_extraction``: the hooked forward and the write of the entry on a cold store, a memory-mapped
read on a hit; then pooling and ``W_O``) + one trial (SAE training, codes, scores);
``sae_extraction_cache_hit`` says which the read was. ``ablation`` counts the baseline's clean,
negative and mean-collecting passes. ``ablation_over_sae`` compares the two methods honestly only
when ``sae_extraction_cache_hit`` is False: on a hit the SAE run skips its forward pass and the
ratio overstates its advantage. For a comparison use a fresh store (``find_circuit(...,
store=ActivationStore(root=empty_folder))``, as ``benchmarks/bench_circuits.py`` does) or a store
without this task's prompts. ``cpu`` has the process CPU times (robust to other jobs on a shared
machine with single-threaded runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .ablation import AblationResult
from .sae_method import SAERun
from .scoring import agreement, circuit_scores, seed_stability
from .tasks import Task


@dataclass
class AttentionRun:
    table: pd.DataFrame
    seconds: float
    cache_hit: bool


def _sd(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.std(vals)) if vals else None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def reference_circuits(abl: AblationResult | None, gt: dict | None, threshold: float) -> dict[str, np.ndarray]:
    """Reference masks [n_heads_total]: the ablation-established circuit and the ground truth."""
    references: dict[str, np.ndarray] = {}
    if abl is not None:
        references["ablation"] = np.nan_to_num(abl.effect_norm, nan=0.0) >= float(threshold)
    if gt is not None:
        references["ground_truth"] = gt["mask"]
    return references


def circuit_table(n_layers: int, n_heads: int, sae: SAERun, abl: AblationResult | None,
                  references: dict[str, np.ndarray], gt: dict | None, attn: AttentionRun | None) -> pd.DataFrame:
    layer = np.repeat(np.arange(n_layers), n_heads)
    head = np.tile(np.arange(n_heads), n_layers)
    table = pd.DataFrame({
        "layer": layer, "head": head, "label": [f"L{l}H{h}" for l, h in zip(layer, head)],
        "sae_score": sae.node.mean(0), "sae_score_sd": sae.node.std(0),
        "sae_unique": sae.raw.mean(0), "sae_unique_sd": sae.raw.std(0),
    })
    if sae.edge:
        edge_arr = np.stack(sae.edge)
        table["edge_score"] = edge_arr.mean(0)
        table["edge_score_sd"] = edge_arr.std(0)
    if abl is not None:
        table["ablation_effect"] = abl.effect
        table["ablation_effect_norm"] = abl.effect_norm
        table["in_ablation_circuit"] = references["ablation"]
    table["ground_truth"] = gt["mask"] if gt is not None else None
    if attn is not None:
        for column in ("prev_token_score", "induction_score", "current_token_score"):
            table[column] = attn.table[column].to_numpy()
    table["sae_rank"] = table["sae_score"].rank(ascending=False, method="min").astype(int)
    if abl is not None:
        table["ablation_rank"] = table["ablation_effect"].rank(ascending=False, method="min").astype(int)
    return table


def reference_block(mask: np.ndarray, sae: SAERun, labels: list[str]) -> dict:
    """Per-seed and mean +- sd scores of the SAE's node (and edge) scores against one reference."""
    per_seed = [circuit_scores(mask, scores) for scores in sae.node]
    aucs = [r.get("roc_auc") for r in per_seed]
    block = {
        "n_reference_heads": int(mask.sum()),
        "reference_heads": [label for label, m in zip(labels, mask) if m],
        "node_roc_auc_per_seed": aucs, "node_roc_auc_mean": _mean(aucs), "node_roc_auc_sd": _sd(aucs),
        "node_roc_auc_of_mean_score": circuit_scores(mask, sae.node.mean(0)).get("roc_auc"),
    }
    for key in ("tpr_tnr_hmean", "precision", "recall", "f1", "precision_at_k", "recall_at_k"):
        vals = [r.get(key) for r in per_seed]
        block[f"node_{key}_mean"] = _mean(vals)
        block[f"node_{key}_sd"] = _sd(vals)
    if sae.edge:
        e_aucs = [circuit_scores(mask, e).get("roc_auc") for e in sae.edge]
        block.update({"edge_roc_auc_per_seed": e_aucs, "edge_roc_auc_mean": _mean(e_aucs),
                      "edge_roc_auc_sd": _sd(e_aucs)})
    return block


def ablation_summary(table: pd.DataFrame, abl: AblationResult, sae: SAERun, p: dict, n_pos: int) -> dict:
    """The baseline's settings and how the SAE ranking agrees with its per-head effects: Spearman
    and top-10 overlap for the mean score over seeds and for each seed."""
    mean_score = agreement(table["sae_score"].to_numpy(), abl.effect)
    per_seed = [agreement(scores, abl.effect) for scores in sae.node]
    return {
        "ablation": {
            "mode": abl.mode, "clean_metric": abl.clean_metric, "negative_metric": abl.negative_metric,
            "circuit_threshold": float(p["circuit_threshold"]), "n_forwards": abl.n_forwards,
            "n_examples": int(p["ablation_examples"] or n_pos),
        },
        "spearman_sae_vs_ablation": mean_score["spearman"],
        "spearman_sae_vs_ablation_per_seed": [a["spearman"] for a in per_seed],
        "top10_shared_sae_vs_ablation": mean_score["top_k_shared"],
        "top10_shared_sae_vs_ablation_per_seed": [a["top_k_shared"] for a in per_seed],
        "top_heads_ablation": table.nlargest(10, "ablation_effect")["label"].tolist(),
    }


def runtimes(sae: SAERun, abl: AblationResult | None, attn: AttentionRun | None) -> dict:
    """``summary["runtimes_s"]`` (see the module docstring for how to compare them)."""
    run_s, run_cpu = sae.run_s, sae.run_cpu
    return {
        "sae_extraction": round(sae.read_s, 3),
        "sae_extraction_cache_hit": bool(sae.cache_hit),
        "sae_trial_mean": round(float(np.mean(sae.trial_s)), 3),
        "sae_trials": [round(t, 3) for t in sae.trial_s],
        "sae_run": round(run_s, 3),
        "ablation": None if abl is None else round(abl.seconds, 3),
        "ablation_over_sae": None if abl is None else round(abl.seconds / run_s, 2),
        "attention_scores": None if attn is None else round(attn.seconds, 3),
        "attention_scores_cache_hit": None if attn is None else bool(attn.cache_hit),
        "cpu": {
            "sae_extraction": round(sae.read_cpu, 3),
            "sae_trial_mean": round(float(np.mean(sae.trial_cpu)), 3),
            "sae_run": round(run_cpu, 3),
            "ablation": None if abl is None else round(abl.cpu_seconds, 3),
            "ablation_over_sae": None if abl is None else round(abl.cpu_seconds / max(run_cpu, 1e-9), 2),
            "threads": torch.get_num_threads(),
        },
    }


def circuit_summary(task: Task, shape: tuple[int, int, int], arch: dict, lam: float, p: dict, sae: SAERun,
                    abl: AblationResult | None, gt: dict | None, references: dict[str, np.ndarray],
                    table: pd.DataFrame, attn: AttentionRun | None) -> dict:
    n_layers, n_heads, d_model = shape
    summary: dict = {
        "task": task.name, "task_description": task.description, "metric": task.metric,
        "task_notes": task.notes, "n_positive": len(task.positive), "n_negative": len(task.negative),
        "model_shape": {"n_layers": n_layers, "n_heads": n_heads, "d_model": d_model},
        "architecture": arch, "lambda": lam, "seeds": sae.seeds,
        "sae_final_loss": sae.losses,
        "ground_truth": None if gt is None else {
            "file": gt["file"], "source": gt.get("source"), "matched_by": gt["matched_by"],
            "n_heads": int(gt["mask"].sum())},
    }
    labels = table["label"].tolist()
    for ref_name, mask in references.items():
        summary[f"vs_{ref_name}"] = reference_block(mask, sae, labels)
    if abl is not None:
        summary.update(ablation_summary(table, abl, sae, p, len(task.positive)))
    summary["top_heads_sae"] = table.nlargest(10, "sae_score")["label"].tolist()
    # how much the SAE's ranking moves from one trial seed to the next (None for one seed)
    summary["seed_stability"] = seed_stability(sae.node)
    summary["runtimes_s"] = runtimes(sae, abl, attn)
    return summary


def agreement_sentence(summary: dict) -> str:
    """One line on how the SAE ranking agrees with the ablation baseline and how stable it is from
    seed to seed (empty when the run had neither)."""
    parts = []
    if summary.get("top10_shared_sae_vs_ablation") is not None:
        rho = summary.get("spearman_sae_vs_ablation")
        baseline = "activation patching" if summary["ablation"]["mode"] == "patch" else "mean ablation"
        parts.append(f"SAE top 10 vs {baseline} top 10: {summary['top10_shared_sae_vs_ablation']}/10 heads shared"
                     + (f", Spearman {rho:.2f} over all heads" if rho is not None else ""))
    stable = summary.get("seed_stability")
    if stable:
        pairs = f"{stable['n_pairs']} pair{'s' if stable['n_pairs'] != 1 else ''}"
        parts.append(f"seed to seed: {stable['top_k_shared_mean']:.1f}/10 top heads shared on average "
                     f"(least {stable['top_k_shared_min']}, {pairs})"
                     + (f", Spearman {stable['spearman_mean']:.2f}" if stable["spearman_mean"] is not None else ""))
    return "; ".join(parts) + ("." if parts else "")
