"""The README's DecoderLens table: exact match per task when the decoder reads encoder layer l."""

from __future__ import annotations

from workbench.reproduce import ReadmeTable, fmt, md_table


def _em(table, variant):
    # the last layer is the encoder's own output ("encoder_output"), shared by both variants
    t = table[table["variant"].isin([variant, "encoder_output"])]
    return (t.groupby(["task", "layer"])["exact_match"].mean() * 100).unstack("layer")


def render_decoder_lens(results) -> str:
    res = results["eval"]
    t = res.table
    layers = sorted(t["layer"].unique())
    L = max(layers)
    parts = []
    per_task = t.groupby("task")["example"].nunique()
    for variant, label in (("final_norm", "final norm applied to intermediate layers (default for T5)"),
                           ("raw", "no final norm on intermediate layers")):
        if variant not in set(t["variant"]):
            continue
        em = _em(t, variant)
        rows = [[task] + [fmt(em.loc[task, l], 1) for l in layers] for task in em.index]
        parts += [f"Exact match (%), {label}:", "",
                  md_table(["task"] + [f"L{l}" + (" (= `generate`)" if l == L else "") for l in layers], rows), ""]
    em = _em(t, "final_norm" if "final_norm" in set(t["variant"]) else "raw")
    first = []
    for task in em.index:
        final = em.loc[task, L]
        hit = next((l for l in layers if em.loc[task, l] >= 0.9 * final), L) if final > 0 else None
        first.append(f"{task} {hit}")
    majority = t[(t["layer"] == L)].groupby("task")["reference"].agg(lambda r: r.value_counts().iloc[0] / len(r) * 100)
    n_task = f"{int(per_task.min())}" if per_task.min() == per_task.max() else f"{int(per_task.min())}–{int(per_task.max())}"
    parts.append(f"{n_task} held-out examples a task. First layer reaching 90 % "
                 f"of the final exact match: {', '.join(first)}. Share of the most frequent reference per task "
                 f"(what always answering it scores): " + ", ".join(f"{k} {fmt(v, 1)} %" for k, v in majority.items()) + ".")
    return "\n".join(parts)


TABLES = (ReadmeTable(
    name="decoder_lens", title="DecoderLens on t5-tasks, exact match per encoder layer",
    jobs={"eval": "workbench run decoder_lens --model t5-tasks --data seq2seq-tasks --set apply_final_norm=both"},
    render=render_decoder_lens, minutes=2),)
