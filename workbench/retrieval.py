"""Query -> document retrieval by cosine similarity: the downstream check of sentence vectors shared by
the back-ends (docs/methods.md, "Layer-wise quality"; "SAEs on embeddings and residual streams").

- :func:`retrieval_scores`: recall@1 and MRR of retrieving document i for query i (from
  :func:`reciprocal_ranks`, whose spread gives :func:`mrr_standard_error`);
- :func:`query_document_pairs`: the queries and documents of a table with two text columns (the
  built-in ``abstracts``: title -> abstract), as two datasets for the activation store.
"""

from __future__ import annotations

import numpy as np

from .data import TextDataset, load_dataset
from .errors import WorkbenchError
from .stats import l2_normalize


def reciprocal_ranks(queries, documents, *, center: bool = True) -> np.ndarray:
    """1 / rank of document i among all documents for query i by cosine similarity: float64 ``[N]``.

    queries, documents: [N, D], row i of each is a matching pair. ``center`` subtracts each set's mean
    first (mean-pooled transformer states share a large common direction that otherwise dominates
    cosine similarity). Ties are ranked pessimistically (a tie with the true document counts against).
    """
    Q, Dc = np.asarray(queries), np.asarray(documents)
    if Q.ndim != 2 or Q.shape != Dc.shape or Q.shape[0] < 2:
        raise WorkbenchError(f"retrieval needs two [N >= 2, D] arrays of matching pairs; got {Q.shape}, {Dc.shape}.")
    S = l2_normalize(Q, center_first=center) @ l2_normalize(Dc, center_first=center).T
    true = np.diag(S)
    rank = (S >= true[:, None]).sum(axis=1)  # counts the true document itself, so rank >= 1
    return 1.0 / rank


def retrieval_scores(queries, documents, *, center: bool = True) -> tuple[float, float]:
    """recall@1 and mean reciprocal rank of retrieving document i for query i (:func:`reciprocal_ranks`)."""
    rr = reciprocal_ranks(queries, documents, center=center)
    return float(np.mean(rr == 1.0)), float(np.mean(rr))


def mrr_standard_error(reciprocal: np.ndarray) -> float:
    """Standard error of the MRR over queries: sample std of the reciprocal ranks / sqrt(N)."""
    rr = np.asarray(reciprocal, dtype=np.float64)
    return float(rr.std(ddof=1) / np.sqrt(rr.size)) if rr.size > 1 else float("nan")


def query_document_pairs(spec: str, query_column: str = "title", document_column: str = "abstract",
                         n_pairs: int = 0) -> tuple[TextDataset, TextDataset]:
    """(queries, documents) of the first ``n_pairs`` rows (0 = all) of the table ``spec``; row i of one
    matches row i of the other. One clear error when a column is missing or fewer than 2 pairs remain."""
    documents = load_dataset(spec, text_column=document_column)
    columns = list(documents.frame.columns)
    if query_column not in columns:
        raise WorkbenchError(f"{spec!r} has no query column {query_column!r}; its columns are {columns[:20]}.")
    documents = documents.subset(int(n_pairs) or None)
    if len(documents) < 2:
        raise WorkbenchError(f"retrieval needs at least 2 query/document pairs; {spec!r} gives {len(documents)}.")
    queries = TextDataset.from_texts(documents.frame[query_column].astype(str).tolist(),
                                     name=f"{documents.name}:{query_column}")
    return queries, documents
