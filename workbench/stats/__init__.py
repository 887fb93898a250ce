"""Shared math of the analysis back-ends: input checks, row normalisation, layer lists, the
streamed covariance spectrum, exact kNN, anisotropy and intrinsic dimension.

Back-ends import these from here, never from one another. Everything works on any (N, D) matrix
and needs no model::

    from workbench.stats import twonn, mle, svd_anisotropy, cosine_anisotropy
    twonn(X)                      # TwoNN, scikit-dimension 0.5.0 convention
    twonn_details(X, n_boot=100)  # value, counts, duplicates removed, bootstrap interval

Modules (methods in docs/methods.md, "Anisotropy and intrinsic dimension"):

- :mod:`.checks`: :func:`check_array`, :func:`unique_rows`, :func:`subsample_rows`, bootstrap
  intervals, the :class:`Details` base of the ``*_details`` results;
- :mod:`.normalize`: :func:`center`, :func:`l2_normalize`;
- :mod:`.layer_list`: :func:`parse_layers`, :func:`layer_request`;
- :mod:`.spectrum`: streamed scatter matrix, covariance eigenvalues, the top eigenpair alone, the
  top-PC variance share;
- :mod:`.neighbors`: exact blocked kNN distances;
- :mod:`.anisotropy`: SVD (LLM-Microscope) and cosine (Ethayarajh) anisotropy;
- :mod:`.intrinsic_dim`: TwoNN (scikit-dimension and LLM-Microscope conventions, one skeleton), MLE;
- :mod:`.linear_dim`: PCA dimension, participation ratio;
- :mod:`.outliers`: outlier dimensions of a layer and their dependence on position;
- :mod:`.transforms`: clip / remove outliers, whitening, removing top PCs, fit on one set, applied to another;
- :mod:`.similarity`: linear CKA (and debiased), orthogonal Procrustes, LLM-Microscope's linear fit and
  linearity score, and every pair of layers at once (methods in docs/methods.md, "Outliers, whitening
  and layer similarity").
"""

from .checks import Details, bootstrap_ci, check_array, normal_ci, percentile_ci, subsample_rows, unique_rows
from .normalize import center, l2_normalize
from .layer_list import layer_request, parse_layers
from .spectrum import covariance_eigenvalues, scatter_matrix, top_eigenpair, top_pc_share
from .neighbors import knn_distances
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
    twonn,
    twonn_details,
    twonn_fit,
    twonn_from_mu,
    twonn_microscope,
    twonn_microscope_details,
    twonn_ratios,
)
from .linear_dim import participation_ratio, participation_ratio_details, pca_dimension, pca_dimension_details
from .outliers import DimensionStats, dimension_stats, outlier_dimensions
from .transforms import TRANSFORMS, TransformFit, apply_transform, fit_transform
from .similarity import (
    consecutive_linearity,
    feature_bank,
    linear_cka,
    linear_fit_similarity,
    linearity_score,
    procrustes_similarity,
    similarity_matrices,
)

__all__ = [
    "Details", "check_array", "unique_rows", "subsample_rows", "percentile_ci", "normal_ci", "bootstrap_ci",
    "center", "l2_normalize", "parse_layers", "layer_request",
    "scatter_matrix", "covariance_eigenvalues", "top_eigenpair", "top_pc_share", "knn_distances",
    "CosineAnisotropyDetails", "SVDAnisotropyDetails", "IDDetails",
    "cosine_anisotropy", "cosine_anisotropy_details", "svd_anisotropy", "svd_anisotropy_details",
    "twonn", "twonn_details", "twonn_from_mu", "twonn_fit", "twonn_ratios",
    "twonn_microscope", "twonn_microscope_details", "mle", "mle_details",
    "pca_dimension", "pca_dimension_details", "participation_ratio", "participation_ratio_details",
    "DimensionStats", "dimension_stats", "outlier_dimensions", "TRANSFORMS", "TransformFit", "fit_transform",
    "apply_transform", "linear_cka", "procrustes_similarity", "linear_fit_similarity", "linearity_score",
    "similarity_matrices", "consecutive_linearity", "feature_bank",
]
