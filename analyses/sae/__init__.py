"""Sparse autoencoders on embeddings and residual streams: analyses ``sae_quality``, ``sae_features``,
``sae_families``, ``sae_steering`` and the ``train-sae`` command (docs/methods.md, "SAEs on embeddings
and residual streams"; O'Neill et al. 2024, arXiv 2408.00657).

- ``sae``: the TopK / ReLU SAE and its losses (SAELens parameter layout);
- ``inputs``: targets (sentence embedding, residual layer) and rows streamed from the store;
- ``settings``: the training settings, declared once; ``train``: the training loop, checkpoints;
- ``files``: SAELens file layout, the SAE's fingerprint, finding and loading SAEs;
- ``scan``: one streamed pass (quality, densities, histograms, top rows, co-occurrence);
- ``quality``, ``features``, ``families``, ``steering``: the four questions; ``analysis``: their runs;
- ``figures``: figures and example HTML for the page; ``cli``: ``workbench train-sae``.

Python::

    from analyses.sae import train_sae, load_sae
    folder = train_sae(load_model("minilm-l6"), load_dataset("abstracts"), target="sentence", k=16)
    sae, cfg = load_sae(folder)          # sae.encode(x), sae(x); SAELens: SAE.load_from_disk(folder)
"""

from workbench.analysis import AnalysisSpec, register

from . import analysis as _a
from . import figures as _f
from . import results_tables
from .cli import TRAIN_SAE
from .figures import (example_html, families_figure, family_tree_figure, feature_histogram,  # noqa: F401
                      features_figure, quality_figure, steering_figure)
from .files import check_model, list_saes, load_sae, read_config, save_sae  # noqa: F401
from .inputs import resolve_target  # noqa: F401
from .runs import train_command  # noqa: F401
from .sae import SparseAutoencoder  # noqa: F401
from .settings import TRAIN_PARAMS, check_k
from .train import fit, train_on_array, train_sae  # noqa: F401

PAGE = "app_pages/9_SAE_features.py"
_COMMON = dict(inputs=("model",), page=PAGE, check_params=check_k, default_model="minilm-l6", default_data="abstracts")


def sae_status(model_name: str) -> dict:
    """The trained SAEs of a model in the cache, without loading its weights (its card gives the fingerprint)."""
    from workbench.models import load_model

    model = load_model(model_name, lazy=True)
    return {"fingerprint": model.fingerprint, "kind": model.kind, "n_layers": model.n_layers,
            "saes": list_saes(model.fingerprint)}


register(AnalysisSpec(
    name="sae_quality", title="SAE quality",
    question="How well does a sparse autoencoder reconstruct a model's sentence embeddings or residual stream "
             "(variance unexplained, L0, dead latents), and what does the reconstruction cost downstream?",
    run=_a.run_quality, figure=_f.quality_figure, params=dict(_a.QUALITY_PARAMS),
    readme_tables=results_tables.TABLES, commands=(TRAIN_SAE,), **_COMMON))

register(AnalysisSpec(
    name="sae_features", title="SAE features",
    question="What is each SAE feature about: its top-activating texts, the words that set them apart, its "
             "activation histogram and (residual SAEs) the tokens its direction promotes?",
    run=_a.run_features, figure=_f.features_figure, params=dict(_a.FEATURE_PARAMS), **_COMMON))

register(AnalysisSpec(
    name="sae_families", title="SAE feature families",
    question="Which SAE features form parent–child families by co-activation (O'Neill et al. 2024), and do "
             "parents co-occur with their children more than the children with each other?",
    run=_a.run_families, figure=_f.families_figure, params=dict(_a.FAMILY_PARAMS), **_COMMON))

register(AnalysisSpec(
    name="sae_steering", title="SAE-steered semantic search",
    question="If a query embedding is pushed along one SAE feature's direction, how do the search results "
             "change, and do they move toward that feature's top texts?",
    run=_a.run_steering, figure=_f.steering_figure, params=dict(_a.STEERING_PARAMS), **_COMMON))

__all__ = ["train_sae", "train_on_array", "fit", "load_sae", "save_sae", "list_saes", "sae_status",
           "SparseAutoencoder", "TRAIN_PARAMS", "train_command"]
