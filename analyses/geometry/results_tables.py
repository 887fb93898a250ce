"""The README's geometry table: anisotropy and TwoNN per depth for the built-in decoder and encoder."""

from __future__ import annotations

import numpy as np

from workbench.reproduce import ReadmeTable, fmt, md_table

_EST = "--set estimators=svd,cosine,twonn"
_SKIP = "--set estimators=svd,cosine --set skip_first=true"


def _values(result):
    t = result.table
    return t.pivot_table(index="layer", columns="estimator", values="value", aggfunc="first"), t


def _depth_rows(model: str, full, skip, n_layers: int, every_layer: bool):
    layers = list(full.index)
    if not every_layer:  # the layer nearest each tenth of the depth
        layers = list(dict.fromkeys(int(round(d * n_layers)) for d in np.linspace(0, 1, 11)))
    rows = []
    for i, layer in enumerate(layers):
        rows.append([model if i == 0 else "", fmt(layer / n_layers, 2), layer, fmt(full.loc[layer, "svd"]),
                     fmt(skip.loc[layer, "svd"]), fmt(full.loc[layer, "cosine"]), fmt(skip.loc[layer, "cosine"]),
                     fmt(full.loc[layer, "twonn"], 2)])
    return rows


def render_geometry(results) -> str:
    rows, notes = [], []
    for model, every in (("smollm2-135m", False), ("minilm-l6", True)):
        full, t = _values(results[f"{model}"])
        skip, _ = _values(results[f"{model}-first-left-out"])
        n_layers = int(results[model].summary["n_layers"])
        rows += _depth_rows(model, full, skip, n_layers, every)
        dup = t[t["estimator"] == "twonn"].set_index("layer")["n_duplicates_removed"]
        notes.append(f"{model}: {results[model].summary['n_texts']} texts, {results[model].summary['n_tokens']} "
                     f"token vectors a layer; TwoNN on {int(t[t['estimator'] == 'twonn']['n_points'].max())} sampled "
                     f"points, duplicates removed at layer 0: {int(dup.iloc[0])}, at the last layer: {int(dup.iloc[-1])}")
    header = ["model", "depth", "layer", "SVD anisotropy", "SVD anisotropy, position 0 left out", "cosine",
              "cosine, position 0 left out", "TwoNN"]
    return "\n".join([md_table(header, rows), "", "; ".join(notes) + "."])


TABLES = (ReadmeTable(
    name="geometry", title="Anisotropy and intrinsic dimension per depth (smollm2-135m, minilm-l6)",
    jobs={"smollm2-135m": f"workbench run geometry --model smollm2-135m --data abstracts {_EST}",
          "smollm2-135m-first-left-out": f"workbench run geometry --model smollm2-135m --data abstracts {_SKIP}",
          "minilm-l6": f"workbench run geometry --model minilm-l6 --data abstracts {_EST}",
          "minilm-l6-first-left-out": f"workbench run geometry --model minilm-l6 --data abstracts {_SKIP}"},
    render=render_geometry, minutes=12),)
