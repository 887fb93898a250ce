"""The ``logit_lens`` and ``tuned_lens`` analyses: per layer × position decoding from the store.

Rows of the result table (one per lens × site × layer × text × position):
``lens`` (logit | tuned), ``site`` (resid_post | resid_mid), ``layer`` (float: ``l`` for the residual
stream at layer l, ``b + 0.5`` for block b's ``hook_resid_mid``, i.e. after its attention), ``text``,
``position``, ``input_token``, ``target_token``, ``p_target``, ``rank``, ``kl`` (nats, KL(final ‖
layer)), ``entropy`` (nats), ``top1``, ``p_top1``, ``topk_tokens`` and ``topk_probs`` (JSON lists).

Activations come from the activation store (``ctx.activations``), stored per text without padding,
so no pad position ever enters a statistic. Positions are processed in chunks of at most
:data:`~analyses.lenses.core.CHUNK`; the final distribution of each chunk is computed once from the
last layer and reused for every layer's KL.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.analysis import Param
from workbench.errors import WorkbenchError

from .core import CHUNK, StatsBuffers, Unembed, final_logprobs, lens_logprobs, stats_from_logprobs
from .train import find_lens, load_lens, states, train_command_hint

TARGETS = ("final_top1", "next_token")


def _check_target(target: str) -> str:
    """A target is final_top1, next_token or a literal token: any non-empty string (one token is checked
    against the model's tokenizer when it runs)."""
    if not target:
        raise ValueError("empty target")
    return target


PARAMS = {
    "max_texts": Param(16, "use the first N texts of the dataset", min=1),
    "max_length": Param(64, "tokens per text (longer texts are truncated)", min=1),
    "top_k": Param(5, "top tokens kept per layer and position", min=1),
    "target": Param("final_top1", "token whose probability and rank are tracked: final_top1 (the model's own "
                    "prediction), next_token (the text's next token), or a literal token such as ' Paris'",
                    check=_check_target, allowed=f"{', '.join(TARGETS)} or a literal token such as \" Paris\""),
    "resid_mid": Param(False, "also decode after each attention sublayer (hook_resid_mid; logit lens only)"),
}


def _target_ids(target: str, model, ids: np.ndarray, logp_final: torch.Tensor, is_last: np.ndarray) -> torch.Tensor:
    if target == "final_top1":
        return logp_final.argmax(-1)
    if target == "next_token":
        nxt = np.roll(ids, -1)
        # the last position of a text has no next token: fall back to the model's own top-1 there
        return torch.where(torch.from_numpy(is_last).to(logp_final.device), logp_final.argmax(-1),
                           torch.from_numpy(nxt).to(logp_final.device))
    token = model.tokenizer.encode(target, add_special_tokens=False)
    if len(token) != 1:
        raise WorkbenchError(f"target {target!r} is {len(token)} tokens for {model.name}; give a single token "
                             f"(e.g. ' Paris' with its leading space), or final_top1 / next_token.")
    return torch.full((len(ids),), token[0], dtype=torch.long, device=logp_final.device)


def _decoder(tokenizer):
    cache: dict[int, str] = {}

    def decode(ids) -> list[str]:
        missing = sorted({int(i) for i in np.ravel(ids)} - cache.keys())
        if missing:
            for i, s in zip(missing, tokenizer.batch_decode([[i] for i in missing])):
                cache[i] = s
        return [cache[int(i)] for i in np.ravel(ids)]

    return decode


def lens_table(model, entry, lenses: dict, *, top_k: int = 5, target: str = "final_top1",
               resid_mid: bool = False, progress=None, chunk: int = CHUNK) -> pd.DataFrame:
    """Decode every stored position of ``entry`` at every layer with each lens in ``lenses``.

    ``lenses``: ``{"logit": None, "tuned": TunedLens}``. Returns the tidy table described in the module
    docstring. Memory: a few ``chunk × V`` float32 matrices at a time.
    """
    unembed = Unembed.from_model(model)
    lenses = {name: (None if t is None else t.to(unembed.device)) for name, t in lenses.items()}
    L = model.n_layers
    post_hooks = model.resid_hooks()
    mid_hooks = model.hook_names("resid_mid") if resid_mid else []
    decode = _decoder(model.tokenizer)
    # group whole texts into chunks of <= chunk positions (a long text is split)
    spans, cur, cur_n = [], [], 0
    for i in range(entry.n_texts):
        for s in range(0, int(entry.lengths[i]), chunk):
            n = min(chunk, int(entry.lengths[i]) - s)
            if cur_n + n > chunk and cur:
                spans.append(cur)
                cur, cur_n = [], 0
            cur.append((i, s, n))
            cur_n += n
    if cur:
        spans.append(cur)
    sites = [("resid_post", float(layer), post_hooks[layer], layer) for layer in range(L + 1)]
    sites += [("resid_mid", b + 0.5, h, None) for b, h in enumerate(mid_hooks)]
    parts, buffers = [], StatsBuffers()  # one set of [chunk, V] scratch tensors for the whole run
    for n_done, span in enumerate(spans):
        idx = np.concatenate([entry.offsets[i] + np.arange(s, s + n) for i, s, n in span])
        text = np.concatenate([np.full(n, i) for i, s, n in span])
        pos = np.concatenate([np.arange(s, s + n) for i, s, n in span])
        ids = np.concatenate([entry.token_ids(i)[s:s + n] for i, s, n in span])
        is_last = pos == entry.lengths[text] - 1
        input_tokens = np.concatenate([np.asarray(entry.token_strings(i)[s:s + n], dtype=object) for i, s, n in span])
        with torch.no_grad():
            logp_final = final_logprobs(unembed, states(entry, post_hooks[L], idx))
            p_final = logp_final.exp()  # shared by every layer's KL
            tgt = _target_ids(target, model, ids, logp_final, is_last)
            target_tokens = decode(tgt.cpu().numpy())
            for lens_name, tuned in lenses.items():
                for site, layer_value, hook, layer in sites:
                    if site == "resid_mid" and tuned is not None:
                        continue  # translators exist only for the residual stream between blocks
                    h = states(entry, hook, idx)
                    if layer == L:
                        logp = logp_final  # the model's own output: the final norm is applied once
                    else:
                        logp = lens_logprobs(unembed, h, layer, tuned if site == "resid_post" else None, buffers)
                    st = stats_from_logprobs(logp, logp_final, tgt, top_k, p_final=p_final, buffers=buffers)
                    top_tokens = np.asarray(decode(st.topk_ids), dtype=object).reshape(st.topk_ids.shape)
                    parts.append(pd.DataFrame({
                        "lens": lens_name, "site": site, "layer": layer_value, "text": text, "position": pos,
                        "input_token": input_tokens, "target_token": target_tokens,
                        "p_target": st.p_target, "rank": st.rank, "kl": st.kl, "entropy": st.entropy,
                        "top1": top_tokens[:, 0], "p_top1": st.topk_probs[:, 0],
                        "topk_tokens": [json.dumps(list(r)) for r in top_tokens],
                        "topk_probs": [json.dumps([round(float(p), 6) for p in r]) for r in st.topk_probs],
                    }))
        if progress is not None:
            progress(n_done + 1, len(spans), f"decoded {n_done + 1}/{len(spans)} chunks")
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(["lens", "text", "position", "layer"], kind="stable").reset_index(drop=True)


def layer_means(table: pd.DataFrame) -> pd.DataFrame:
    """Per lens, site and layer: mean KL, mean and median rank, mean entropy, mean p_target."""
    g = table.groupby(["lens", "site", "layer"], sort=True)
    return g.agg(kl=("kl", "mean"), rank=("rank", "mean"), median_rank=("rank", "median"),
                 entropy=("entropy", "mean"), p_target=("p_target", "mean"), n=("kl", "size")).reset_index()


def _run(ctx, lens_kind: str):
    model = ctx.require_model()
    if model.kind != "decoder":
        raise WorkbenchError(f"The {lens_kind} lens needs a decoder-only model; {model.name} is a {model.kind}.")
    p = ctx.params
    lenses: dict = {"logit": None}
    summary: dict = {}
    if lens_kind == "tuned":
        folder = find_lens(model)
        if folder is None:
            raise WorkbenchError(f"No trained tuned lens for {model.fingerprint}. Train one with "
                                 f"`{train_command_hint(model.name)}`: it samples a training corpus from the model, then trains "
                                 "(resumable; the README's lens sections give the recorded times of the shipped lenses).")
        tuned, meta = load_lens(folder)
        if tuned.n_layers != model.n_layers or tuned.d_model != model.d_model:
            raise WorkbenchError(f"The lens in {folder} has {tuned.n_layers} layers × d={tuned.d_model}, "
                                 f"the model {model.n_layers} × {model.d_model}: retrain it.")
        if not p.get("compare_logit", True):
            lenses = {}
        lenses["tuned"] = tuned
        summary["lens_folder"] = str(folder)
        summary["lens_heldout_kl"] = meta.get("heldout_kl")
        summary["lens_deviations"] = meta.get("deviations")
        summary["lens_settings"] = meta.get("settings")
        # losses: per step, the training KL and the gradient norm before clipping (the README counts the clipped steps)
        summary["lens_training"] = {k: meta.get(k) for k in ("fingerprint", "recipe", "settings", "curve",
                                                             "convergence", "data", "timings", "losses")}
    dataset = ctx.require_dataset().subset(int(p["max_texts"]))
    hooks = model.resid_hooks() + (model.hook_names("resid_mid") if p.get("resid_mid") else [])
    entry = ctx.activations(hooks, max_length=int(p["max_length"]), dataset=dataset)
    table = lens_table(model, entry, lenses, top_k=int(p["top_k"]), target=str(p["target"]),
                       resid_mid=bool(p.get("resid_mid")), progress=ctx.progress_fn)
    means = layer_means(table)
    last = table[table["layer"] == model.n_layers]
    summary.update({
        "n_texts": int(entry.n_texts), "n_positions": int(entry.n_tokens), "n_layers": model.n_layers,
        "target": p["target"], "kl_units": "nats", "kl_direction": "KL(p_final || p_layer)",
        "rank_definition": "1 + #{v : p_l(v) > p_l(target)}",
        "last_layer_max_kl": float(last["kl"].max()),
        "last_layer_max_rank": int(last["rank"].max()),
        "per_layer": json.loads(means[means["site"] == "resid_post"].round(6).to_json(orient="records")),
    })
    return table, summary


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
COLOR_BY = {"p_top1": "probability of the top token", "p_target": "probability of the target",
            "kl": "KL(final ‖ layer), nats", "rank": "rank of the target (log scale)", "entropy": "entropy, nats"}
#: colour bars of unbounded quantities stop at this percentile of the shown cells (layer 0 would saturate them)
CLIP_PERCENTILE = 99
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "↵"}


def visible(token: str, width: int = 10) -> str:
    """A token as a cell label: whitespace shown (␣ ↵ ⇥), empty as ∅, cut to ``width`` characters."""
    shown = "".join(_VISIBLE.get(ch, ch) for ch in str(token)) or "∅"
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def color_range(tables: list[pd.DataFrame], color: str) -> tuple[float, float]:
    """One colour range for every panel showing ``color`` (so one colour means one value): [0, 1] for
    probabilities, else from 0 (rank: from 1) to the :data:`CLIP_PERCENTILE` percentile of all cells."""
    if color in {"p_top1", "p_target"}:
        return 0.0, 1.0
    values = np.concatenate([t[color].to_numpy(dtype=float) for t in tables if len(t)])
    if color == "rank":
        return 0.0, max(float(np.log10(np.nanpercentile(values, CLIP_PERCENTILE))), 1.0)
    return 0.0, max(float(np.nanpercentile(values, CLIP_PERCENTILE)), 1e-6)


def _grid(sub: pd.DataFrame, color: str):
    layers = np.sort(sub["layer"].unique())
    positions = np.sort(sub["position"].unique())
    shape = (len(layers), len(positions))
    z = np.full(shape, np.nan)
    cell, hover = np.full(shape, "", dtype=object), np.full(shape, "", dtype=object)
    li = {v: k for k, v in enumerate(layers)}
    pi = {v: k for k, v in enumerate(positions)}
    for (layer, position), row in sub.set_index(["layer", "position"]).iterrows():
        r, c = li[layer], pi[position]
        value = row[color]
        z[r, c] = np.log10(value) if color == "rank" else value
        cell[r, c] = visible(row["top1"], 8)
        tops = json.loads(row["topk_tokens"])
        probs = json.loads(row["topk_probs"])
        hover[r, c] = (f"layer {layer:g}, pos {position} {visible(row['input_token'], 30)}<br>"
                       + "<br>".join(f"{visible(t, 30)}: {q:.3f}" for t, q in zip(tops, probs))
                       + f"<br>target {visible(row['target_token'], 30)}: p={row['p_target']:.3g}, rank {row['rank']}"
                       + f"<br>KL {row['kl']:.3f} nats, entropy {row['entropy']:.3f}")
    return layers, positions, z, cell, hover


def heatmap(table: pd.DataFrame, lens: str = "logit", text: int = 0, color: str = "p_top1",
            site: str | None = None, zrange: tuple[float, float] | None = None) -> go.Figure:
    """Layers × positions of one text; cell text = top token, colour = ``color``, hover = top-k.

    ``zrange``: the colour range (give the same to every panel compared; default :func:`color_range`)."""
    sub = table[(table["lens"] == lens) & (table["text"] == text)]
    if site is not None:
        sub = sub[sub["site"] == site]
    if sub.empty:
        raise WorkbenchError(f"No rows for lens {lens!r}, text {text}.")
    layers, positions, z, cell, hover = _grid(sub, color)
    inputs = sub.drop_duplicates("position").set_index("position")["input_token"]
    ticks = [f"{p}: {visible(inputs.get(p, ''), 12)}" for p in positions]
    lo, hi = zrange or color_range([sub], color)
    bar = {"title": {"text": COLOR_BY.get(color, color).replace(", ", "<br>").replace(" (", "<br>("), "side": "right"}}
    if color == "rank":
        ticks_at = [v for v in range(int(hi) + 1)]
        bar.update(tickvals=ticks_at, ticktext=[f"{10 ** v:g}" for v in ticks_at])
    scale = "Viridis" if color in {"p_top1", "p_target"} else "Viridis_r"
    fig = go.Figure(go.Heatmap(z=z, x=ticks, y=[f"{v:g}" for v in layers], text=cell, texttemplate="%{text}",
                               textfont={"size": 9}, customdata=hover, hovertemplate="%{customdata}<extra></extra>",
                               colorscale=scale, colorbar=bar, zmin=lo, zmax=hi))
    clip = "" if color in {"p_top1", "p_target"} else f"; colour clipped at the {CLIP_PERCENTILE}th percentile"
    # short lines: the page shows the logit and tuned lens side by side, each in half the width
    fig.update_layout(title={"text": f"{lens} lens · text {text}<br><sup>top token per layer and position; "
                             f"␣ = space, ↵ = newline<br>colour: {COLOR_BY.get(color, color)}{clip}</sup>"},
                      xaxis={"title": "position: input token", "tickangle": -45},
                      yaxis_title="layer (0 = embeddings)",
                      height=max(480, 18 * len(layers) + 200), template="plotly_white",
                      margin=dict(t=110, l=70, r=30, b=120))
    return fig


#: the KL panels switch to a log axis when the positive per-layer means span more than this factor
#: (the logit lens's first layers sit at tens to hundreds of nats on the built-in models, the late layers
#: and the tuned lens below one: on a linear axis everything but layer 0 lies on the floor)
KL_LOG_SPAN = 30.0


def kl_axis(fig: go.Figure, kl: pd.Series, row: int, col: int, title: str) -> None:
    """Set a KL panel's y-axis: log when ``max/min`` of the positive values exceeds :data:`KL_LOG_SPAN`.

    A log axis cannot show values of exactly 0 (the last layer, decoded by the model itself): the panel's
    traces end at the last positive point instead of diving off the axis, and the axis title says so."""
    positive = kl[kl > 0]
    if positive.empty or positive.max() / positive.min() <= KL_LOG_SPAN:
        fig.update_yaxes(title_text=title, row=row, col=col)
        return
    fig.for_each_trace(lambda t: t.update(y=[y if y is not None and y > 0 else None for y in t.y]),
                       row=row, col=col)
    decades = range(int(np.floor(np.log10(positive.min()))), int(np.ceil(np.log10(positive.max()))) + 1)
    fig.update_yaxes(type="log", row=row, col=col, range=[decades[0], decades[-1]],
                     tickvals=[10.0 ** d for d in decades], ticktext=[f"{10.0 ** d:g}" for d in decades],
                     title_text=f"{title} (log; 0 not drawn)" if (kl <= 0).any() else f"{title} (log)")


def curves(table: pd.DataFrame) -> go.Figure:
    """Per-layer means over every position: KL, rank (log axis from 1) and entropy, one line per lens/site."""
    means = layer_means(table)
    fig = make_subplots(rows=1, cols=3, subplot_titles=("KL(final ‖ layer)", "mean rank of the target",
                                                        "entropy"))
    colors = {"logit": "#1f77b4", "tuned": "#d62728"}
    for (lens, site), g in means.groupby(["lens", "site"], sort=False):
        name = f"{lens} lens" + (" (after attention)" if site == "resid_mid" else "")
        dash = "dot" if site == "resid_mid" else "solid"
        for col, key in enumerate(["kl", "rank", "entropy"], start=1):
            fig.add_trace(go.Scatter(x=g["layer"], y=g[key], name=name, legendgroup=name, showlegend=col == 1,
                                     mode="lines+markers", line={"color": colors.get(lens), "dash": dash},
                                     hovertemplate=f"layer %{{x}}<br>{key} %{{y:.4g}}<extra>{name}</extra>"),
                          row=1, col=col)
    top = max(float(means["rank"].max()), 10.0)
    decades = list(range(int(np.ceil(np.log10(top))) + 1))
    fig.update_yaxes(type="log", row=1, col=2, range=[0, np.log10(top) * 1.05],
                     tickvals=[10 ** d for d in decades], ticktext=[f"{10 ** d:,}" for d in decades], title_text="rank")
    kl_axis(fig, means["kl"], row=1, col=1, title="nats")
    fig.update_yaxes(title_text="nats", row=1, col=3)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(height=400, template="plotly_white", margin=dict(t=70, l=60, r=20, b=50),
                      title=f"Per-layer means over {table.drop_duplicates(['text', 'position']).shape[0]} positions")
    return fig


def figure(result) -> go.Figure:
    """Default figure: heatmap(s) of text 0 (one per lens) above the per-layer KL curves.

    Laid out for export (PNG/SVG at the page's width): short panel titles, the colour bar beside the
    heatmaps only, the legend inside the KL panel, and the KL panel's labels on its own axes so the
    heatmaps' slanted token labels never run into them.
    """
    table = result.table
    lenses = list(dict.fromkeys(table["lens"]))
    fig = make_subplots(rows=2, cols=len(lenses), row_heights=[0.7, 0.3], vertical_spacing=0.17,
                        horizontal_spacing=0.08, subplot_titles=[f"{lens} lens · text 0" for lens in lenses],
                        specs=[[{}] * len(lenses), [{"colspan": len(lenses)}] + [None] * (len(lenses) - 1)])
    for c, lens in enumerate(lenses, start=1):
        hm = heatmap(table[table["site"] == "resid_post"], lens=lens, text=0, color="p_top1").data[0]
        hm.showscale = c == len(lenses)
        hm.colorbar.update(len=0.62, y=1.0, yanchor="top", thickness=14)
        fig.add_trace(hm, row=1, col=c)
    for trace in curves(table).data:
        if trace.xaxis in (None, "x"):  # the KL panel
            fig.add_trace(trace, row=2, col=1)
    fig.update_xaxes(tickangle=-45, row=1)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=2, col=1)
    kl_axis(fig, layer_means(table)["kl"], row=2, col=1, title="KL(final ‖ layer), nats")
    n_layers = table["layer"].nunique()
    n_texts = result.summary.get("n_texts", "?")
    fig.update_layout(height=max(760, 18 * n_layers + 500), template="plotly_white",
                      legend=dict(x=0.99, xanchor="right", y=0.26, yanchor="top", bgcolor="rgba(255,255,255,0.8)"),
                      margin=dict(t=90, l=70, r=30, b=60),
                      title=f"{' vs '.join(lenses)} lens ({n_texts} text{'' if n_texts == 1 else 's'}; "
                            "colour: probability of the top token)")
    return fig
