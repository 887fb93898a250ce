"""Feature families: parent–child structure among SAE features from their co-activation, after O'Neill
et al. 2024 (``saerch/family.py``, ``matrix.py``, ``family_stats.py``; docs/methods.md, "SAEs on
embeddings and residual streams").

1. Candidates: live features with density below ``max_density`` (the paper: 0.2) and at least
   ``min_count`` firing rows. (The paper also keeps only features whose LLM label scored F1 and Pearson
   >= 0.8; there is no LLM here, so no label filter: a deviation.)
2. ``N[i, j] = C[i, j] / (C[i, i] + 1)`` (≈ P(j fires | i fires)), diagonal 0, entries below
   ``threshold`` (0.1) set to 0, the others to ``exp(N)`` (``get_norm_cooc``).
3. Maximum spanning forest of ``N`` (Kruskal in the reference; here scipy's minimum spanning tree of
   ``−N``: the same forest up to ties), each edge directed from the denser to the sparser feature. ``N``
   is not symmetric: an edge weighs the larger of ``N[i, j]`` and ``N[j, i]`` (a deviation: the
   reference's networkx graph keeps whichever entry of the pair it reads last).
4. Families: every node with no parent and more than two children is a parent; its family is its whole
   subtree. The search recurses into each subtree with its root removed (``recursive_subtree``).
5. Three more rounds with the parents found so far removed from the candidates (``subtree_iterate``),
   with the same threshold (a deviation: the reference's later rounds, ``delete_top``, use
   ``get_norm_cooc``'s default 0.07). A latent co-occurs where ``z > 0`` (the reference counts every
   top-k index, a zero value included).
6. Families with more than three children are kept; of two whose children overlap by Jaccard > 0.6
   the larger stays (``deduplicate_families``).

Checks of the paper's claims (``family_stats.py``), with ``M[i, j] = C[i, j] / min(C[i, i], C[j, j])``:
the *parent–child ratio* of a family is the mean of ``M[parent, child]`` over its children divided by the
mean of ``M[child, child']`` over pairs of distinct children (the reference includes the diagonal of
ones in the denominator; left out here); above 1: the parent co-occurs with its children more than
they do with each other. The *block share* is the share of ``M``'s mass inside the family blocks when
the features are ordered family by family, compared with the same blocks after a seeded random order.
"""

from __future__ import annotations

import numpy as np


def normalized_cooccurrence(cooc: np.ndarray, ids: np.ndarray, threshold: float) -> np.ndarray:
    """``exp(N)`` on the entries of ``N = C / (diag + 1)`` (rows) at or above ``threshold``, else 0."""
    norm = cooc / (np.diag(cooc) + 1)[:, None]
    sub = norm[np.ix_(ids, ids)].copy()
    np.fill_diagonal(sub, 0)
    sub[sub < threshold] = 0
    sub[sub > 0] = np.exp(sub[sub > 0])
    return sub


def directed_forest(weights: np.ndarray, density: np.ndarray) -> dict[int, list[int]]:
    """Children of each node (local indices) in the maximum spanning forest, edges denser -> sparser."""
    from scipy.sparse import csr_matrix  # imported here: discovery imports every back-end on each run
    from scipy.sparse.csgraph import minimum_spanning_tree

    tree = minimum_spanning_tree(csr_matrix(-np.triu(np.maximum(weights, weights.T)))).tocoo()
    children: dict[int, list[int]] = {i: [] for i in range(len(weights))}
    for u, v in zip(tree.row, tree.col):
        parent, child = (u, v) if density[u] > density[v] else (v, u)
        children[int(parent)].append(int(child))
    return children


def _subtree(children: dict, root: int, removed: set) -> list[int]:
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        for c in children[node]:
            if c not in removed:
                out.append(c)
                stack.append(c)
    return out


def recursive_families(children: dict, removed: set | None = None) -> list[tuple[int, list[int]]]:
    """(parent, descendants) for every root with more than two children, recursing without each root."""
    removed = set(removed or ())
    alive = [n for n in children if n not in removed]
    has_parent = {c for n in alive for c in children[n] if c not in removed}
    found = []
    for root in alive:
        kids = [c for c in children[root] if c not in removed]
        if root in has_parent or len(kids) <= 2:
            continue
        members = _subtree(children, root, removed)
        found.append((root, members))
        if len(members) > 1:  # the subtree without its root: its own roots are the next parents
            inside = {n: [c for c in children[n] if c in members] for n in members}
            found += recursive_families(inside)
    return found


def find_families(cooc: np.ndarray, counts: np.ndarray, n_rows: int, *, max_density: float = 0.2,
                  min_count: int = 2, threshold: float = 0.1, rounds: int = 3, min_children: int = 4,
                  max_overlap: float = 0.6) -> list[dict]:
    """Families as ``{"parent", "children" (feature ids, subtree order), "edges" [(parent, child)]}``."""
    density = counts / max(n_rows, 1)
    candidates = [int(f) for f in np.flatnonzero((counts >= min_count) & (density < max_density))]
    families, parents = [], set()
    for _ in range(rounds + 1):
        ids = np.array([f for f in candidates if f not in parents], dtype=np.int64)
        if len(ids) < 2:
            break
        children = directed_forest(normalized_cooccurrence(cooc, ids, threshold), density[ids])
        found = recursive_families(children)
        for root, members in found:
            edges = [(int(ids[p]), int(ids[c])) for p in [root, *members] for c in children[p] if c in members]
            families.append({"parent": int(ids[root]), "children": [int(ids[m]) for m in members], "edges": edges})
        parents |= {int(ids[root]) for root, _ in found}
    return deduplicate([f for f in families if len(f["children"]) >= min_children], max_overlap)


def deduplicate(families: list[dict], max_overlap: float) -> list[dict]:
    """Drop the smaller of two families whose children overlap by Jaccard above ``max_overlap``."""
    kept: list[dict] = []
    for fam in sorted(families, key=lambda f: (-len(f["children"]), f["parent"])):
        mine = set(fam["children"])
        if all(len(mine & set(k["children"])) / len(mine | set(k["children"])) <= max_overlap for k in kept):
            kept.append(fam)
    return kept


def min_normalized(cooc: np.ndarray) -> np.ndarray:
    diag = np.diag(cooc)
    return cooc / np.maximum(np.minimum.outer(diag, diag), 1)


def parent_child_ratio(M: np.ndarray, fam: dict) -> float:
    """Mean ``M[parent, child]`` over mean ``M[child, child']`` (distinct children); inf when the latter is 0."""
    kids = np.asarray(fam["children"])
    to_parent = M[fam["parent"], kids].mean()
    block = M[np.ix_(kids, kids)]
    off = (block.sum() - np.trace(block)) / max(len(kids) * (len(kids) - 1), 1)
    return float(to_parent / off) if off > 0 else float("inf")


def block_share(M: np.ndarray, families: list[dict], seed: int) -> tuple[float, float]:
    """(share of M's mass in the family blocks, the same for a seeded random order) over the family members."""
    order, bounds, seen = [], [0], set()
    for fam in families:
        members = [f for f in [fam["parent"], *fam["children"]] if f not in seen]
        seen |= set(members)
        order += members
        bounds.append(len(order))
    if len(order) < 2:
        return float("nan"), float("nan")

    def share(idx):
        sub = M[np.ix_(idx, idx)]
        inside = sum(sub[a:b, a:b].sum() for a, b in zip(bounds[:-1], bounds[1:]))
        return float(inside / max(sub.sum(), 1e-30))

    shuffled = list(np.random.default_rng([int(seed), 5]).permutation(order))
    return share(order), share(shuffled)


def family_stats(cooc: np.ndarray, families: list[dict], seed: int) -> dict:
    M = min_normalized(cooc)
    ratios = [parent_child_ratio(M, f) for f in families]  # inf: children that never fire together
    ordered, shuffled = block_share(M, families, seed)
    return {"n_families": len(families), "mean_children": float(np.mean([len(f["children"]) for f in families]))
            if families else 0.0, "parent_child_ratio": ratios,
            "median_parent_child_ratio": float(np.median(ratios)) if ratios else float("nan"),
            "share_ratio_above_1": float(np.mean([r > 1 for r in ratios])) if ratios else float("nan"),
            "block_share": ordered, "block_share_random_order": shuffled}
