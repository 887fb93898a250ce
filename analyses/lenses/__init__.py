"""Logit lens and tuned lens: analyses ``logit_lens`` and ``tuned_lens`` and the ``train-lens`` command.

- ``core``: the lens math (final norm + unembedding from the TransformerBridge, translators, statistics);
- ``train``: tuned-lens training (official recipe, CPU-sized), checkpoints, saving and finding lenses;
- ``analysis``: the per layer × position tables and figures;
- ``cli``: ``workbench train-lens``.
"""

from workbench.analysis import AnalysisSpec, Param, register

from . import analysis as _analysis
from . import results_tables
from .cli import TRAIN_LENS
from .core import TunedLens, Unembed, stats_from_logprobs  # noqa: F401
from .train import find_lens, load_lens, train_command_hint, train_tuned_lens  # noqa: F401
from .analysis import COLOR_BY, color_range, curves, heatmap, layer_means, visible  # noqa: F401,E402


def lens_status(model_name: str) -> dict:
    """Whether a trained tuned lens exists for a model, without loading its weights (its card gives
    the fingerprint): ``{"available", "folder", "fingerprint", "train_command"}``."""
    from workbench.models import load_model

    model = load_model(model_name, lazy=True)
    folder = find_lens(model) if model.kind == "decoder" else None
    return {"available": folder is not None, "folder": None if folder is None else str(folder),
            "fingerprint": model.fingerprint, "train_command": train_command_hint(model.name)}

register(AnalysisSpec(
    name="logit_lens",
    title="Logit lens",
    question="What would the model predict if it stopped at each layer and decoded the residual stream "
             "with its own final norm and unembedding?",
    run=lambda ctx: _analysis._run(ctx, "logit"),
    figure=_analysis.figure,
    params=dict(_analysis.PARAMS),
    inputs=("model",),
    page="app_pages/2_Lenses.py",
    figures={"curves": lambda r: _analysis.curves(r.table)},
))

register(AnalysisSpec(
    name="tuned_lens",
    title="Tuned lens",
    question="What does each layer predict once a learned affine translator per layer (trained to match the "
             "final distribution) corrects for the drift of the residual basis? Compared with the logit lens.",
    run=lambda ctx: _analysis._run(ctx, "tuned"),
    figure=_analysis.figure,
    params={**{k: v for k, v in _analysis.PARAMS.items() if k != "resid_mid"},
            "compare_logit": Param(True, "also compute the logit lens on the same positions (rows with lens=logit)")},
    inputs=("model",),
    page="app_pages/2_Lenses.py",
    figures={"curves": lambda r: _analysis.curves(r.table)},
    readme_tables=results_tables.TABLES,
    commands=(TRAIN_LENS,),
))
