"""Geometry probes: anisotropy and intrinsic dimension per layer, 2-D maps (docs/methods.md,
"Anisotropy and intrinsic dimension").

The estimators themselves are core math shared by several back-ends and live in
:mod:`workbench.stats` (``from workbench.stats import twonn, mle, svd_anisotropy``). This package is
the analysis glue around them.

Registered analyses (``workbench run geometry|projection``, page ``app_pages/4_Geometry.py``):

- ``geometry``: long table (model, layer, depth = layer / n_layers, representation, metric,
  estimator, value, ci_low, ci_high, n_points, n_duplicates_removed, definition) on a model +
  dataset (token-level or mean-pooled, optionally with position 0 left out: ``skip_first``) or on a
  user matrix;
- ``projection``: PCA or UMAP of one layer (x, y plus colour / hover columns), seeded
  downsampling above ``max_points``.

Modules: :mod:`.layers` (the per-layer table from arrays), :mod:`.analysis` (the registered
analyses and figures), :mod:`.results_tables` (the README table).
"""

from .layers import ESTIMATORS, geometry_table, layer_geometry_rows
from .analysis import figure_geometry, run_geometry, register_all
from .projection import figure_projection, run_projection

register_all()

__all__ = [
    "ESTIMATORS", "geometry_table", "layer_geometry_rows",
    "run_geometry", "figure_geometry", "run_projection", "figure_projection", "register_all",
]
