"""The analysis back-ends, one module or package each; each registers its analyses on import.

:data:`HOMES` names the module that registers each analysis, so that ``get_analysis(name)`` imports
only that one (a cached run must not pay for importing every back-end and torch with them). An
analysis missing here is still found: the registry then imports every back-end. A test checks that
the table matches what discovery finds.
"""

HOMES = {
    "activation_patching": "attribution", "attention_patterns": "attribution",
    "attribution_patching": "attribution", "logit_attribution": "attribution",
    "circuits": "circuits",
    "decoder_lens": "decoder_lens",
    "geometry": "geometry", "projection": "geometry",
    "inversion": "inversion",
    "layer_quality": "layer_quality",
    "layer_stats": "layer_stats",
    "logit_lens": "lenses", "tuned_lens": "lenses",
    "layer_similarity": "similarity", "outliers": "similarity",
    "sae_families": "sae", "sae_features": "sae", "sae_quality": "sae", "sae_steering": "sae",
}
