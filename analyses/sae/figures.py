"""Figures of the SAE analyses, built from their results alone (pages draw them, compute nothing), and
the HTML of a top-activating example with its token highlighted."""

from __future__ import annotations

import html
import json

import numpy as np


def _layout(fig, title: str, height: int = 380):
    fig.update_layout(template="plotly_white", title=title, height=height, margin=dict(l=50, r=20, t=60, b=40))
    return fig


def quality_figure(result):
    """Training curve, the latents' firing densities, and the downstream cost."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = result.summary
    down = s.get("downstream", {})
    fig = make_subplots(rows=1, cols=3, subplot_titles=("training loss (normalised MSE)", "latent density (log10)",
                                                        "downstream cost"))
    log = s.get("training_log") or []
    if log:
        fig.add_trace(go.Scatter(x=[r["step"] for r in log], y=[r["recon"] for r in log], name="nmse"), 1, 1)
        fig.update_yaxes(type="log", row=1, col=1)
    hist = s.get("density_hist", {})
    if hist.get("counts"):
        edges = np.asarray(hist["log10_edges"])
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=hist["counts"], name="live latents"), 1, 2)
    if down.get("kind") == "retrieval":
        names = ["original", "reconstructed", "original_query_reconstructed_index"]
        fig.add_trace(go.Bar(x=["original", "both reconstructed", "reconstructed index"],
                             y=[down[f"mrr_{n}"] for n in names], name="MRR"), 1, 3)
    elif down:
        fig.add_trace(go.Bar(x=["clean", "SAE spliced in", "zero-ablated"],
                             y=[down["ce_clean"], down["ce_sae"], down["ce_zero"]], name="CE (nats)"), 1, 3)
    sae = s.get("sae", {})
    fig = _layout(fig, f"SAE quality — {sae.get('target')}, k={sae.get('k')}, {sae.get('d_sae')} latents, "
                        f"{s.get('density_hist', {}).get('dead', 0)} dead", 400)
    fig.update_layout(margin=dict(t=100))  # room for the title above the subplot titles
    return fig


def features_figure(result):
    """Every feature: density against specificity of its word-contrast label (hover: the label)."""
    import plotly.graph_objects as go

    t = result.table
    live = t[t["density"] > 0]
    fig = go.Figure(go.Scattergl(
        x=live["log10_density"], y=live["specificity"], mode="markers",
        marker=dict(size=6, color=live["max_activation"], colorscale="Viridis", showscale=True,
                    colorbar=dict(title="max act.")),
        text=[f"#{f}: {lab}" for f, lab in zip(live["feature"], live["label"])], hovertemplate="%{text}<extra></extra>"))
    fig.update_xaxes(title_text="log10 density (share of rows it fires on)")
    fig.update_yaxes(title_text="specificity of its label")
    return _layout(fig, f"{len(live)} live features of {len(t)}", 420)


def feature_histogram(result, feature: int):
    """Histogram of one feature's activations (rows it fires on), log-spaced bins."""
    import plotly.graph_objects as go

    row = result.table.set_index("feature").loc[int(feature)]
    edges = np.asarray(result.summary["hist_edges"])
    counts = np.asarray(json.loads(row["hist"]))
    fig = go.Figure(go.Bar(x=np.sqrt(edges[:-1] * edges[1:]), y=counts, width=np.diff(edges), name="rows"))
    used = np.flatnonzero(counts)
    lo, hi = (max(used[0] - 2, 0), min(used[-1] + 3, len(counts))) if len(used) else (0, len(counts))
    fig.update_xaxes(type="log", title_text="activation (log-spaced bins)",
                     range=[np.log10(edges[lo]), np.log10(edges[hi])])
    fig.update_yaxes(title_text="rows")
    return _layout(fig, f"feature {int(feature)}: density {row['density']:.2%}", 300)


def families_figure(result, largest: int = 24):
    """The ``largest`` families as a sunburst: family parents around the centre, their subtrees outward."""
    import plotly.graph_objects as go

    t = result.table
    keep = t["family"].value_counts().head(largest).index
    t = t[t["family"].isin(keep)]
    ids, parents, labels, hover = [], [], [], []
    for _, r in t.iterrows():
        ids.append(f"{r['family']}/{r['feature']}")
        tp = r["tree_parent"]
        parents.append("" if tp is None or (isinstance(tp, float) and np.isnan(tp)) else f"{r['family']}/{int(tp)}")
        labels.append(f"#{r['feature']}")
        hover.append(f"#{r['feature']} {r['label']} (density {r['density']:.2%})")
    fig = go.Figure(go.Sunburst(ids=ids, parents=parents, labels=labels, hovertext=hover, hoverinfo="text",
                                maxdepth=3))
    n = result.summary.get("stats", {}).get("n_families", 0)
    shown = f"the {len(keep)} largest of {n}" if n > len(keep) else f"{n}"
    return _layout(fig, f"{shown} feature families (parent = the denser feature of a tree edge)", 520)


def family_tree_figure(result, family: int):
    """One family as a node-link tree: the parent on the left, each level of its subtree one column to the
    right, nodes sized by density. Each node carries its feature id as ``customdata`` (a click on it opens
    the feature on the page)."""
    import plotly.graph_objects as go

    t = result.table[result.table["family"] == int(family)]
    kids: dict[int, list[int]] = {}
    info = {}
    for _, r in t.iterrows():  # rows are depth-first from the family's parent
        f = int(r["feature"])
        info[f] = r
        tp = r["tree_parent"]
        if not (tp is None or (isinstance(tp, float) and np.isnan(tp))):
            kids.setdefault(int(tp), []).append(f)
    root = int(t[t["depth"] == 0]["feature"].iloc[0])
    y: dict[int, float] = {}
    leaves = [0]

    def place(node: int) -> float:
        children = kids.get(node, [])
        if not children:
            y[node] = leaves[0]
            leaves[0] += 1
        else:
            y[node] = float(np.mean([place(c) for c in children]))
        return y[node]

    place(root)
    ex, ey = [], []  # elbow edges: right from the parent, along to the child's row, right to the child
    for parent, children in kids.items():
        x0 = info[parent]["depth"]
        for c in children:
            ex += [x0, x0 + 0.35, x0 + 0.35, x0 + 1, None]
            ey += [-y[parent], -y[parent], -y[c], -y[c], None]
    nodes = list(y)
    dens = np.array([info[f]["density"] for f in nodes])
    size = 10 + 14 * (np.log10(dens + 1e-6) - np.log10(dens.min() + 1e-6)) / max(np.ptp(np.log10(dens + 1e-6)), 1e-9)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="#bbb", width=1), hoverinfo="skip",
                             showlegend=False))
    fig.add_trace(go.Scatter(
        x=[info[f]["depth"] for f in nodes], y=[-y[f] for f in nodes], mode="markers+text",
        marker=dict(size=size, color=np.log10(dens + 1e-6), colorscale="Viridis", line=dict(width=1, color="#333"),
                    colorbar=dict(title="log10<br>density", thickness=12)),
        text=[f"#{f} {str(info[f]['label'])[:24] if f in kids else str(info[f]['label'])[:44]}" for f in nodes],
        textposition=["top right" if f in kids else "middle right" for f in nodes], textfont=dict(size=11),
        customdata=nodes, showlegend=False,
        hovertemplate=[f"#{f} {info[f]['label']}<br>density {info[f]['density']:.2%}<extra>click to open</extra>"
                       for f in nodes]))
    depth = int(t["depth"].max())
    fig.update_xaxes(visible=False, range=[-0.2, depth + 1.9])
    fig.update_yaxes(visible=False)
    ratio = t["parent_child_ratio"].iloc[0]
    fig = _layout(fig, f"family {int(family)}: parent #{root} and {len(nodes) - 1} descendants "
                       f"(parent–child ratio {ratio:.2f}) — click a node to open it", max(260, 32 * leaves[0] + 90))
    fig.update_layout(clickmode="event+select", dragmode=False)
    return fig


def steering_figure(result):
    """How far the results move toward the feature's top texts as α grows."""
    import plotly.graph_objects as go

    s = result.summary
    sweep = s.get("sweep", [])
    x = [r["alpha"] for r in sweep]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[r["share_in_feature_top"] for r in sweep], name="share among its top texts"))
    fig.add_trace(go.Scatter(x=x, y=[r["cosine_to_feature_centroid"] for r in sweep], name="cosine to their centroid"))
    fig.add_vline(x=s.get("alpha", 0), line_dash="dot")
    fig.update_xaxes(title_text="α")
    return _layout(fig, f"steering with feature {s.get('feature')} ({s.get('feature_label') or 'no label'}), "
                        f"{s.get('mode')}", 340)


def example_html(example: dict, scale: float) -> str:
    """One top-activating example as HTML: the token highlighted in its context (or the text, for sentences)."""
    shade = 0.15 + 0.6 * min(1.0, example["activation"] / scale) if scale > 0 else 0.5
    head = f"<b>{html.escape(example['title'])}</b><br>" if example.get("title") else ""
    if "token" not in example:
        return (f"<div style='margin-bottom:6px'>{head}<span style='background:rgba(255,170,0,{shade:.2f})'>"
                f"{example['activation']:.3f}</span> {html.escape(example['snippet'])}</div>")
    return (f"<div style='margin-bottom:6px;font-family:monospace'>{head}…{html.escape(example['before'])}"
            f"<span style='background:rgba(255,170,0,{shade:.2f});font-weight:bold'>{html.escape(example['token'])}"
            f"</span>{html.escape(example['after'])}… <small>({example['activation']:.2f})</small></div>")
