"""The README's SAE tables: an SAE on minilm-l6 sentence embeddings and one on the middle residual layer
of smollm2-135m, both over the 400 sample abstracts, trained and evaluated from `workbench run`
commands (the first job trains the SAE into the cache, the others find it by its settings).

Feature examples are chosen by a rule, not by hand: the three live features with the highest
specificity among those firing on 2–20% of rows (ties: the lower feature id).
"""

from __future__ import annotations

import json

from workbench.reproduce import ReadmeTable, fmt, md_table

EXAMPLE_RULE = ("the three live features with the highest specificity among those firing on 2–20% of rows; "
                "ties: lower id")


def _quality(result) -> str:
    t = result.table
    d = result.summary["downstream"]
    sae = result.summary["sae"]
    rows = [[r["split"], r["n_rows"], fmt(r["fvu"], 3), fmt(r["l0"], 1), f"{r['dead']} ({r['dead_fraction']:.0%})",
             r["dense"]] for _, r in t.iterrows()]
    table = md_table(["rows", "n", "FVU", "L0", "dead latents", "dense latents (>10%)"], rows)
    if d["kind"] == "retrieval":
        down = (f"Title→abstract retrieval over {d['n_pairs']} pairs: MRR {fmt(d['mrr_original'])} with the "
                f"original embeddings, {fmt(d['mrr_reconstructed'])} with both sides reconstructed "
                f"({d['mrr_change']:+.3f}), {fmt(d['mrr_original_query_reconstructed_index'])} with original "
                f"queries against a reconstructed index; recall@1 {fmt(d['recall_at_1_original'])} → "
                f"{fmt(d['recall_at_1_reconstructed'])}.")
    else:
        down = (f"Next-token cross-entropy on {d['n_texts']} texts ({d['texts']}, {d['n_predictions']} "
                f"predictions): {fmt(d['ce_clean'])} nats clean, {fmt(d['ce_sae'])} with the layer replaced by "
                f"its reconstruction ({d['ce_increase']:+.3f}), {fmt(d['ce_zero'])} with it zeroed: loss "
                f"recovered {fmt(d['loss_recovered'])}.")
    head = (f"`{sae['target']}` ({sae['hook']}), TopK k={sae['k']}, {sae['d_sae']} latents, "
            f"{sae['training'].get('steps')} steps of {sae['training'].get('batch_size')} rows "
            f"({fmt(sae['training'].get('train_seconds'), 0)} s).")
    return "\n".join([head, "", table, "", down])


def _token_context(e: dict) -> str:
    space = " " if e["token"].startswith(" ") else ""
    return f"…{e['before'][-40:]}{space}**{e['token'].strip()}**{e['after'][:20]}…"


def _examples(result, n: int = 3) -> str:
    t = result.table
    pool = t[(t["density"] >= 0.02) & (t["density"] <= 0.2)].sort_values(["specificity", "feature"],
                                                                          ascending=[False, True]).head(n)
    rows = []
    for _, r in pool.iterrows():
        exs = json.loads(r["examples"])[:2]
        shown = "; ".join(_token_context(e) if "token" in e else f"“{e.get('title') or e['snippet'][:80]}”"
                          for e in exs)
        promoted = ", ".join(f"`{tok}`" for tok, _ in json.loads(r["promoted"])[:3])
        rows.append([r["feature"], r["label"], f"{r['density']:.1%}", fmt(r["specificity"], 2), shown.replace("|", "/")]
                    + ([promoted.replace("|", "/")] if promoted else []))
    header = ["feature", "word-contrast label", "density", "specificity", "top examples"]
    header += ["promotes"] if rows and len(rows[0]) > 5 else []
    return f"Feature examples ({EXAMPLE_RULE}):\n\n" + md_table(header, rows)


def _families(result) -> tuple[str, bool]:
    s = result.summary
    st = s["stats"]
    ok = st["n_families"] > 0 and st["median_parent_child_ratio"] > 1 and (
        st["block_share"] > st["block_share_random_order"])
    text = (f"Families: {st['n_families']} from {s['candidates']} candidate features (co-occurrence per "
            f"{s['unit']}, {s['n_rows']} rows), mean {fmt(st['mean_children'], 1)} children; parent–child ratio "
            f"median {fmt(st['median_parent_child_ratio'], 2)} (above 1 in {fmt(100 * (st['share_ratio_above_1'] or 0), 0)}% "
            f"of families); block share {fmt(st['block_share'], 2)} against {fmt(st['block_share_random_order'], 2)} "
            f"in a random order (a ratio above 1 is partly built in: a parent is the denser end of edges chosen "
            f"for high co-occurrence).")
    return text, ok


def _steering(result) -> tuple[str, bool]:
    s = result.summary
    b, a = s["before"], s["after"]
    ok = a["share_in_feature_top"] > b["share_in_feature_top"] and a["cosine_to_feature_centroid"] > b[
        "cosine_to_feature_centroid"]
    text = (f"Steering: query “{s['query']}”, feature {s['feature']} ({s['feature_label']}, picked by the "
            f"`feature=-1` rule), {s['mode']} α = {s['alpha']}: of the top {len(result.table)} results "
            f"{fmt(100 * b['share_in_feature_top'], 0)}% → {fmt(100 * a['share_in_feature_top'], 0)}% are among the "
            f"{len(s['feature_top_texts'])} texts the feature fires on most (at most "
            f"{fmt(100 * min(1, len(s['feature_top_texts']) / len(result.table)), 0)}% possible); mean cosine to "
            f"their centroid {fmt(b['cosine_to_feature_centroid'])} → {fmt(a['cosine_to_feature_centroid'])}.")
    sweep = s.get("sweep") or []
    if sweep:
        best = max(sweep, key=lambda r: (r["share_in_feature_top"], -r["alpha"]))
        text += (f" Over the sweep α = 0…{fmt(sweep[-1]['alpha'], 1)} the share first reaches its largest value, "
                 f"{fmt(100 * best['share_in_feature_top'], 0)}%, at α = {fmt(best['alpha'], 1)} (query and decoder "
                 "direction both have unit norm).")
    return text, ok


def _limits(quality, judged: str) -> str:
    rows = quality.table.set_index("split")
    sae = quality.summary["sae"]
    n_train = int(rows.loc["train", "n_rows"]) if "train" in rows.index else int(rows["n_rows"].sum())
    n_held = int(rows.loc["heldout", "n_rows"]) if "heldout" in rows.index else 0
    tokens = quality.summary["downstream"]["kind"] != "retrieval"
    parts = [f"At this corpus size ({n_train} training {'tokens' if tokens else 'texts'} for {sae['d_sae']} latents; "
             f"the paper trains on 270k abstracts{', and residual SAEs usually see 10^8 tokens or more' if tokens else ''})"]
    if n_train < sae["d_sae"]:
        parts.append("the dictionary outnumbers the training rows, so the SAE memorises them (training FVU near 0) "
                     "and only the held-out FVU measures reconstruction;")
    if 0 < n_held < 4 * sae["d_sae"]:
        parts.append(f"dead counts over {n_held} held-out rows are no health check (most latents have no chance to "
                     "fire there);")
    if tokens:
        parts.append("the features are those of this corpus's frequent contexts (abstract phrasing); the tokens a "
                     "middle-layer direction promotes through the final norm and unembedding are often unrelated to "
                     "its contexts (the logit lens is weak at mid depth);")
    parts.append("co-occurrence counts per feature pair are small, so a family rests on few co-firings; and the "
                 f"labels are word contrasts, not the paper's LLM labels, so {judged}, not by what the labels say.")
    return " ".join(parts)


def render_sentence(results) -> str:
    fam, fam_ok = _families(results["families"])
    steer, steer_ok = _steering(results["steering"])
    verdict = (f"**Verdict:** families {'behave' if fam_ok else 'do not behave'} as the paper reports (parents "
               f"co-occur with their children more than the children with each other, and families are "
               f"blocks of the co-occurrence matrix); steering {'moves' if steer_ok else 'does not move'} the results "
               "toward the feature's texts. " + _limits(results["quality"], "families and steering are judged by "
                                                           "co-occurrence and retrieval numbers"))
    return "\n".join([_quality(results["quality"]), "", _examples(results["features"]), "", fam, steer, "", verdict])


def render_residual(results) -> str:
    fam, fam_ok = _families(results["families"])
    verdict = (f"**Verdict:** families {'behave' if fam_ok else 'do not behave'} as the paper reports for "
               "embeddings (here one row is one token). " + _limits(results["quality"], "families are judged by "
                                                                                      "co-occurrence numbers"))
    return "\n".join([_quality(results["quality"]), "", _examples(results["features"]), "", fam, "", verdict])


_MINI = "--model minilm-l6 --data abstracts"
_SMOL = "--model smollm2-135m --data abstracts --set target=layer:15"
TABLES = (
    ReadmeTable(name="sae_minilm", title="SAE on minilm-l6 sentence embeddings of the sample abstracts",
                jobs={"quality": f"workbench run sae_quality {_MINI}", "features": f"workbench run sae_features {_MINI}",
                      "families": f"workbench run sae_families {_MINI}", "steering": f"workbench run sae_steering {_MINI}"},
                render=render_sentence, minutes=5),
    ReadmeTable(name="sae_smollm", title="SAE on the middle residual layer of smollm2-135m over the sample abstracts",
                jobs={"quality": f"workbench run sae_quality {_SMOL}", "features": f"workbench run sae_features {_SMOL}",
                      "families": f"workbench run sae_families {_SMOL}"},
                render=render_residual, minutes=15),
)
