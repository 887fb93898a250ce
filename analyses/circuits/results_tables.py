"""The README's circuits tables: the SAE method against ablation on the project's induction model,
and on smollm2-135m with IOI prompts."""

from __future__ import annotations

from workbench.reproduce import ReadmeTable, fmt, md_table


def _pm(summary_block, key):
    return f"{fmt(summary_block[key + '_mean'])} ± {fmt(summary_block[key + '_sd'])}"


def _runtime_cell(rt) -> str:
    """SAE run / ablation run and their ratio; a run whose SAE activations came from a warm store
    (no forward pass: not a like-for-like ratio) says so."""
    warm = " (SAE activations from the store's cache)" if rt.get("sae_extraction_cache_hit") else ""
    return (f"{fmt(rt['sae_run'], 1)} s / {fmt(rt['ablation'], 1)} s ({fmt(rt['ablation_over_sae'], 1)}× wall, "
            f"{fmt(rt['cpu']['ablation_over_sae'], 1)}× CPU){warm}")


def _stability_cell(stable) -> str:
    if not stable:
        return ""
    return (f"{fmt(stable['top_k_shared_mean'], 1)} ({stable['top_k_shared_min']}) / "
            f"{fmt(stable['spearman_mean'], 2)}")


def render_induction(results) -> str:
    rows = []
    for job, label in (("threshold-0.02", "effect > 0.02 of the gap"), ("threshold-0.05", "effect > 0.05 of the gap")):
        s = results[job].summary
        v = s["vs_ablation"]
        rt = s["runtimes_s"]
        rows.append([f"reference: {label} ({v['n_reference_heads']} heads: {', '.join(v['reference_heads'])})",
                     f"**{_pm(v, 'node_roc_auc')}** ({', '.join(fmt(x) for x in v['node_roc_auc_per_seed'])})",
                     _pm(v, "edge_roc_auc") if "edge_roc_auc_mean" in v else "",
                     _pm(v, "node_tpr_tnr_hmean"),
                     f"{fmt(v['node_precision_mean'], 2)} / {fmt(v['node_recall_mean'], 2)}",
                     _stability_cell(s.get("seed_stability")),
                     _runtime_cell(rt)])
    s = results["threshold-0.02"].summary
    t = results["threshold-0.02"].table.set_index("label")
    top = t.sort_values("ablation_effect_norm", ascending=False).head(7)
    effects = ", ".join(f"{h} {fmt(r['ablation_effect_norm'], 3)}" for h, r in top.iterrows())
    prev = t["prev_token_score"].idxmax()
    ind = t.sort_values("induction_score", ascending=False).head(3)
    header = ["prompts a side × seeds", "node ROC-AUC (per seed)", "edge ROC-AUC",
              "paper's \"F1\" (harmonic mean of TPR, TNR)", "precision / recall",
              "seed to seed: top-10 heads shared (least) / Spearman", "SAE run / ablation run"]
    return "\n".join([
        f"`attn-only-induction`, {s['n_positive']} + {s['n_negative']} prompts, {len(s['seeds'])} seeds. The "
        f"reference circuit is established without the SAE: mean-ablation effect as a share of the clean − "
        f"unrepeated gap (largest: {effects}); previous-token score {prev} {fmt(t.loc[prev, 'prev_token_score'], 2)}; "
        f"induction scores " + ", ".join(f"{h} {fmt(r['induction_score'], 2)}" for h, r in ind.iterrows()) + ".",
        "", md_table(header, [[f"{s['n_positive']} × {len(s['seeds'])}: " + r[0]] + r[1:] for r in rows])])


def _vs_baseline(s) -> str:
    """How the SAE ranking (mean over seeds) agrees with one baseline's per-head effects."""
    v, abl = s["vs_ablation"], s["ablation"]
    rhos = [r for r in s["spearman_sae_vs_ablation_per_seed"] if r is not None]
    per_seed = f" (per seed {fmt(min(rhos), 2)} to {fmt(max(rhos), 2)})" if len(rhos) > 1 else ""
    return (f"Spearman correlation between SAE node scores (mean over seeds) and the heads' effects "
            f"**{fmt(s['spearman_sae_vs_ablation'], 2)}**{per_seed}; top 10 heads shared: "
            f"**{s['top10_shared_sae_vs_ablation']}/10** (per seed "
            f"{', '.join(str(x) for x in s['top10_shared_sae_vs_ablation_per_seed'])}); SAE node ROC-AUC against "
            f"the circuit it establishes ({v['n_reference_heads']} heads above {abl['circuit_threshold']} of the "
            f"gap) {_pm(v, 'node_roc_auc')}")


def render_ioi(results) -> str:
    s, p = results["ioi"].summary, results["ioi-patch"].summary
    abl = s["ablation"]
    n_seeds = len(s["seeds"])
    stable = s.get("seed_stability")
    stability = ("" if stable is None else
                 f" From one SAE seed to another the top 10 heads share {fmt(stable['top_k_shared_mean'], 1)} "
                 f"heads on average (at least {stable['top_k_shared_min']}, over {stable['n_pairs']} pairs of "
                 f"seeds) and the scores' Spearman correlation is {fmt(stable['spearman_mean'], 2)}.")
    both = len(set(s["top_heads_ablation"]) & set(p["top_heads_ablation"]))
    return "\n".join([
        f"`smollm2-135m` (30 × 9 heads) on IOI, {s['n_positive']} prompts a side, "
        f"{n_seeds} seed{'s' if n_seeds > 1 else ''}. Clean metric {fmt(abl['clean_metric'], 2)}, negative "
        f"prompts {fmt(abl['negative_metric'], 2)}.{stability}", "",
        f"- **Against mean ablation:** {_vs_baseline(s)}.",
        f"- **Against activation patching** (in the clean run, one head's output taken from the paired negative "
        f"prompt: the noising direction; the attribution table patches clean into corrupted): "
        f"{_vs_baseline(p)}.",
        f"- The two baselines share {both} of their top 10 heads.", "",
        md_table(["rank", "top heads by mean ablation", "top heads by activation patching",
                  "top heads by SAE score (mean over seeds)"],
                 [[i + 1, a, b, c] for i, (a, b, c) in
                  enumerate(zip(s["top_heads_ablation"], p["top_heads_ablation"], s["top_heads_sae"]))])])


def _paper_row(result) -> list:
    """One run of a paper-size table: model, baseline, and the SAE ranking's agreement with it."""
    s = result.summary
    v, abl, stable = s["vs_ablation"], s["ablation"], s.get("seed_stability")
    rhos = [r for r in s["spearman_sae_vs_ablation_per_seed"] if r is not None]
    rho = f"**{fmt(s['spearman_sae_vs_ablation'], 2)}**" + (f" ({fmt(min(rhos), 2)} to {fmt(max(rhos), 2)})" if rhos else "")
    shape = s["model_shape"]
    return [f"`{result.manifest['model']['name']}` ({shape['n_layers']} × {shape['n_heads']})",
            "activation patching" if abl["mode"] == "patch" else "mean ablation",
            f"{fmt(abl['clean_metric'], 2)} / {fmt(abl['negative_metric'], 2)}",
            str(v["n_reference_heads"]), _pm(v, "node_roc_auc"), rho,
            f"{s['top10_shared_sae_vs_ablation']}/10 "
            f"({', '.join(str(x) for x in s['top10_shared_sae_vs_ablation_per_seed'])})",
            _stability_cell(stable), finds_circuit(v)]


def finds_circuit(vs: dict) -> str:
    """The plain answer for one run, from the mean node ROC-AUC over seeds against the baseline's
    circuit, on Hosmer and Lemeshow's scale (Applied Logistic Regression, 2000: 0.5 no discrimination,
    below 0.7 poor, 0.7-0.8 acceptable, 0.8-0.9 excellent, 0.9 and above outstanding)."""
    auc = vs.get("node_roc_auc_mean")
    if auc is None:
        return "n/a"
    for bound, grade in ((0.9, "yes: outstanding"), (0.8, "yes: excellent"), (0.7, "partly: acceptable")):
        if auc >= bound:
            return grade
    return "no: poor"


def render_paper_size(results) -> str:
    """Every model × baseline run of one task at the paper-size budget, one row each."""
    first = next(iter(results.values())).summary
    header = ["model (layers × heads)", "baseline", "clean / negative metric",
              f"heads in the baseline's circuit (≥ {first['ablation']['circuit_threshold']} of the gap)",
              "SAE node ROC-AUC vs that circuit (mean ± sd over seeds)",
              "Spearman, SAE score (mean over seeds) vs head effects (range per seed)",
              "top-10 heads shared with the baseline (per seed)",
              "seed to seed: top-10 shared (least) / Spearman",
              "finds the circuit? (ROC-AUC grade: below 0.7 poor, 0.7–0.8 acceptable, 0.8–0.9 excellent, ≥ 0.9 "
              "outstanding)"]
    notes = f" {first['task_notes'][0][0].upper()}{first['task_notes'][0][1:]}." if first.get("task_notes") else ""
    return "\n".join([
        f"{first['task_description']} {first['n_positive']} prompts a side, {len(first['seeds'])} SAE seeds; the "
        f"baseline ablates every head once over all {first['ablation']['n_examples']} positive prompts.{notes} (No "
        "seconds here: these runs shared the machine; the performance table times both methods.)", "",
        md_table(header, [_paper_row(r) for r in results.values()])])


def _paper_jobs(task: str, n_examples: int = 100) -> dict[str, str]:
    common = f"--set task={task} --set n_examples={n_examples} --set seeds=5 --set batch_size=50"
    return {f"{short}-{mode}": f"workbench run circuits --model {model} {common}" + (
                " --set ablation=patch" if mode == "patch" else "")
            for short, model in (("smollm2", "smollm2-135m"), ("gemma3", "gemma3-270m")) for mode in ("mean", "patch")}


_IOI = "workbench run circuits --model smollm2-135m --set task=ioi --set n_examples=16 --set seeds=5"
_IND = "workbench run circuits --model attn-only-induction --set task=induction --set n_examples=250 --set seeds=5"
TABLES = (
    ReadmeTable(name="circuits_induction", title="SAE circuit finding vs ablation on attn-only-induction",
                jobs={"threshold-0.02": _IND, "threshold-0.05": f"{_IND} --set circuit_threshold=0.05"},
                render=render_induction, minutes=6),
    ReadmeTable(name="circuits_ioi", title="SAE circuit finding vs ablation on smollm2-135m, IOI",
                jobs={"ioi": _IOI, "ioi-patch": f"{_IOI} --set ablation=patch"},
                render=render_ioi, minutes=40),
    ReadmeTable(name="circuits_paper_size", title="SAE circuit finding on IOI at 100 prompts a side, smollm2-135m and "
                "gemma3-270m", jobs=_paper_jobs("ioi"), render=render_paper_size, minutes=35),
    ReadmeTable(name="circuits_paper_size_greater_than", title="SAE circuit finding on greater-than at 100 prompts a "
                "side, smollm2-135m and gemma3-270m", jobs=_paper_jobs("greater_than"), render=render_paper_size,
                minutes=40),
    ReadmeTable(name="circuits_paper_size_ioi_250", title="SAE circuit finding on IOI at the paper's 250 prompts a "
                "side, smollm2-135m and gemma3-270m", jobs=_paper_jobs("ioi", 250), render=render_paper_size,
                minutes=50),
)
