"""The ``transform`` parameters every analysis that offers a representation transform declares, and
the per-layer glue that fits it (on the data it is applied to, or on a named fit set) and records each
fit for the summary (docs/methods.md, "Outliers, whitening and layer similarity").

Usage in a back-end::

    params = {..., **TRANSFORM_PARAMS}
    lt = LayerTransform(ctx.params, fit_rows=None)   # or fit_rows=lambda layer: fit-set matrix
    Xt = lt(layer, X)                                # fitted once per layer and key, then applied
    summary["transform"] = lt.summary()
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from workbench.errors import WorkbenchError
from workbench.params import Param

from .outliers import DEFAULT_THRESHOLD, RULES
from .transforms import CLIP_VALUES, TRANSFORMS, TransformFit, fit_transform

TRANSFORM_PARAMS = {
    "transform": Param("none", "representation transform, shown beside the untransformed result: clip_outliers "
                       "(outlier dimensions set to clip_value), remove_outliers (dropped), whiten, whiten_k "
                       "(first transform_k whitened directions), remove_top_pcs", choices=TRANSFORMS),
    "transform_k": Param(0, "k of whiten_k (columns kept) and remove_top_pcs (PCs removed); 0 = D // 3 for "
                         "whiten_k (WhiteningBERT's 256 of 768), max(1, D // 100) for remove_top_pcs", min=0),
    "transform_fit": Param("", "dataset the transform's statistics are fit on (blank: the data it is applied to)"),
    "outlier_rule": Param("sigma", "outlier dimensions: 'sigma' (|average-vector value - mean| > threshold x its "
                          "std, Luo et al.'s 3-sigma rule) or 'extreme_share' (share of tokens whose max or min "
                          "coordinate it is > threshold)", choices=RULES),
    "outlier_threshold": Param(None, "threshold of the outlier rule (blank: 3 for sigma, 0.5 for extreme_share)",
                               type=float, min=0, closed="neither"),
    "clip_value": Param("zero", "clip_outliers sets the outlier dimensions to zero or to their fit-set mean",
                        choices=CLIP_VALUES),
    "transform_shrinkage": Param(0.0, "whitening with fewer points than dimensions: shrink the covariance towards "
                                 "tr(S)/D I by this share (0 = refuse instead)", min=0, max=1, closed="left"),
}


#: the widget labels of the transform parameters on the pages (workbench.ui.param_widgets)
TRANSFORM_LABELS = {"transform": "Transform", "transform_k": "k (0 = default)",
                    "transform_fit": "Fit on dataset (blank: the same data)", "clip_value": "Clip outliers to",
                    "outlier_rule": "Outlier rule", "outlier_threshold": "Outlier threshold (blank: default)",
                    "transform_shrinkage": "Whitening shrinkage"}


def transform_widgets(prefix: str, containers: list, names: tuple[str, ...] = tuple(TRANSFORM_LABELS), **defaults) -> dict:
    """``ui.param_widgets`` keyword arguments for the transform parameters, one container each, keys
    ``{prefix}_{name}``; ``defaults``: a page's starting value for some of them."""
    out = {}
    for name, container in zip(names, containers):
        out[name] = dict(container=container, label=TRANSFORM_LABELS[name], key=f"{prefix}_{name}")
        if name in defaults:
            out[name]["default"] = defaults[name]
        if name == "transform_shrinkage":
            out[name]["step"] = 0.05
    return out


def transform_kwargs(p: dict) -> dict:
    """The keyword arguments of :func:`~workbench.stats.transforms.fit_transform` from the parameters."""
    return {"k": int(p.get("transform_k") or 0), "outlier_rule": p.get("outlier_rule", "sigma"),
            "outlier_threshold": p.get("outlier_threshold"), "clip_value": p.get("clip_value", "zero"),
            "shrinkage": float(p.get("transform_shrinkage") or 0.0)}


def fit_dataset_spec(p: dict) -> str:
    """The named fit set ('' for none); only meaningful when a transform is chosen."""
    return str(p.get("transform_fit") or "").strip() if p.get("transform", "none") != "none" else ""


class LayerTransform:
    """The run's transform, fit per (layer, key) on ``fit_rows(layer)`` (a named fit set) or on the rows it
    is first applied to, then applied to any rows of that layer; :meth:`summary` records every fit."""

    def __init__(self, params: dict, fit_rows: Callable[[object], np.ndarray] | None = None,
                 fit_label: str | None = None):
        self.name = params.get("transform", "none")
        self.kwargs = transform_kwargs(params)
        self.fit_rows = fit_rows
        self.fit_label = fit_label
        self.fits: dict = {}

    @property
    def active(self) -> bool:
        return self.name != "none"

    def fit(self, layer, X: np.ndarray, key: str = "") -> TransformFit:
        if (layer, key) not in self.fits:
            source = X if self.fit_rows is None else self.fit_rows(layer)
            self.fits[(layer, key)] = fit_transform(source, self.name, **self.kwargs)
        return self.fits[(layer, key)]

    def __call__(self, layer, X: np.ndarray, key: str = "", fit: np.ndarray | None = None) -> np.ndarray:
        """X transformed (float64); ``fit``: the rows to fit on when no fit set is named (default X)."""
        return self.fit(layer, X if fit is None else fit, key).apply(X)

    def summary(self) -> dict:
        """What was fit, where, and each layer's fit (outlier dimensions, k, n_fit), JSON-able."""
        if not self.active:
            return {"transform": "none"}
        per_layer = [{"layer": layer, **({"set": key} if key else {}), **fit.describe()}
                     for (layer, key), fit in self.fits.items()]
        return {"transform": self.name, "fit_on": self.fit_label or "the data it is applied to",
                "settings": {**self.kwargs, "outlier_threshold": self.kwargs["outlier_threshold"] or
                             DEFAULT_THRESHOLD[self.kwargs["outlier_rule"]]},
                "per_layer": per_layer}


def layer_transform_for(ctx, hooks: list[str] | None, max_length: int | None,
                        rows: Callable[[object, str], np.ndarray]) -> LayerTransform:
    """The run's :class:`LayerTransform`. With a named ``transform_fit`` dataset, that dataset (its first
    ``max_texts`` texts when the run has that parameter) is embedded by the run's model (``ctx.activations``,
    the same ``hooks`` and ``max_length``) and each layer's fit rows are ``rows(entry, hook)``, the same
    representation the run uses. ``hooks`` None: a run on a user matrix (a named fit set is refused)."""
    p = ctx.params
    if hooks is None:
        refuse_fit_set_on_vectors(p)
    spec = fit_dataset_spec(p)
    if hooks is None or not spec:
        return LayerTransform(p)
    from workbench.data import load_dataset

    fit_ds = load_dataset(spec)
    n = int(p.get("max_texts") or 0)
    fit_ds = fit_ds.subset(n) if n > 0 else fit_ds
    entry = ctx.activations(hooks, max_length=max_length, dataset=fit_ds)
    label = f"{fit_ds.name} ({len(fit_ds)} texts, sha256 {fit_ds.content_hash[:12]})"
    return LayerTransform(p, lambda layer: rows(entry, hooks[layer]), label)


def refuse_fit_set_on_vectors(p: dict) -> None:
    """A named fit set needs a model to embed it: refused on a user matrix of vectors."""
    if fit_dataset_spec(p):
        raise WorkbenchError("transform_fit names a dataset, which needs a model to embed it; on --vectors the "
                             "transform is fit on the vectors themselves: leave transform_fit blank.")
