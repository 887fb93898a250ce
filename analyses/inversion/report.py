"""Self-contained HTML audit report of an inversion result (no external assets, opens offline)."""

from __future__ import annotations

import html
import json
import math

from workbench.results import Result

from .metrics import leak_description, leakage, sensitive_strings


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _highlight(text: str, leaked: str) -> str:
    out = html.escape(text or "")
    for s in sorted([s for s in (leaked or "").split("; ") if s], key=len, reverse=True):
        out = out.replace(html.escape(s), f"<mark>{html.escape(s)}</mark>")
    return out


def _strings_phrase(strings: list[tuple[str, int]]) -> str:
    shown = [f"'{s}' (item {i})" for s, i in strings[:12]]
    more = len(strings) - len(shown)
    text = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
    return text + (f" and {more} more" if more > 0 else "")


def leak_overview(table) -> str:
    """The run in plain words: how many sensitive strings of the originals were recovered verbatim,
    which ones, and which were not (one paragraph; items are 1-based as in the report's table)."""
    known = table[table["target"].map(lambda x: isinstance(x, str))]
    if known.empty:
        return ("The originals are unknown (vectors were inverted), so what leaked cannot be checked; each "
                "reconstruction is the best guess at its original, and its cosine says how close it came.")
    got, missed, n_items = [], [], 0
    for _, r in known.iterrows():
        strings = [x for group in sensitive_strings(r["target"]).values() for x in group]
        if not strings:
            continue
        n_items += 1
        leaked = set(leakage(r["target"], r["reconstruction"] or "")[2])
        for x in strings:
            (got if x in leaked else missed).append((x, int(r["item"]) + 1))
    if not n_items:
        head = (f"None of the {len(known)} originals holds a name, number, e-mail address or date, so no "
                "sensitive string could leak.")
    elif not got:
        head = (f"No sensitive string was recovered verbatim: the {len(missed)} names, numbers, e-mail addresses "
                f"and dates of {n_items} of the {len(known)} originals ({_strings_phrase(missed)}) were all missed.")
    else:
        head = (f"{len(got)} of the {len(got) + len(missed)} sensitive strings (names, numbers, e-mail addresses, "
                f"dates) in {n_items} of the {len(known)} originals were recovered verbatim: {_strings_phrase(got)}.")
        if missed:
            head += f" Not recovered: {_strings_phrase(missed)}."
    cos = float(known["cosine"].mean())
    return (f"{head} The reconstructions' mean cosine to their targets is {cos:.3f} and their mean token F1 "
            f"{float(known['token_f1'].mean()):.3f}: each item below says what its reconstruction gave away.")


def html_report(result: Result) -> str:
    """An HTML page: what leaked in plain words, summary means, one row per item with leaked strings
    highlighted and a sentence saying what leaked, the manifest."""
    t = result.table
    m = result.manifest
    rows = []
    for _, r in t.iterrows():
        target = r["target"] if isinstance(r["target"], str) else None
        rows.append(
            "<tr>" + "".join([
                f"<td>{int(r['item']) + 1}</td>",
                f"<td>{'output' if r['layer'] == -1 else int(r['layer'])}</td>",
                f"<td>{_highlight(target, r.get('leaked', '')) if target is not None else '<i>unknown (vector)</i>'}</td>",
                f"<td>{_highlight(r['reconstruction'], r.get('leaked', ''))}</td>",
                f"<td>{html.escape(leak_description(target, r['reconstruction'] or ''))}</td>",
                f"<td>{_fmt(float(r['cosine']))}</td>", f"<td>{_fmt(float(r['token_f1']))}</td>",
                f"<td>{_fmt(float(r['bleu']))}</td>", f"<td>{_fmt(r['exact_match'])}</td>",
                f"<td>{_fmt(float(r['leakage']))} ({int(r['n_sensitive'])})</td>",
                f"<td>{int(r['steps'])}</td>", f"<td>{_fmt(float(r['seconds']))}</td>"]) + "</tr>")
    summary = {k: v for k, v in result.summary.items() if isinstance(v, dict)}
    summary_rows = "".join(
        f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{_fmt(v.get(c))}</td>" for c in
        ("mean_cosine", "mean_token_f1", "mean_bleu", "exact_match_rate", "mean_leakage")) + "</tr>"
        for k, v in summary.items())
    model = m.get("model") or {}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Embedding inversion audit</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:14px}} td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
th{{background:#f3f3f3}} mark{{background:#ffd27f}} pre{{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}}
</style></head><body>
<h1>Embedding inversion audit</h1>
<p>Embedder <b>{html.escape(str(model.get('name', '?')))}</b> (<code>{html.escape(str(model.get('fingerprint', '')))}</code>),
proposer <b>{html.escape(str(result.params.get('proposer')))}</b>, beam width {result.params.get('beam_width')},
top-k {result.params.get('top_k')}, {result.params.get('stages')} stage(s) of up to {result.params.get('max_steps')} tokens,
seed {result.params.get('seed')}. {len(t)} item(s), mode: {html.escape(str(result.summary.get('mode')))}.</p>
<p>Method: zero-shot inversion by adversarial decoding (ZSInvert, arXiv 2504.00147): a causal LM proposes tokens and a beam
search keeps the candidates whose embedding is closest (cosine) to the target. A high cosine with readable text means the
embedding leaks its text. Highlighted: sensitive strings (names, numbers, e-mails, dates; the workbench's regex definition)
of the original that the reconstruction recovers.</p>
<h2>What leaked</h2>
<p>{html.escape(leak_overview(t))}</p>
<h2>Summary</h2>
<table><tr><th>layer</th><th>mean cosine</th><th>mean token F1</th><th>mean BLEU</th><th>exact match</th><th>mean leakage</th></tr>
{summary_rows}</table>
<h2>Items</h2>
<table><tr><th>#</th><th>layer</th><th>original</th><th>reconstruction</th><th>what leaked</th><th>cosine</th><th>token F1</th><th>BLEU</th>
<th>exact</th><th>leakage (n)</th><th>steps</th><th>seconds</th></tr>
{''.join(rows)}</table>
<h2>Reproduce</h2><pre>{html.escape(m.get('cli', ''))}</pre>
<h2>Manifest</h2><pre>{html.escape(json.dumps(m, indent=2, default=str))}</pre>
</body></html>"""
