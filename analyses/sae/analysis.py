"""The four SAE analyses' runs: quality, features, families, steered search (docs/methods.md, "SAEs on
embeddings and residual streams"). Each finds or trains its SAE (:func:`~.runs.load_for_run`), reads
the run's corpus at the SAE's hook from the store and returns a tidy table with a summary.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.params import Param
from workbench.retrieval import query_document_pairs

from .families import family_stats, find_families
from .features import logit_effects
from .quality import retrieval_cost, spliced_loss
from .runs import SAE_PARAMS, corpus_for, feature_records, load_for_run
from .scan import hist_edges, scan
from .settings import max_length_for
from .steering import steered_search

LABEL_KIND = ("word-contrast label: the words whose share of the feature's top examples most exceeds their "
              "share of the corpus (offline; not an LLM label)")
_EXAMPLES = {"top_n": Param(8, "top-activating examples per feature", min=1, max=50),
             "window": Param(8, "tokens of context before the token (half as many after; residual targets)",
                             min=1, max=64)}
QUALITY_PARAMS = {
    **SAE_PARAMS,
    "retrieval_data": Param("abstracts", "table of query/document pairs for the retrieval cost (sentence targets)"),
    "retrieval_query_column": Param("title", "query column"),
    "retrieval_doc_column": Param("abstract", "document column"),
    "retrieval_pairs": Param(0, "first N pairs (0 = all)", min=0),
    "ce_texts": Param(40, "texts for the spliced next-token loss (held-out texts first; residual targets)", min=1),
}
FEATURE_PARAMS = {**SAE_PARAMS, **_EXAMPLES,
                  "logit_effects": Param(True, "tokens each decoder direction promotes / suppresses (residual targets)")}
FAMILY_PARAMS = {
    **SAE_PARAMS, **_EXAMPLES,
    "max_density": Param(0.2, "candidate features fire on fewer than this share of rows (the paper: 0.2)",
                         min=0, max=1, closed="right"),
    "threshold": Param(0.1, "co-occurrence entries below this are no edge (the paper: 0.1)", min=0, max=1),
    "rounds": Param(3, "extra rounds with the parents found removed (the paper: 3)", min=0, max=10),
    "min_children": Param(4, "smallest family kept (the paper: more than 3 children)", min=1),
}
STEERING_PARAMS = {
    **SAE_PARAMS,
    "query": Param("learning word embeddings from large text corpora", "the search query"),
    "feature": Param(-1, "feature to steer with (-1: add: the most specific feature firing on 1-20% of texts "
                         "that the query does not activate; remove: the query's strongest feature)", min=-1),
    "alpha": Param(1.0, "steering strength α (q' = q + α d_f, d_f a unit decoder row: α = 1 is as long as a "
                        "normalised query; remove: q' = q − α z_f(q) d_f)", min=0),
    "mode": Param("add", "add the feature's direction or remove the query's own share of it",
                  choices=("add", "remove")),
    "results": Param(10, "results shown before and after", min=1, max=100),
    "feature_texts": Param(20, "the feature's top texts (what the results move toward)", min=1),
}


# ---- sae_quality ----------------------------------------------------------------------------
def run_quality(ctx):
    loaded = load_for_run(ctx)
    corpus = corpus_for(ctx, loaded)
    rows, density = [], None
    for split, source in corpus.splits.items():
        result = scan(loaded.sae, source, progress=ctx.progress)
        rows.append({"split": split, **result.quality()})
        density = result.density if density is None else density
    downstream = (_spliced(ctx, loaded, corpus) if corpus.target.token_level else _retrieval(ctx, loaded))
    for row in rows:
        row.update({f"downstream_{k}": v for k, v in downstream.items() if isinstance(v, float)})
    live = density[density > 0]
    counts, edges = np.histogram(np.log10(live), bins=30, range=(-6, 0)) if len(live) else (np.zeros(30), None)
    summary = {"sae": loaded.describe(), "downstream": downstream,
               "training_log": (loaded.info.get("training") or {}).get("log", []),
               "density_hist": {"log10_edges": np.linspace(-6, 0, 31).tolist(), "counts": counts.tolist(),
                                "dead": int((density == 0).sum())},
               "split_rule": "train / heldout: the SAE's own split of this data; all: other data"}
    return pd.DataFrame(rows), summary


def _retrieval(ctx, loaded) -> dict:
    p, hook = ctx.params, loaded.target.hook
    queries, documents = query_document_pairs(p["retrieval_data"], p["retrieval_query_column"],
                                              p["retrieval_doc_column"], p["retrieval_pairs"])
    max_length = max_length_for(loaded.settings)
    Q = ctx.activations([hook], max_length=max_length, dataset=queries).layer(hook)
    D = ctx.activations([hook], max_length=max_length, dataset=documents).layer(hook)
    return {"kind": "retrieval", "queries": queries.name, "documents": documents.name,
            **retrieval_cost(loaded.sae, Q, D)}


def _spliced(ctx, loaded, corpus) -> dict:
    held = [int(i) for i in (loaded.info.get("data") or {}).get("heldout_texts", []) if i < corpus.entry.n_texts]
    if "heldout" not in corpus.splits:
        held = []
    order = held + [i for i in range(corpus.entry.n_texts) if i not in set(held)]
    texts = order[:int(ctx.params["ce_texts"])]
    seqs = [corpus.entry.token_ids(i).tolist() for i in texts]
    out = spliced_loss(ctx.model, loaded.sae, seqs, loaded.target.hook, bool(loaded.settings.get("skip_first")))
    return {"kind": "spliced next-token loss", "texts": "held-out texts first" if held else "first texts", **out}


# ---- sae_features ---------------------------------------------------------------------------
def run_features(ctx):
    loaded = load_for_run(ctx)
    corpus = corpus_for(ctx, loaded)
    p = ctx.params
    effects = None
    if corpus.target.token_level and p["logit_effects"]:
        effects = logit_effects(loaded.sae, ctx.model)
    records, result = feature_records(ctx, loaded, corpus, top_n=int(p["top_n"]), window=int(p["window"]),
                                      effects=effects)
    summary = {"sae": loaded.describe(), "n_features": loaded.sae.d_sae, "alive": int((result.counts > 0).sum()),
               "n_rows": int(result.n_rows), "token_level": corpus.target.token_level, "label_kind": LABEL_KIND,
               "hist_edges": hist_edges().tolist(), "quality": result.quality(),
               "logit_effects": "(LN_f(d_f) - LN_f(0)) W_U" if effects else None}
    return pd.DataFrame(records), summary


# ---- sae_families ---------------------------------------------------------------------------
def run_families(ctx):
    loaded = load_for_run(ctx)
    corpus = corpus_for(ctx, loaded)
    p = ctx.params
    records, result = feature_records(ctx, loaded, corpus, top_n=int(p["top_n"]), window=int(p["window"]),
                                      cooccurrence=True)
    families = find_families(result.cooc, result.counts, result.n_rows, max_density=float(p["max_density"]),
                             threshold=float(p["threshold"]), rounds=int(p["rounds"]),
                             min_children=int(p["min_children"]))
    stats = family_stats(result.cooc, families, ctx.seed)
    table = pd.DataFrame(_family_rows(families, records, stats["parent_child_ratio"]),
                         columns=["family", "root", "feature", "tree_parent", "depth", "density", "label",
                                  "parent_child_ratio"])
    summary = {"sae": loaded.describe(), "stats": stats, "n_rows": int(result.n_rows),
               "candidates": int(((result.counts >= 2) & (result.density < float(p["max_density"]))).sum()),
               "unit": "token" if corpus.target.token_level else "text", "label_kind": LABEL_KIND,
               "families": [{"parent": f["parent"], "children": f["children"]} for f in families]}
    return table, summary


def _family_rows(families: list[dict], records: list[dict], ratios: list[float]) -> list[dict]:
    """One row per family member, depth-first from the family's parent (children in feature order)."""
    rows = []
    for n, (fam, ratio) in enumerate(zip(families, ratios)):
        kids: dict[int, list[int]] = {}
        for parent, child in fam["edges"]:
            kids.setdefault(parent, []).append(child)
        stack = [(fam["parent"], None, 0)]
        while stack:
            feature, parent, depth = stack.pop()
            stack.extend((c, feature, depth + 1) for c in sorted(kids.get(feature, []), reverse=True))
            rows.append({"family": n, "root": fam["parent"], "feature": feature, "tree_parent": parent, "depth": depth,
                         "density": records[feature]["density"], "label": records[feature]["label"],
                         "parent_child_ratio": ratio})
    return rows


# ---- sae_steering ---------------------------------------------------------------------------
@torch.no_grad()
def _activations(sae, X: np.ndarray, batch: int = 2048) -> np.ndarray:
    """Dense codes float32 ``[N, d_sae]`` of a small corpus (the texts being searched)."""
    parts = [sae.encode(torch.as_tensor(X[s:s + batch]).to(sae.W_enc.device)).cpu().numpy()
             for s in range(0, len(X), batch)]
    return np.concatenate(parts)


def auto_feature(records: list[dict], query_codes: np.ndarray, mode: str = "add") -> int:
    """The rule of ``feature=-1``. add: among features firing on 1–20% of texts and not on the query, the most
    specific; remove: the feature firing most strongly on the query."""
    if mode == "remove":
        if not (query_codes > 0).any():
            raise WorkbenchError("no feature fires on this query: nothing to remove.")
        return int(np.argmax(query_codes))
    ok = [r for r in records if 0.01 <= r["density"] <= 0.2 and query_codes[r["feature"]] <= 0]
    pool = ok or [r for r in records if r["density"] > 0 and query_codes[r["feature"]] <= 0]
    if not pool:
        raise WorkbenchError("no live feature is silent on this query: give feature= explicitly.")
    return int(max(pool, key=lambda r: (r["specificity"], r["density"]))["feature"])


def run_steering(ctx):
    from workbench.hooked import embed_numpy

    loaded = load_for_run(ctx)
    if loaded.target.token_level:
        raise WorkbenchError("steered semantic search needs an SAE on sentence embeddings (target=sentence, an "
                             "embedder such as minilm-l6).")
    corpus = corpus_for(ctx, loaded)
    p = ctx.params
    X = corpus.rows.rows(np.arange(corpus.rows.n_rows))
    codes = _activations(loaded.sae, X)
    records, _ = feature_records(ctx, loaded, corpus, top_n=int(p["feature_texts"]), window=8)
    q = embed_numpy(ctx.model, [str(p["query"])], max_length=max_length_for(loaded.settings))[0]
    q_codes = _activations(loaded.sae, q[None].astype(np.float32))[0]
    feature = int(p["feature"]) if int(p["feature"]) >= 0 else auto_feature(records, q_codes, p["mode"])
    if feature >= loaded.sae.d_sae:
        raise WorkbenchError(f"feature must be in 0..{loaded.sae.d_sae - 1}; got {feature}.")
    alpha = float(p["alpha"])
    sweep = np.linspace(0, max(4 * alpha, 2.0), 11)
    res = steered_search(q, X, codes[:, feature], loaded.sae, feature, alpha, p["mode"], int(p["results"]),
                         int(p["feature_texts"]), sweep)
    table = pd.DataFrame(_steering_rows(corpus, res, codes[:, feature]))
    summary = {"sae": loaded.describe(), "query": p["query"], "feature": feature,
               "feature_label": records[feature]["label"], "feature_density": records[feature]["density"],
               "query_activation": float(q_codes[feature]), "alpha": alpha, "mode": p["mode"],
               "before": res["moved_before"], "after": res["moved_after"], "sweep": res["sweep"],
               "feature_top_texts": [int(i) for i in res["feature_top"]], "label_kind": LABEL_KIND,
               "feature_examples": json.loads(records[feature]["examples"])[:3]}
    return table, summary


def _steering_rows(corpus, res: dict, activation: np.ndarray) -> list[dict]:
    titles = corpus.dataset.frame["title"].astype(str).tolist() if "title" in corpus.dataset.frame.columns else None
    top = set(res["feature_top"].tolist())
    rows = []
    for rank, (b, a) in enumerate(zip(res["before"], res["after"]), start=1):
        row = {"rank": rank}
        for side, i, scores in (("before", b, res["score_before"]), ("after", a, res["score_after"])):
            text = corpus.dataset.texts[int(i)]
            row.update({f"{side}_text": int(i), f"{side}_title": titles[int(i)] if titles else "",
                        f"{side}_snippet": text[:160] + ("…" if len(text) > 160 else ""),
                        f"{side}_score": float(scores[int(i)]), f"{side}_activation": float(activation[int(i)]),
                        f"{side}_in_feature_top": int(i) in top})
        rows.append(row)
    return rows
