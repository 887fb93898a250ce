"""The README's lens tables, one per model with a shipped lens: held-out KL(final ‖ layer) of the logit
lens and the shipped tuned lens, its training curve and the other budgets recorded for that model."""

from __future__ import annotations

import json
import math

from workbench.paths import SAMPLE_DATA
from workbench.reproduce import ReadmeTable, fmt, md_table

#: lens.json records of training runs of other budgets tried beside the shipped lens (no weights shipped)
RUN_RECORDS = SAMPLE_DATA / "lenses" / "runs"

#: abstracts 360..399 were never trained on: the shipped lens learnt from text sampled from the model itself
#: (its training run monitored its held-out curve on abstracts 360..367)
HELDOUT = "abstracts[360:400]"


def shown_layers(layers) -> list[int]:
    """The layers of the short table: 0, 1, every third, the last block and the final output (for 30 blocks:
    0, 1, 3, 6, …, 27, 29, 30); ``layers`` are the result's layer indices, the final output the largest."""
    layers = sorted(int(l) for l in layers)
    final = layers[-1]
    return [l for l in layers if l < 2 or l % 3 == 0 or l >= final - 1]


def _per_layer(result):
    t = result.table
    t = t[t["site"] == "resid_post"]
    return t.groupby(["lens", "layer"])["kl"].mean().unstack(0)


def render_lenses(results) -> str:
    res = results["heldout"]
    kl = _per_layer(res)
    n_pos = int(res.summary.get("n_positions", 0))
    layers = shown_layers(kl.index)
    rows = [["logit lens"] + [fmt(kl.loc[l, "logit"], 2) for l in layers],
            ["tuned lens"] + [fmt(kl.loc[l, "tuned"], 2) for l in layers]]
    below = kl.index[kl.index < kl.index.max()]
    wins = int((kl.loc[below, "tuned"] < kl.loc[below, "logit"]).sum())
    full = md_table(["layer", "logit lens", "tuned lens"],
                    [[int(l), fmt(kl.loc[l, "logit"], 3), fmt(kl.loc[l, "tuned"], 3)] for l in kl.index])
    budgets = _budgets_tried(res.summary.get("lens_training") or {})  # "" where no other run is recorded
    return "\n".join([
        f"Held-out KL(final ‖ layer) in nats, mean over {n_pos} positions of {res.summary.get('n_texts')} "
        f"abstracts the lens never saw (`{HELDOUT}`, first 64 tokens each). The tuned lens is below the "
        f"logit lens at **{wins} of {len(below)}** layers below the last.", "",
        md_table(["layer"] + [str(l) for l in layers], rows), "",
        _training_curve(res.summary.get("lens_training") or {}, res.summary.get("lens_heldout_kl") or {}), "",
        *([budgets, ""] if budgets else []),
        "<details><summary>Every layer</summary>", "", full, "", "</details>"])


def _training_curve(training: dict, heldout_kl: dict) -> str:
    """The shipped lens's held-out curve (mean KL over layers below the last) and its convergence; step 0
    is the untrained lens, i.e. the logit lens on the same positions."""
    curve, conv, data = training.get("curve") or [], training.get("convergence") or {}, training.get("data") or {}
    if not curve:
        return "The shipped lens records no training curve."
    n_below = len(curve[0]["per_layer"]) - 1
    logit = heldout_kl.get("logit_lens") or []
    points = ([(0, sum(logit[:n_below]) / n_below)] if len(logit) > n_below else []) + \
        [(c["step"], c["mean_kl"]) for c in curve]
    corpus = ("texts sampled from the model itself" if str(data.get("name", "")).startswith("sampled")
              else f"texts of `{data.get('name')}`")
    head = (f"Training curve of the shipped lens (from its `lens.json`; step 0 is the untrained lens, i.e. the "
            f"logit lens): mean held-out KL over layers 0–{n_below - 1} on {data.get('heldout_positions')} "
            f"positions of `{data.get('heldout')}` (never trained on). Trained on "
            f"{data.get('train_positions_used'):,} positions of {data.get('train_texts'):,} {corpus} with "
            f"{_optimizer(training)} in "
            f"{(training.get('timings') or {}).get('train_s', 0) / 60:.0f} min "
            f"({(training.get('timings') or {}).get('threads', '?')} CPU threads).")
    change = conv.get("relative_change_last_20pct")
    verdict = (f"Over the last 20 % of the steps (from step {conv.get('from_step')}) it moved by "
               f"{100 * change:.2f} %: **{'converged' if conv.get('converged') else 'not converged'}** "
               f"(the rule: < {100 * conv.get('threshold', 0.02):.0f} %)." if change is not None else "")
    shown = _every_kth(points, conv.get("from_step"))
    table = md_table(["step"] + [str(step) for step, _ in shown],
                     [["mean held-out KL"] + [fmt(kl, 3) for _, kl in shown]])
    if len(shown) < len(points):
        table += f"\n\n({len(shown) - 1} of the {len(points) - 1} evaluations shown; all are in `lens.json`)"
    return "\n".join([head + " " + verdict + _movers(curve, conv) + _clipping(training)
                      + _power_law(curve, conv, (training.get("settings") or {}).get("steps")), "", table])


def _every_kth(points: list, cut_step, most: int = 21) -> list:
    """At most about ``most`` curve points: every k-th, the last, and the step the convergence rule starts at."""
    if len(points) <= most:
        return points
    k = math.ceil((len(points) - 1) / (most - 1))
    return [p for i, p in enumerate(points) if i % k == 0 or i == len(points) - 1 or p[0] == cut_step]


def power_law_fit(curve: list[dict], first_step: int, last_step: int) -> tuple[float, float]:
    """Least-squares fit of log(mean held-out KL) = a − c·log(step) over the curve's evaluations in
    [first_step, last_step]: returns (c, r²)."""
    pts = [(math.log(c["step"]), math.log(c["mean_kl"])) for c in curve if first_step <= c["step"] <= last_step]
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    syy = sum((y - my) ** 2 for _, y in pts)
    return -sxy / sxx, (sxy * sxy / (sxx * syy) if syy else 1.0)


def _power_law(curve: list[dict], conv: dict, steps) -> str:
    """How the curve falls before the rule's window: a power law's relative change over the last 20 % of
    its steps is 1 − 0.8^c whatever the run's length, so more steps alone do not meet the rule while the
    curve keeps that shape (the window itself runs at the lowest learning rates of the linear decay)."""
    fit = None if conv.get("converged") else _fit_before_window(curve, conv, steps)
    if fit is None:
        return ""  # it explains a miss; a converged curve has bent
    first, last, c, r2 = fit
    return (f" From step {first} to step {last} the mean held-out KL falls as step^−{c:.3f} (log-log fit, "
            f"r² = {r2:.4f}); a power law moves by 1 − 0.8^{c:.3f} = {100 * (1 - 0.8 ** c):.1f} % over the last "
            f"20 % of its steps however many steps the run has.")


def _clipping(training: dict) -> str:
    """How often the gradient norm (before clipping, over all translators) was above the clip, from the
    recorded losses: above it, an SGD step moves the translators by ``lr`` whatever the gradient's size."""
    norms = [row["grad_norm"] for row in training.get("losses") or [] if "grad_norm" in row]
    clip = (training.get("settings") or {}).get("grad_clip")
    if not norms or clip is None:
        return ""
    above = sum(n > clip for n in norms)
    return (f" The gradient norm before clipping was above the clip ({clip}) at {above} of {len(norms)} steps "
            f"({norms[0]:.0f} at the first, {norms[-1]:.1f} at the last).")


def _movers(curve: list[dict], conv: dict) -> str:
    """Which layers moved over the last 20 % (each layer's held-out KL, layers below the last), from the
    curve's per-layer values: the layer whose KL fell most in nats, against the median of the others."""
    start = next((c for c in curve if c["step"] == conv.get("from_step")), None)
    if start is None or len(curve[-1].get("per_layer", [])) < 3:
        return ""
    a, b = start["per_layer"][:-1], curve[-1]["per_layer"][:-1]
    change = [(x - y) / x if x else 0.0 for x, y in zip(a, b)]
    top = max(range(len(change)), key=lambda l: abs(a[l] - b[l]))
    rest = sorted(c for l, c in enumerate(change) if l != top)
    median = rest[len(rest) // 2] if len(rest) % 2 else (rest[len(rest) // 2 - 1] + rest[len(rest) // 2]) / 2
    share = (a[top] - b[top]) / max(sum(a) - sum(b), 1e-12)
    return (f" By layer: layer {top}'s KL fell by {100 * change[top]:.1f} % ({100 * share:.0f} % of the mean's "
            f"change), the median of the other layers by {100 * median:.1f} %.")


def _budget_row(name: str, record: dict) -> list[str]:
    settings, data, conv = record.get("settings") or {}, record.get("data") or {}, record.get("convergence") or {}
    curve = record.get("curve") or [{}]
    change = conv.get("relative_change_last_20pct")
    return [name, _optimizer(record), f"{settings.get('steps')} × {settings.get('positions_per_step'):,}",
            f"{data.get('train_texts'):,}", fmt(curve[-1].get("mean_kl"), 3),
            f"{100 * change:.2f} % (from step {conv.get('from_step')})" if change is not None else "—",
            "yes" if conv.get("converged") else "no", _fit_cell(curve, conv, settings.get("steps"))]


def _fit_before_window(curve: list[dict], conv: dict, steps) -> tuple[int, int, float, float] | None:
    """``(first, last, c, r²)``: the power-law fit of the curve from step steps/8 to the start of the
    rule's window, or None where the curve has fewer than 4 evaluations there."""
    if not steps or conv.get("from_step") is None:
        return None
    first, last = max(1, int(steps) // 8), int(conv["from_step"])
    if sum(first <= c.get("step", 0) <= last for c in curve) < 4:
        return None
    return (first, last, *power_law_fit(curve, first, last))


def _fit_cell(curve: list[dict], conv: dict, steps) -> str:
    fit = _fit_before_window(curve, conv, steps)
    return "—" if fit is None else f"step^−{fit[2]:.3f} (r² {fit[3]:.3f}), steps {fit[0]}–{fit[1]}"


def _optimizer(record: dict) -> str:
    """The optimizer a lens.json records (``recipe``), e.g. ``Adam`` or ``SGD``."""
    return str((record.get("recipe") or {}).get("optimizer", "?"))


def _budgets_tried(shipped: dict) -> str:
    """The shipped lens beside the recorded runs of other budgets of the same model (``RUN_RECORDS``)."""
    fingerprint = shipped.get("fingerprint")
    records = []
    for path in sorted(RUN_RECORDS.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("fingerprint") == fingerprint:
            records.append((f"`{path.relative_to(SAMPLE_DATA.parent)}`", record))
    if not shipped or not records:
        return ""
    rows = [_budget_row("the shipped lens", shipped)] + [_budget_row(name, r) for name, r in records]
    return "\n".join([
        "Other optimizers and budgets tried (the package's two optimizers, each with its own defaults; the same "
        "sampler for the corpus, the same held-out positions and rule; their `lens.json` is kept, not their "
        "weights):", "",
        md_table(["lens", "optimizer", "steps × positions", "texts", "final mean held-out KL", "change over the last 20 %",
                  "converged", "power-law fit of the curve before the window"], rows), "",
        "A curve falling as step^−c moves by 1 − 0.8^c over the last 20 % of its steps however long the run, "
        "so while a run keeps that shape more steps alone do not meet the rule; the "
        "linear decay to 0 slows the last stretch somewhat."])


def _lens_table(name: str, model: str, minutes: float) -> ReadmeTable:
    return ReadmeTable(
        name=name, title=f"Logit lens vs tuned lens, held-out KL per layer ({model})",
        jobs={"heldout": f"workbench run tuned_lens --model {model} --data '{HELDOUT}' "
                         "--set max_texts=16 --set max_length=64"},
        render=render_lenses, minutes=minutes)


TABLES = (_lens_table("lenses", "smollm2-135m", 3), _lens_table("lenses_gemma3", "gemma3-270m", 4))
