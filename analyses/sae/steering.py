"""Steered semantic search with an SAE on sentence embeddings (O'Neill et al. 2024, section on
steering; docs/methods.md, "SAEs on embeddings and residual streams").

A query embedding ``q`` is moved along a feature's decoder direction ``d_f`` (a unit row of ``W_dec``):
``q' = q + α d_f`` ("add"), or ``q' = q − α z_f(q) d_f`` ("remove": ``α = 1`` takes out the query's own
activation of the feature), and the corpus is ranked by cosine similarity before and after.

How far the results move toward the feature, for the top ``n`` results before and after: the share of
them among the feature's top-activating texts (its ``top_m`` texts), the mean activation of the feature
on them, and the mean cosine of their embeddings to the centroid of the feature's top texts.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.errors import WorkbenchError
from workbench.stats import l2_normalize


def steer_query(q: np.ndarray, sae, feature: int, alpha: float, mode: str) -> np.ndarray:
    """``q'`` (float64 ``[d]``) for ``q [d]``."""
    if not 0 <= feature < sae.d_sae:
        raise WorkbenchError(f"feature must be in 0..{sae.d_sae - 1}; got {feature}.")
    direction = sae.W_dec[feature].detach().double().cpu().numpy()
    q = np.asarray(q, dtype=np.float64)
    if mode == "add":
        return q + alpha * direction
    with torch.no_grad():
        z = float(sae.encode(torch.as_tensor(q, dtype=torch.float32)[None].to(sae.W_enc.device))[0, feature])
    return q - alpha * z * direction


def rank(q: np.ndarray, corpus_unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order of the corpus by cosine to ``q``, the cosines) for L2-normalised corpus rows."""
    scores = corpus_unit @ l2_normalize(q[None])[0]
    return np.argsort(-scores, kind="stable"), scores


def movement(results: np.ndarray, feature_top: np.ndarray, activation: np.ndarray, corpus_unit: np.ndarray) -> dict:
    """Share of ``results`` among ``feature_top``, mean feature activation on them, mean cosine to the top centroid."""
    centroid = l2_normalize(corpus_unit[feature_top].mean(0)[None])[0] if len(feature_top) else None
    return {"share_in_feature_top": float(np.isin(results, feature_top).mean()),
            "mean_feature_activation": float(activation[results].mean()),
            "cosine_to_feature_centroid": float((corpus_unit[results] @ centroid).mean()) if centroid is not None
            else float("nan")}


def steered_search(q: np.ndarray, corpus: np.ndarray, activation: np.ndarray, sae, feature: int, alpha: float,
                   mode: str, top_n: int, top_m: int, sweep: np.ndarray) -> dict:
    """Rankings before and after, the movement measures, and the same measures over ``sweep`` values of α.

    ``corpus [N, d]`` embeddings, ``activation [N]`` the feature's activation on each corpus text."""
    unit = l2_normalize(corpus)
    feature_top = np.argsort(-activation, kind="stable")[:top_m]
    feature_top = feature_top[activation[feature_top] > 0]
    before, s_before = rank(q, unit)
    after, s_after = rank(steer_query(q, sae, feature, alpha, mode), unit)
    n = min(top_n, len(corpus))
    curve = []
    for a in sweep:
        order, _ = rank(steer_query(q, sae, feature, float(a), mode), unit)
        curve.append({"alpha": float(a), **movement(order[:n], feature_top, activation, unit)})
    return {"before": before[:n], "after": after[:n], "score_before": s_before, "score_after": s_after,
            "feature_top": feature_top, "moved_before": movement(before[:n], feature_top, activation, unit),
            "moved_after": movement(after[:n], feature_top, activation, unit), "sweep": curve}
