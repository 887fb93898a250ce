"""Geometry probes (issue 4): anisotropy and intrinsic dimension per layer, 2-D maps.

Estimators work on any (N, D) matrix and need no model::

    from analyses.geometry import twonn, mle, svd_anisotropy, cosine_anisotropy
    twonn(X)                      # TwoNN, scikit-dimension 0.5.0 convention
    twonn_details(X, n_boot=100)  # value, counts, duplicates removed, bootstrap interval

Registered analyses (``workbench run geometry|projection``, page ``pages/4_Geometry.py``):

- ``geometry``: long table (model, layer, depth = layer / n_layers, representation, metric,
  estimator, value, ci_low, ci_high, n_points, n_duplicates_removed, definition) on a model +
  dataset (token-level or mean-pooled, optional exclusion of position 0) or on a user matrix;
- ``projection``: PCA or UMAP of one layer (x, y plus colour / hover columns), seeded
  downsampling above ``max_points``.

Modules: :mod:`.anisotropy` (svd, cosine), :mod:`.intrinsic_dim` (TwoNN, LLM-Microscope TwoNN,
MLE, PCA dimension, participation ratio), :mod:`.neighbors` (exact blocked kNN),
:mod:`.spectrum` (streamed covariance), :mod:`.layers` (per-layer table), :mod:`.analysis`.
"""

from .anisotropy import (
    CosineAnisotropyDetails,
    SVDAnisotropyDetails,
    cosine_anisotropy,
    cosine_anisotropy_details,
    svd_anisotropy,
    svd_anisotropy_details,
)
from .intrinsic_dim import (
    IDDetails,
    mle,
    mle_details,
    participation_ratio,
    participation_ratio_details,
    pca_dimension,
    pca_dimension_details,
    twonn,
    twonn_details,
    twonn_from_mu,
    twonn_microscope,
    twonn_microscope_details,
)
from .neighbors import knn_distances
from .spectrum import covariance_eigenvalues, scatter_matrix
from .layers import ESTIMATORS, geometry_table, layer_geometry_rows
from .analysis import figure_geometry, figure_projection, run_geometry, run_projection, register_all

register_all()

__all__ = [
    "CosineAnisotropyDetails", "SVDAnisotropyDetails", "IDDetails", "ESTIMATORS",
    "cosine_anisotropy", "cosine_anisotropy_details", "svd_anisotropy", "svd_anisotropy_details",
    "twonn", "twonn_details", "twonn_from_mu", "twonn_microscope", "twonn_microscope_details",
    "mle", "mle_details", "pca_dimension", "pca_dimension_details",
    "participation_ratio", "participation_ratio_details",
    "knn_distances", "covariance_eigenvalues", "scatter_matrix",
    "geometry_table", "layer_geometry_rows",
    "run_geometry", "figure_geometry", "run_projection", "figure_projection", "register_all",
]
