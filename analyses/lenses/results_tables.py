"""The README's lens table: held-out KL(final ‖ layer) of the logit lens and the shipped tuned lens."""

from __future__ import annotations

from workbench.reproduce import ReadmeTable, fmt, md_table

#: abstracts 360..399 were never seen by the shipped lens (trained on the first 88)
HELDOUT = "abstracts[360:400]"

SHOWN_LAYERS = (0, 1, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29, 30)


def _per_layer(result):
    t = result.table
    t = t[t["site"] == "resid_post"]
    return t.groupby(["lens", "layer"])["kl"].mean().unstack(0)


def render_lenses(results) -> str:
    res = results["heldout"]
    kl = _per_layer(res)
    n_pos = int(res.summary.get("n_positions", 0))
    layers = [l for l in SHOWN_LAYERS if l in kl.index]
    rows = [["logit lens"] + [fmt(kl.loc[l, "logit"], 2) for l in layers],
            ["tuned lens"] + [fmt(kl.loc[l, "tuned"], 2) for l in layers]]
    below = kl.index[kl.index < kl.index.max()]
    wins = int((kl.loc[below, "tuned"] < kl.loc[below, "logit"]).sum())
    full = md_table(["layer", "logit lens", "tuned lens"],
                    [[int(l), fmt(kl.loc[l, "logit"], 3), fmt(kl.loc[l, "tuned"], 3)] for l in kl.index])
    return "\n".join([
        f"Held-out KL(final ‖ layer) in nats, mean over {n_pos} positions of {res.summary.get('n_texts')} "
        f"abstracts the lens never saw (`{HELDOUT}`, first 64 tokens each). The tuned lens is below the "
        f"logit lens at **{wins} of {len(below)}** layers below the last.", "",
        md_table(["layer"] + [str(l) for l in layers], rows), "",
        "<details><summary>Every layer</summary>", "", full, "", "</details>"])


TABLES = (ReadmeTable(
    name="lenses", title="Logit lens vs tuned lens, held-out KL per layer (smollm2-135m)",
    jobs={"heldout": f"workbench run tuned_lens --model smollm2-135m --data '{HELDOUT}' "
                     "--set max_texts=16 --set max_length=64"},
    render=render_lenses, minutes=3),)
