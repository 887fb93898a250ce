"""Outlier dimensions and layer similarity (docs/methods.md, "Outliers, whitening and layer similarity").

Registered analyses (``workbench run outliers|layer_similarity``, page ``app_pages/10_Similarity.py``):

- ``outliers``: long table (model, layer, depth, dim, mean, std, zscore, extreme_share, score, is_outlier,
  position_r2, n_tokens, persistence) of every hidden dimension at every layer: which dimensions sit far
  out of line across tokens (Luo et al. 2021's rule, parameterised), how persistent each is across layers
  and how much of its variance position explains; figures: the layers x dimensions view and one
  dimension's value by position;
- ``layer_similarity``: long table (model, layer, depth, other_model, other_layer, other_depth, metric,
  value) of linear CKA (and debiased), orthogonal Procrustes and LLM-Microscope's linear fit between every
  pair of layers of one model or of two models on the same texts, and the linearity score of consecutive
  layers; figures: heatmaps (diagonal or best-match path marked) and the linearity curve.

The representation transforms (clip / remove outliers, whitening, removing top PCs) are core math
(:mod:`workbench.stats.transforms`) offered as the ``transform`` parameter of ``geometry``, ``projection``
and ``layer_quality``. ``workbench compare`` (:mod:`.cli`) runs any per-layer analysis on two models on the same
data, side by side or as a difference (:mod:`workbench.compare`). Modules: :mod:`.outliers`, :mod:`.layers`,
:mod:`.figures`, :mod:`.results_tables`, :mod:`.cli`.
"""

from workbench.analysis import AnalysisSpec, register

from .cli import COMPARE
from .figures import figure_heatmaps, figure_linearity
from .layers import SIMILARITY_PARAMS, run_layer_similarity
from .outliers import OUTLIER_PARAMS, figure_dimension, figure_outliers, run_outliers
from .results_tables import OUTLIER_TABLES, SIMILARITY_TABLES

PAGE = "app_pages/10_Similarity.py"

register(AnalysisSpec(
    name="outliers", title="Outlier dimensions",
    question="Which hidden dimensions sit far out of line across tokens, do they persist across layers, and do "
             "they carry position?",
    run=run_outliers, figure=figure_outliers, params=dict(OUTLIER_PARAMS), inputs=("model", "vectors"), page=PAGE,
    figures={"dimension": figure_dimension}, readme_tables=OUTLIER_TABLES))

register(AnalysisSpec(
    name="layer_similarity", title="Layer similarity: CKA, Procrustes, linearity",
    question="Which layers represent the same inputs alike, within one model or across two, and how linear is "
             "each block?",
    run=run_layer_similarity, figure=figure_heatmaps, params=dict(SIMILARITY_PARAMS), inputs=("model", "vectors"),
    page=PAGE, figures={"linearity": figure_linearity}, readme_tables=SIMILARITY_TABLES, commands=(COMPARE,)))

__all__ = ["run_outliers", "figure_outliers", "figure_dimension", "run_layer_similarity", "figure_heatmaps",
           "figure_linearity", "OUTLIER_PARAMS", "SIMILARITY_PARAMS"]
