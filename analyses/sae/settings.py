"""Training settings of an SAE, declared once as :class:`~workbench.params.Param` (CLI flags, Python
keywords, analysis parameters and the page's widgets all come from here).

Defaults follow the reference script (``saerch/topk_sae.py``; docs/methods.md, "SAEs on embeddings and
residual streams"): ``d_sae = 2 · d_model`` (n_dirs), ``k = 16``, ``auxk = 2k``, ``multik = 4k``,
auxiliary coefficient 1/32, gradient clipping at 1, Adam, unit-norm decoder. CPU-sized deviations:
``lr = 1e-3`` instead of 1e-4 and a few thousand steps instead of 50 epochs over 270k abstracts
(recorded in every saved SAE under ``deviations``); multik on (coefficient 1/8, Gao et al.) where the
reference script turns it off.
"""

from __future__ import annotations

from workbench.errors import WorkbenchError
from workbench.params import Param, validate_params

from .inputs import TARGET_FORMAT, check_target
from .sae import ARCHITECTURES


TRAIN_PARAMS: dict[str, Param] = {
    "target": Param("auto", "what the SAE reads: sentence (an embedder's sentence embedding), layer:L (a decoder's "
                    "residual stream at layer L, token level) or auto", check=check_target, allowed=TARGET_FORMAT),
    "architecture": Param("topk", "topk (Gao et al.) or relu (ReLU + L1)", choices=ARCHITECTURES),
    "k": Param(16, "active latents per row (topk)", min=1),
    "d_sae": Param(0, "dictionary size (0 = 2 × d_model, the reference's n_dirs)", min=0),
    "steps": Param(2000, "optimiser steps", min=1),
    "batch_size": Param(1024, "rows per step (all rows when the corpus is smaller)", min=1),
    "lr": Param(1e-3, "Adam learning rate", min=0, closed="neither"),
    "dead_revival": Param("auxk", "revive dead latents with the auxiliary loss (auxk, topk only) or not (none)",
                          choices=("auxk", "none")),
    "auxk": Param(0, "dead latents in the auxiliary loss (0 = 2k)", min=0),
    "auxk_coef": Param(1 / 32, "auxiliary-loss coefficient", min=0),
    "multik": Param(0, "latents of the multi-k loss (0 = 4k)", min=0),
    "multik_coef": Param(1 / 8, "multi-k loss coefficient (0 = off)", min=0),
    "l1_coef": Param(0.05, "L1 coefficient (relu), in units of the batch's RMS distance to its mean", min=0),
    "dead_rows": Param(0, "rows without firing after which a latent counts as dead in training "
                       "(0 = one epoch, at most 10M)", min=0),
    "grad_clip": Param(1.0, "gradient-norm clipping (0 = off)", min=0),
    "max_texts": Param(0, "first N texts of the dataset (0 = all)", min=0),
    "max_length": Param(0, "tokens per text (0 = the model's limit for sentence targets, 128 for layers)", min=0),
    "heldout_fraction": Param(0.1, "share of texts held out of training (quality is reported on them)",
                              min=0, max=0.5),
    "skip_first": Param(True, "leave position 0 of every text out (layer targets: where massive activations sit)"),
    "checkpoint_every": Param(250, "steps between resumable checkpoints", min=1),
}

#: settings that do not change the trained weights (left out of the SAE's identity)
NOT_IDENTITY = ("checkpoint_every",)
DEAD_ROWS_CAP = 10_000_000
DENSE_DENSITY = 0.1  # a latent firing on more than this share of rows counts as dense


def settings_from(given: dict | None, seed: int = 0) -> dict:
    """Every training setting, validated (``given`` overrides the defaults), plus ``seed``."""
    values = validate_params("train-sae", TRAIN_PARAMS, {k: v for k, v in (given or {}).items() if v is not None})
    return {**values, "seed": int(seed)}


def resolve(settings: dict, d_in: int, target_token_level: bool) -> dict:
    """The settings with their 0 = "derived" values filled in for an input of dimension ``d_in``: d_sae,
    auxk, multik, and max_length (128 for layer targets; 0 stays "the model's own limit" for sentences)."""
    s = dict(settings)
    s["d_sae"] = int(s["d_sae"]) or 2 * int(d_in)
    if s["architecture"] == "topk" and s["k"] > s["d_sae"]:
        raise WorkbenchError(f"k = {s['k']} is greater than the dictionary size d_sae = {s['d_sae']}: lower k or "
                             "raise d_sae.")
    s["auxk"] = int(s["auxk"]) or 2 * int(s["k"])
    s["multik"] = int(s["multik"]) or 4 * int(s["k"])
    if s["architecture"] == "relu":
        s["dead_revival"] = "none"
    if not target_token_level:
        s["skip_first"] = False
    elif not s["max_length"]:
        s["max_length"] = 128
    return s


def check_k(settings: dict) -> None:
    """k against an explicit dictionary size, before any input is read (``check_params``)."""
    if settings.get("architecture") == "topk" and settings.get("d_sae") and settings["k"] > settings["d_sae"]:
        raise WorkbenchError(f"k = {settings['k']} is greater than the dictionary size d_sae = {settings['d_sae']}: "
                             "lower k or raise d_sae.")


def max_length_for(settings: dict) -> int | None:
    """Tokens per text for the store (resolved settings): the setting, or None for the model's own limit."""
    return int(settings["max_length"]) or None
