"""The README's attribution table: on smollm2-135m with IOI prompts, which heads and layers carry the
logit difference by activation patching, attribution patching and direct logit attribution, against
the SAE circuit-finding method's heads and its mean-ablation baseline (the circuits back-end)."""

from __future__ import annotations

from workbench.reproduce import ReadmeTable, fmt, md_table

TOP = 10
_COMMON = "--model smollm2-135m --set task=ioi --set n_examples=16"


def _overlap(heads: list[str], reference: list[str]) -> str:
    shared = [h for h in heads if h in set(reference)]
    return f"{len(shared)}/{len(reference)}" + (f" ({', '.join(shared)})" if shared else "")


def _spearman(a, b) -> str:
    from scipy.stats import spearmanr  # here, not at import: discovery imports every back-end on each run
    joined = a.join(b, how="inner").dropna()
    return fmt(spearmanr(joined.iloc[:, 0], joined.iloc[:, 1])[0], 2) if len(joined) > 2 else ""


def _top_layers(values: dict[str, float], k: int = 3) -> str:
    ranked = sorted(values.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{name} {fmt(v, 2)}" for name, v in ranked)


def render_ioi(results) -> str:
    patch, dla, circ = results["head_patching"], results["dla"], results["circuits"]
    t = patch.table.set_index("label")
    heads_dla = dla.table[dla.table["kind"] == "head"].groupby("label")["attribution"].mean()
    ct = circ.table.set_index("label")
    sae, abl = circ.summary["top_heads_sae"][:TOP], circ.summary["top_heads_ablation"][:TOP]
    methods = [("activation patching (head z, all positions)", t["exact"]),
               ("attribution patching (head z)", t["attribution"]), ("direct logit attribution", heads_dla),
               ("SAE node score (circuits)", ct["sae_score"]), ("mean ablation (circuits)", ct["ablation_effect"])]
    rows = []
    for name, series in methods:
        top = series.sort_values(ascending=False).index[:TOP].tolist()
        rows.append([name, ", ".join(top), _overlap(top, sae), _overlap(top, abl),
                     _spearman(series.to_frame("a"), t[["exact"]])])
    comp = patch.summary["comparison"]
    layers_patch = {f"L{r.layer} {kind}": r.effect for kind in ("attn_out", "mlp_out")
                    for r in results[f"{kind}_patching"].table.itertuples()}
    s = dla.summary
    return "\n".join([
        f"`smollm2-135m` (30 × 9 heads), IOI, {patch.summary['n_prompts']} prompt pairs (the circuits task's "
        f"prompts; corrupted = names replaced by a third name). Clean logit difference "
        f"{fmt(patch.summary['clean_metric'], 2)}, corrupted {fmt(patch.summary['corrupted_metric'], 2)}. "
        f"Attribution patching against exact patching on the head grid: Pearson {fmt(comp['pearson'], 2)}, "
        f"Spearman {fmt(comp['spearman'], 2)}, {fmt(comp['speedup'], 1)}× faster "
        f"({fmt(comp['seconds_attribution'], 1)} s vs {fmt(comp['seconds_exact'], 1)} s). DLA parts sum to the "
        f"logit difference within {s['sum_error']:.1e}.", "",
        md_table([f"method (top {TOP} heads)", "heads", f"shared with SAE top {TOP}", f"shared with ablation top {TOP}",
                  "Spearman with exact patching (270 heads)"], rows), "",
        f"Layers: by patching each layer's whole attention / MLP output (normalised metric) "
        f"{_top_layers(layers_patch)}; by DLA (direct effect, logit difference) {_top_layers(s['layer_totals'])}."])


TABLES = (
    ReadmeTable(
        name="attribution_ioi", title="Heads and layers carrying IOI on smollm2-135m: patching and DLA vs the SAE method",
        jobs={"head_patching": f"workbench run attribution_patching {_COMMON} --set patch=z",
              "attn_out_patching": f"workbench run activation_patching {_COMMON} --set patch=attn_out --set positions=all",
              "mlp_out_patching": f"workbench run activation_patching {_COMMON} --set patch=mlp_out",
              "dla": f"workbench run logit_attribution {_COMMON}",
              "circuits": "workbench run circuits --model smollm2-135m --set task=ioi --set n_examples=16 --set seeds=1"},
        render=render_ioi, minutes=25),
)
