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


def _budget(res) -> str:
    """The run's size in words, from its own summary and params."""
    s, p = res.summary, res.params
    aug = s.get("augmentation") or {}
    aug_txt = (f"{aug['n_prompts']} × {aug['n_augmentations']} augmented" if aug.get("used") else "no augmentations")
    pairs = (s.get("retrieval") or {}).get("n_pairs")
    return f"{s['n_prompts']} prompts × {p['max_length']} tokens, {aug_txt}, {pairs} retrieval pairs"


def _claim_cells(v: dict | None, digits: int = 3) -> list[str]:
    if not v:
        return ["—"] * 3
    best = f"{v['best_layer']}: {fmt(v['best'], digits)} ± {fmt(v['se'], digits)}"
    verdict = ("**yes**" if v["beats_last_beyond_one_se"] else
               "within 1 SE" if v["intermediate_beats_last"] else "no: the last layer is best")
    return [best, f"{v['last_layer']}: {fmt(v['last'], digits)}", f"{verdict} ({v['gain']:+.3f})"]


def render_central_claim(results, jobs) -> str:
    """Skean et al.'s claim (an intermediate layer beats the last), per run: probe and retrieval."""
    rows = []
    for job in jobs:
        res = results[job]
        claim = res.summary.get("intermediate_vs_last", {})
        rows.append([f"`{job}`", _budget(res)] + _claim_cells(claim.get("probe")) + _claim_cells(claim.get("retrieval")))
    header = ["run", "budget", "probe: best layer (acc. ± SE)", "probe: last layer", "probe: intermediate beats last?",
              "retrieval: best layer (MRR ± SE)", "retrieval: last layer", "retrieval: intermediate beats last?"]
    probes = {(r.summary.get("probe") or {}).get("n_texts") for r in (results[j] for j in jobs)}
    probe_note = (f" The probe set is the same {probes.pop():,} labelled utterances in every run (all the labelled "
                  "text shipped), so its columns cannot move with the budget." if len(probes) == 1 else "")
    return "\n".join([
        "**Does an intermediate layer beat the last?** (Skean et al.'s central claim.) SE: the probe's fold "
        "standard deviation / √k; the MRR's standard error over queries. *Yes* means the best layer is not the "
        "last and the last scores below the best by more than one SE." + probe_note, "", md_table(header, rows)])


def render_layer_quality(results) -> str:
    rows, verdicts = [], []
    for job in _TABLE_JOBS:
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
    first = results[_TABLE_JOBS[0]]
    probe = first.summary.get("probe", {})
    header = ["model", "layer"] + [name for _, name, _ in COLUMNS]
    return "\n".join([
        f"{_budget(first)} (titles → their abstracts); probe: {probe.get('n_texts')} labelled "
        f"`{probe.get('dataset')}` utterances, {probe.get('n_labels')} topics (majority baseline "
        f"{probe.get('majority_baseline')}), {probe.get('folds')}-fold. Bold: the best layer by probe and by MRR.",
        "", md_table(header, rows), "", *verdicts, "",
        render_central_claim(results, [*_TABLE_JOBS[:2], *_LARGER])])


_BASE = "workbench run layer_quality --data abstracts"
_TABLE_JOBS = ("smollm2-135m", "minilm-l6", "smollm2-135m-position-0-left-out")
# every abstract as a prompt and as a retrieval pair, twice the augmented prompts (the store holds all
# token states of all layers: about 3.5 GB for smollm2-135m's 400 × 128 tokens)
_LARGER_SET = "--set max_texts=400 --set aug_texts=64 --set retrieval_pairs=0"
_LARGER = ("smollm2-135m-larger-budget", "minilm-l6-larger-budget")
TABLES = (ReadmeTable(
    name="layer_quality", title="Layer-wise quality metrics beside probe and retrieval",
    jobs={"smollm2-135m": f"{_BASE} --model smollm2-135m",
          "minilm-l6": f"{_BASE} --model minilm-l6",
          "smollm2-135m-position-0-left-out": f"{_BASE} --model smollm2-135m --set skip_first=true",
          "smollm2-135m-larger-budget": f"{_BASE} --model smollm2-135m {_LARGER_SET}",
          "minilm-l6-larger-budget": f"{_BASE} --model minilm-l6 {_LARGER_SET}"},
    render=render_layer_quality, minutes=75),)


# ---- WhiteningBERT's claims on minilm-l6: whitening, and the first + last layer combination -----------------
_WB = "workbench run layer_quality --model minilm-l6 --data abstracts --set aug_texts=0 --set transform=whiten"
_SCORES = (("probe_accuracy", "probe acc."), ("retrieval_recall_at_1", "R@1"), ("retrieval_mrr", "MRR"))


def _last(res) -> dict:
    t = res.table
    return t[t["layer"] == t["layer"].max()].iloc[0].to_dict()


def _claim(name: str, a: float, b: float, what: str) -> str:
    return f"{name}{' ' + what if what else ''}: {fmt(a)} → {fmt(b)} ({'yes' if b > a else 'no'}, {b - a:+.3f})"


def render_whitening(results) -> str:
    mean, fl = _last(results["mean-pooled"]), _last(results["first-last"])
    rows = []
    for label, row in (("last layer, mean of tokens", mean), ("first + last layer averaged, mean of tokens", fl)):
        for transform, suffix in (("none", ""), ("whiten", "_transformed")):
            cells = [fmt(row[f"{c}{suffix}"]) for c, _ in _SCORES]
            cells[0] += f" ± {fmt(row[f'probe_accuracy_std{suffix}'])}"
            rows.append([label, transform] + cells)
    k_job = results.get("mean-pooled-whiten-k")
    if k_job is not None:
        row, k = _last(k_job), k_job.summary["transform"]["per_layer"][-1].get("k")
        cells = [fmt(row[f"{c}_transformed"]) for c, _ in _SCORES]
        cells[0] += f" ± {fmt(row['probe_accuracy_std_transformed'])}"
        rows.insert(2, ["last layer, mean of tokens", f"whiten_k (k = {k})"] + cells)
    s = results["mean-pooled"].summary
    fit = s["transform"]["per_layer"]
    dropped = max((d.get("null_directions_dropped", 0) for d in fit), default=0)
    n_fit = {d.get("set"): d["n_fit"] for d in fit}
    verdicts = [
        "- **Whitening improves retrieval and the probe (Su et al. 2021; Huang et al. 2021)**, last layer: "
        + "; ".join(_claim(n, mean[c], mean[f"{c}_transformed"], "") for c, n in _SCORES) + ".",
        "- **First + last layer averaged beats the last layer alone (WhiteningBERT)**, without whitening: "
        + "; ".join(_claim(n, mean[c], fl[c], "") for c, n in _SCORES) + "; whitened: "
        + "; ".join(_claim(n, mean[f"{c}_transformed"], fl[f"{c}_transformed"], "") for c, n in _SCORES) + "."]
    if k_job is not None:
        kr = _last(k_job)
        verdicts.append(
            f"- **Whitening only the top {k} directions** (whiten_k), last layer: "
            + "; ".join(_claim(n, kr[c], kr[f"{c}_transformed"], "") for c, n in _SCORES)
            + f". Full whitening is fit on {n_fit.get('retrieval')} retrieval vectors and {n_fit.get('probe')} probe "
            f"vectors in {fit[0]['dim']} dimensions (up to {dropped} null directions of the "
            "LayerNorm outputs dropped): with so few points per dimension it equalises the noisiest directions too.")
    probe, retr = s.get("probe", {}), s.get("retrieval", {})
    return "\n".join([
        f"`minilm-l6` mean-pooled states; probe: {probe.get('n_texts')} `{probe.get('dataset')}` utterances, "
        f"{probe.get('n_labels')} topics, {probe.get('folds')}-fold; retrieval: {retr.get('n_pairs')} titles → "
        "abstracts. Whitening x~ = (x − μ) U Λ^(−1/2), fit on the vectors it is applied to (all probe texts; queries "
        "and documents together); first + last = the token states of layer 1 and the last layer averaged before "
        "pooling.", "", md_table(["pooling", "transform"] + [n for _, n in _SCORES], rows), "", *verdicts])


TABLES = TABLES + (ReadmeTable(
    name="whitening", title="Whitening and the first + last layer combination (minilm-l6)",
    jobs={"mean-pooled": _WB, "first-last": f"{_WB} --set pooling=first_last",
          "mean-pooled-whiten-k": _WB.replace("transform=whiten", "transform=whiten_k")},
    render=render_whitening, minutes=9),)
