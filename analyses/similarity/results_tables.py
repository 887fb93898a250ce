"""The README's outlier-clipping and layer-similarity tables: paper claims checked on the built-in models,
reported whichever way they fall."""

from __future__ import annotations

import numpy as np

from workbench.reproduce import ReadmeTable, fmt, md_table

_GEO = "--data abstracts --set estimators=svd,cosine --set transform=clip_outliers"
_CLIP_JOBS = {"minilm-l6": f"workbench run geometry --model minilm-l6 {_GEO}",
              "smollm2-135m": f"workbench run geometry --model smollm2-135m {_GEO}",
              "smollm2-135m-first-left-out": f"workbench run geometry --model smollm2-135m {_GEO} --set skip_first=true",
              "outliers-minilm-l6": "workbench run outliers --model minilm-l6 --data abstracts",
              "outliers-smollm2-135m": "workbench run outliers --model smollm2-135m --data abstracts"}


def _tenths(layers: list[int], n_layers: int, every: bool) -> list[int]:
    if every:
        return layers
    return [l for l in dict.fromkeys(int(round(d * n_layers)) for d in np.linspace(0, 1, 11)) if l in layers]


def _clip_rows(job: str, res, every: bool) -> tuple[list, str]:
    t = res.table
    wide = t.pivot_table(index=["layer", "transform"], columns="estimator", values="value", aggfunc="first")
    dims = {d["layer"]: d.get("outlier_dims", []) for d in res.summary["transform"]["per_layer"]}
    n_layers = int(res.summary["n_layers"])
    layers = sorted(t["layer"].unique())
    rows = []
    for i, layer in enumerate(_tenths(layers, n_layers, every)):
        before, after = wide.loc[(layer, "none")], wide.loc[(layer, "clip_outliers")]
        shown = dims.get(layer, [])
        rows.append([job if i == 0 else "", layer, f"{len(shown)}: {', '.join(map(str, shown[:4]))}"
                     + (" …" if len(shown) > 4 else ""), fmt(before["svd"]), fmt(after["svd"]),
                     fmt(before["cosine"]), fmt(after["cosine"])])
    svd = wide["svd"].unstack("transform")
    with_outliers = [l for l in layers if dims.get(l)]
    lower = int((svd.loc[with_outliers, "clip_outliers"] < svd.loc[with_outliers, "none"]).sum())
    delta = float((svd["clip_outliers"] - svd["none"]).loc[with_outliers].mean()) if with_outliers else float("nan")
    verdict = (f"**{job}**: outlier dimensions at {len(with_outliers)} of {len(layers)} layers; clipping them lowers "
               f"SVD anisotropy at {lower} of those {len(with_outliers)} (mean change {fmt(delta, 3)}); cosine "
               f"anisotropy {fmt(float(wide['cosine'].unstack('transform')['none'].mean()))} → "
               f"{fmt(float(wide['cosine'].unstack('transform')['clip_outliers'].mean()))} averaged over layers.")
    return rows, verdict


def _positional(job: str, res) -> str:
    s = res.summary
    top = s.get("persistent_dims", [])[:3]
    test = s.get("positional_test", {})
    dims = "; ".join(f"dim {d['dim']} at {fmt(d['persistence'], 2)} of layers, positional R² {fmt(d['position_r2'])}"
                     for d in top) or "none"
    return (f"**{job}**: most persistent outlier dimensions: {dims}; the median dimension's positional R² is "
            f"{fmt(test.get('median_dimension_position_r2'))} (outliers' mean {fmt(test.get('outlier_position_r2_mean'))}).")


def render_clipping(results) -> str:
    rows, verdicts = [], []
    for job, every in (("minilm-l6", True), ("smollm2-135m", False), ("smollm2-135m-first-left-out", False)):
        r, v = _clip_rows(job, results[job], every)
        rows += r
        verdicts.append("- " + v)
    for job in ("outliers-minilm-l6", "outliers-smollm2-135m"):
        verdicts.append("- " + _positional(job, results[job]))
    s = results["minilm-l6"].summary
    header = ["job", "layer", "outlier dims (3σ of the average vector)", "SVD anisotropy", "SVD, clipped",
              "cosine", "cosine, clipped"]
    return "\n".join([
        f"{s['n_texts']} abstracts, {s['n_tokens']} token vectors a layer (minilm-l6). Outlier dimensions: "
        "|average-vector value − its mean| > 3 standard deviations (Luo et al. 2021), fit per layer on the same "
        "tokens; clipping sets them to 0. Claim (Luo et al.): clipping the outliers lowers anisotropy.", "",
        md_table(header, rows), "", *verdicts])


def _linearity_rows(res) -> list:
    t = res.table
    n_layers = int(res.summary["n_layers"])
    lin = t[t["metric"] == "linearity"].set_index("layer")["value"]
    res_removed = t[t["metric"] == "linearity_residual_removed"].set_index("layer")["value"]
    cka = t[(t["metric"] == "cka") & (t["other_layer"] == t["layer"] + 1)].set_index("layer")["value"]
    rows = []
    for layer in dict.fromkeys(_tenths(sorted(lin.index), n_layers, False) + [int(lin.index.max())]):
        rows.append([layer, f"{layer} → {layer + 1}", fmt(lin[layer], 4), fmt(res_removed[layer], 4),
                     fmt(cka.get(layer), 4)])
    return rows


def render_similarity(results) -> str:
    res = results["smollm2-135m"]
    s = res.summary
    lin, rr = s["linearity"], s["linearity_residual_removed"]
    close = lin["mean"] >= 0.95
    pair = results["minilm-l6-vs-smollm2-135m"]
    pt = pair.table[pair.table["metric"] == "cka"].set_index(["layer", "other_layer"])["value"]
    path = pair.summary["best_match"]["path"]
    best = ", ".join(f"{a}→{b} ({fmt(pt[(a, b)], 2)})" for a, b in path)
    return "\n".join([
        f"`smollm2-135m`, {s['n_texts']} abstracts, {s['n_rows']} token rows (seeded subsample, the same at every "
        "layer). Linearity = LLM-Microscope's `procrustes_similarity` of consecutive layers (least-squares fit of "
        "layer l+1 from layer l, centred and normalised); residual removed = its `procrustes_similarity_centered` "
        "(layer l → layer l+1 − layer l).", "",
        md_table(["layer", "pair", "linearity", "linearity, residual removed", "CKA with the next layer"],
                 _linearity_rows(res)), "",
        f"- **Claim (Razzhigaev et al. 2024): consecutive layers are close to linear.** smollm2-135m: mean linearity "
        f"{fmt(lin['mean'], 4)}, lowest {fmt(lin['min'], 4)} (layer {lin['min_at_layer']} → {lin['min_at_layer'] + 1}): "
        f"{'holds' if close else 'does not hold'} at the 0.95 level. Without the residual the fit explains "
        f"{fmt(rr['mean'], 3)} of the update on average (lowest {fmt(rr['min'], 3)}): the linearity comes mostly from "
        "the residual stream.",
        f"- **Two models, one mean vector per text** (different tokenizers): each minilm-l6 layer's best-matching "
        f"smollm2-135m layer by CKA: {best}."])


OUTLIER_TABLES = (ReadmeTable(
    name="outlier_clipping", title="Clipping outlier dimensions: anisotropy before and after (minilm-l6, smollm2-135m)",
    jobs=_CLIP_JOBS, render=render_clipping, minutes=10),)

SIMILARITY_TABLES = (ReadmeTable(
    name="layer_similarity", title="Linearity of consecutive layers (smollm2-135m) and cross-model CKA",
    jobs={"smollm2-135m": "workbench run layer_similarity --model smollm2-135m --data abstracts",
          "minilm-l6-vs-smollm2-135m": "workbench run layer_similarity --model minilm-l6 --data abstracts "
                                       "--set other_model=smollm2-135m"},
    render=render_similarity, minutes=4),)
