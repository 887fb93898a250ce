"""The README's inversion table: the two held-out sentence sets at the default budget."""

from __future__ import annotations

from workbench.reproduce import ReadmeTable, fmt, md_table

SETS = {"abstract-sentences": "sample_data/inversion_eval.txt", "general-english": "sample_data/inversion_general.txt"}


def render_inversion(results) -> str:
    rows, details = [], []
    for job, path in SETS.items():
        t = results[job].table
        n_sens = int((t["n_sensitive"] > 0).sum())
        leaked = t.loc[t["n_sensitive"] > 0, "leakage"]
        rows.append([f"`{path}` ({len(t)})", f"**{fmt(t['cosine'].mean())}** ({fmt(t['cosine'].min(), 2)}–"
                     f"{fmt(t['cosine'].max(), 2)})", f"**{fmt(t['token_f1'].mean())}**", fmt(t["bleu"].mean(), 2),
                     f"{int(t['exact_match'].sum())} / {len(t)}",
                     f"{fmt(leaked.mean(), 2) if len(leaked) else '–'} over {n_sens} items with sensitive strings",
                     fmt(t["seconds"].mean(), 1)])
        details += [f"**{path}**", "", md_table(["target", "reconstruction", "cosine", "token F1"],
                    [[r.target, r.reconstruction, fmt(r.cosine), fmt(r.token_f1, 2)] for r in t.itertuples()]), ""]
    header = ["sentences", "mean cosine (min–max)", "mean token F1", "mean BLEU", "exact match",
              "mean leakage", "s / sentence"]
    p = results["general-english"].params
    return "\n".join([
        f"Proposer `{p['proposer']}`, embedder `minilm-l6`, beam width {p['beam_width']}, top-k {p['top_k']}, "
        f"{p['max_steps']} + {p['refine_steps']} steps (the defaults).", "", md_table(header, rows), "",
        "<details><summary>Every sentence</summary>", "", *details, "</details>"])


TABLES = (ReadmeTable(
    name="inversion", title="Embedding inversion on two held-out sentence sets",
    jobs={job: f"workbench run inversion --model minilm-l6 --data {path}" for job, path in SETS.items()},
    render=render_inversion, minutes=30),)
