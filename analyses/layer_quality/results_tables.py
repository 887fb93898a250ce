"""The README's layer-quality table: every metric beside the probe and retrieval at chosen layers."""

from __future__ import annotations

from workbench.reproduce import ReadmeTable, fmt, md_table

COLUMNS = (("prompt_entropy", "prompt entropy", 3), ("dataset_entropy", "dataset entropy", 3),
           ("effective_rank", "eff. rank", 1), ("curvature", "curvature", 3),
           ("infonce_mi_lower_bound", "InfoNCE MI bound", 3), ("lidar", "LiDAR", 3), ("dime", "DiME", 4),
           ("twonn", "TwoNN", 1), ("probe_accuracy", "probe acc.", 3), ("retrieval_recall_at_1", "R@1", 3),
           ("retrieval_mrr", "MRR", 3))


def _shown_layers(t, best_layers):
    L = int(t["layer"].max())
    picks = {0, L, *best_layers}
    picks |= {round(L * q) for q in (0.25, 0.5, 0.75)}
    return sorted(picks)


def render_layer_quality(results) -> str:
    rows, verdicts = [], []
    for job in ("smollm2-135m", "minilm-l6", "smollm2-135m-position-0-left-out"):
        res = results[job]
        t = res.table.set_index("layer")
        rec = res.summary.get("recommendation", {})
        best_probe = int(t["probe_accuracy"].idxmax())
        best_mrr = int(t["retrieval_mrr"].idxmax())
        for i, layer in enumerate(_shown_layers(res.table, [best_probe, best_mrr])):
            cells = []
            for col, _, digits in COLUMNS:
                v = fmt(t.loc[layer, col], digits)
                if (col == "probe_accuracy" and layer == best_probe) or (col == "retrieval_mrr" and layer == best_mrr):
                    v = f"**{v}**"
                cells.append(v)
            rows.append([job if i == 0 else "", layer] + cells)
        rho = res.summary.get("spearman_with_probe_accuracy", {})
        rho_txt = ", ".join(f"{name} {rho[col]:+.2f}" for col, name, _ in COLUMNS[:8] if rho.get(col) is not None)
        last = int(res.table["layer"].max())
        mrr = (f"Best retrieval MRR at the last layer ({fmt(t.loc[last, 'retrieval_mrr'])})" if best_mrr == last else
               f"Best retrieval MRR at layer {best_mrr} ({fmt(t.loc[best_mrr, 'retrieval_mrr'])}) vs the last "
               f"layer's {fmt(t.loc[last, 'retrieval_mrr'])}")
        verdicts.append(f"- **{job}**: {rec.get('reason', '')} Beats the last layer beyond one standard error: "
                        f"{'yes' if rec.get('beats_last_beyond_one_se') else 'no'}. {mrr}. Spearman with probe "
                        f"accuracy across layers: {rho_txt}.")
    probe = results["smollm2-135m"].summary.get("probe", {})
    header = ["model", "layer"] + [name for _, name, _ in COLUMNS]
    return "\n".join([
        f"{results['smollm2-135m'].summary['n_prompts']} abstracts as prompts (128 tokens), augmentations of the "
        f"first 32; probe: {probe.get('n_texts')} labelled `{probe.get('dataset')}` utterances, "
        f"{probe.get('n_labels')} topics (majority baseline {probe.get('majority_baseline')}), "
        f"{probe.get('folds')}-fold; retrieval: 200 titles → their abstracts. Bold: the best layer by probe and by MRR.",
        "", md_table(header, rows), "", *verdicts])


_BASE = "workbench run layer_quality --data abstracts"
TABLES = (ReadmeTable(
    name="layer_quality", title="Layer-wise quality metrics beside probe and retrieval",
    jobs={"smollm2-135m": f"{_BASE} --model smollm2-135m",
          "minilm-l6": f"{_BASE} --model minilm-l6",
          "smollm2-135m-position-0-left-out": f"{_BASE} --model smollm2-135m --set skip_first=true"},
    render=render_layer_quality, minutes=45),)
