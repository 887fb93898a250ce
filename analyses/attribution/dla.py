"""Direct logit attribution (DLA): the final residual stream split into parts, each read off the
unembedding direction of the answer, with the final norm's scale frozen at its clean-run value.

docs/methods.md, "Attention, DLA and patching". At each scored position the final residual
``x = blocks.{L-1}.hook_resid_post`` (pre-norm) is the sum of its parts::

    x = embed + Σ_l (Σ_h z[l, h] · W_O[l, h]  +  attn bias[l])  +  Σ_l mlp_out[l]  +  remainder

``embed`` = ``blocks.0.hook_resid_pre`` (token + positional embedding), ``z[l, h] · W_O[l, h]`` head
h's output (TransformerLens ``stack_head_results``), ``attn bias[l]`` = ``hook_attn_out[l]`` minus its
heads (``b_O``; zero for Llama-style models), ``remainder`` = ``x`` minus the sum of the sublayer
outputs (zero for standard pre-norm blocks; reported, never dropped). For a direction
``u = mean W_U[:, correct] - mean W_U[:, wrong]`` and the final norm ``N(x) = g ⊙ (x - μ(x)) s(x) + β``
(LayerNorm; RMSNorm without ``μ`` and ``β``) with its scale frozen, ``s = s(x)`` of the full residual
(TransformerLens ``apply_ln_to_stack`` with the cached ``ln_final.hook_scale``), part ``c`` gets::

    attribution_c = s · (x_c - μ(x_c)) · (g ⊙ u)        (RMSNorm: no μ; the norm weight g is folded in)

and the biases ``β · u`` (LayerNorm) and ``b_U[correct] - b_U[wrong]`` are rows of their own, so that the
parts sum exactly to the model's logit difference ``N(x) · u + b_U · (...)``; without the two bias rows,
to the logit difference minus them. The accumulated view projects the running sum after the
embedding and each sublayer the same way (TransformerLens ``accumulated_resid``). The gain ``g``
is read off the model's own norm module (so a ``1 + w`` convention is covered) and the
linearisation is checked on every position: ``reconstruction_error`` in the summary.

A norm after attention (Gemma 2/3, ``blocks.{l}.ln1_post``) gets the same treatment: its scale frozen at
its value on the layer's whole attention output ``y = Σ_h z[l, h] · W_O[l, h]`` and its gain folded into
the direction, so that the heads sum to ``hook_attn_out`` (TransformerLens's ``stack_head_results``
stops before that norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.store import CacheEntry
from workbench.tasks import Task


@dataclass
class FrozenNorm:
    """The final norm as ``g ⊙ (x - μ(x)) / sqrt(var(x) + eps) + β`` (``kind`` LN), ``g ⊙ x / sqrt(mean(x²) +
    eps)`` (RMS) or the identity (none); ``gain``, ``beta`` float [d] on the model's device."""

    kind: str
    eps: float
    gain: torch.Tensor
    beta: torch.Tensor

    @property
    def center(self) -> bool:
        return self.kind == "LN"

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's scale ``s`` of full residuals ``x [M, d]`` -> ``[M, 1]`` (1 without a norm)."""
        if self.kind == "none":
            return torch.ones_like(x[:, :1])
        x = x - x.mean(-1, keepdim=True) if self.center else x
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    module: object = None  # the model's own norm module (None: the identity)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The model's own norm module on ``x [M, d]`` (no grad), in ``x``'s dtype."""
        if self.kind == "none" or self.module is None:
            return x
        weight = next(self.module.parameters(), None)
        dtype = weight.dtype if weight is not None else torch.float32
        with torch.no_grad():
            return self.module(x.to(dtype)[:, None, :])[:, 0].to(x.dtype)

    def readout(self, u: torch.Tensor) -> torch.Tensor:
        """Directions ``u [M, d]`` -> ``g ⊙ u``, centred for a LayerNorm: ``part · readout · s`` is the part's
        frozen-scale contribution."""
        v = u * self.gain
        return v - v.mean(-1, keepdim=True) if self.center else v


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (sums of hundreds of parts stay exact), float32 on MPS."""
    return torch.float32 if device.type == "mps" else torch.float64


def norm_kind(bridge) -> str:
    """``LN``, ``RMS`` or ``none``: the model's normalisation (``LNPre`` counts as LN)."""
    kind = str(getattr(bridge.cfg, "normalization_type", None) or "none")[:3].rstrip("P")
    return kind if kind in ("LN", "RMS") else "none"


def frozen_norm(bridge, dtype: torch.dtype, module=None) -> FrozenNorm:
    """A norm module of ``bridge`` (default the final norm ``ln_final``) as a :class:`FrozenNorm`, its gain
    and bias probed on the module itself (so ``w`` and ``1 + w`` gains alike are read right)."""
    kind = norm_kind(bridge)
    d = int(bridge.cfg.d_model)
    device = bridge.W_U.device
    one = torch.ones(d, device=device, dtype=dtype)
    if kind == "none":
        return FrozenNorm("none", 0.0, one, torch.zeros_like(one))
    norm = FrozenNorm(kind, float(bridge.cfg.eps), one, torch.zeros_like(one),
                      bridge.ln_final if module is None else module)
    probe = one.clone()
    probe[1::2] = -1.0  # centred values never 0, so every coordinate of the gain is seen
    beta = norm.apply(torch.zeros_like(probe)[None])[0]
    shifted = probe - probe.mean() if norm.center else probe
    norm.gain = (norm.apply(probe[None])[0] - beta) / (shifted * norm.scale(probe[None])[0])
    norm.beta = beta
    return norm


def post_attention_norms(bridge, dtype: torch.dtype) -> list[FrozenNorm | None]:
    """Per block, the norm applied to the attention output before it joins the residual stream
    (Gemma 2/3's ``post_attention_layernorm``, the bridge's ``blocks.{l}.ln1_post``), or None."""
    out = []
    for block in bridge.blocks:
        module = getattr(block, "ln1_post", None)
        out.append(None if module is None or norm_kind(bridge) == "none" else frozen_norm(bridge, dtype, module))
    return out


def directions(W_U: torch.Tensor, b_U: torch.Tensor | None, targets: list[tuple[list[int], list[int]]],
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target ``(correct, wrong)``: ``u = mean W_U[:, correct] - mean W_U[:, wrong]`` ``[M, d]`` and the
    unembedding-bias difference ``[M]`` (wrong empty: the correct logit alone)."""
    W = W_U.detach().to(dtype)
    b = torch.zeros(W.shape[1], dtype=dtype, device=W.device) if b_U is None else b_U.detach().to(dtype)
    u, bias = [], []
    for correct, wrong in targets:
        u.append(W[:, correct].mean(1) - (W[:, wrong].mean(1) if wrong else 0.0))
        bias.append(b[correct].mean() - (b[wrong].mean() if wrong else 0.0))
    return torch.stack(u), torch.stack(bias)


@dataclass
class Items:
    """The scored positions: ``index`` into the store entry's token rows, and their prompt and position."""

    index: np.ndarray  # int64 [M]
    prompt: np.ndarray  # [M]
    position: np.ndarray  # [M]
    targets: list[tuple[list[int], list[int]]]


def scored_items(task: Task, entry: CacheEntry) -> Items:
    index, prompt, position, targets = [], [], [], []
    for i, rows in enumerate(task.targets):
        for pos, correct, wrong in rows:
            index.append(int(entry.offsets[i]) + pos)
            prompt.append(i)
            position.append(pos)
            targets.append((list(correct), list(wrong)))
    return Items(np.asarray(index), np.asarray(prompt), np.asarray(position), targets)


def dla_hooks(n_layers: int) -> dict[str, list[str]]:
    """The store hooks DLA reads: embedding, final residual, every z, attn_out and mlp_out."""
    per = {"z": "attn.hook_z", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}
    hooks = {k: [f"blocks.{l}.{v}" for l in range(n_layers)] for k, v in per.items()}
    return {"embed": ["blocks.0.hook_resid_pre"], "final": [f"blocks.{n_layers - 1}.hook_resid_post"], **hooks}


def _part_rows(kind: str, layer: int, head: int, label: str, values: torch.Tensor) -> dict:
    return {"kind": kind, "layer": layer, "head": head, "label": label, "values": values}


def decompose(entry: CacheEntry, items: Items, bridge) -> tuple[list[dict], dict]:
    """Every part's attribution at every scored position (``values`` float [M] per part) and checks."""
    device = bridge.W_U.device
    dtype = work_dtype(device)
    hooks = dla_hooks(int(bridge.cfg.n_layers))

    def rows(hook: str) -> torch.Tensor:
        return torch.from_numpy(entry.rows(hook, items.index)).to(device, dtype)

    norm = frozen_norm(bridge, dtype)
    u, b_u = directions(bridge.W_U, getattr(bridge, "b_U", None), items.targets, dtype)
    x = rows(hooks["final"][0])
    s = norm.scale(x)[:, 0]
    v = norm.readout(u)
    W_O = bridge.W_O.detach().to(dtype)  # [L, H, d_head, d]

    def project(part: torch.Tensor) -> torch.Tensor:
        return s * (part * v).sum(-1)

    parts = [_part_rows("embed", -1, -1, "embed", project(rows(hooks["embed"][0])))]
    total = parts[0]["values"].clone()
    b_O = getattr(bridge, "b_O", None)
    post = post_attention_norms(bridge, dtype)
    for layer, (zh, ah, mh) in enumerate(zip(hooks["z"], hooks["attn_out"], hooks["mlp_out"])):
        z = rows(zh)
        if post[layer] is None:
            heads = s[:, None] * torch.einsum("mhe,hed,md->mh", z, W_O[layer], v)
        else:  # a norm after attention: its scale frozen too, its gain folded into the direction
            raw = torch.einsum("mhe,hed->md", z, W_O[layer])
            raw = raw + (b_O[layer].detach().to(dtype) if b_O is not None else 0.0)
            inner = post[layer].scale(raw)[:, 0] * s
            heads = inner[:, None] * torch.einsum("mhe,hed,md->mh", z, W_O[layer], post[layer].readout(v))
        attn = project(rows(ah))
        parts += [_part_rows("head", layer, h, f"L{layer}H{h}", heads[:, h]) for h in range(heads.shape[1])]
        parts.append(_part_rows("attn_bias", layer, -1, f"L{layer} attn bias", attn - heads.sum(1)))
        parts.append(_part_rows("mlp", layer, -1, f"L{layer} MLP", project(rows(mh))))
        total = total + attn + parts[-1]["values"]
    whole = project(x)
    parts.append(_part_rows("remainder", -1, -1, "remainder", whole - total))
    parts.append(_part_rows("norm_bias", -1, -1, "final norm bias", (norm.beta * u).sum(-1)))
    parts.append(_part_rows("unembed_bias", -1, -1, "unembedding bias", b_u))
    logits = (norm.apply(x) * u).sum(-1) + b_u  # what the model computes from x, through its own norm
    checks = {"reconstruction_error": float((whole + parts[-2]["values"] + b_u - logits).abs().max()),
              "remainder_max_abs": float(parts[-3]["values"].abs().max()), "logit_diff": logits}
    return parts, checks


def accumulated(parts: list[dict], n_layers: int) -> list[dict]:
    """The running sum after the embedding, each attention and each MLP sublayer: rows ``accumulated``
    (layer l, label ``L{l} pre`` / ``L{l} mid``; ``final``, the whole final residual, remainder included)."""
    by_layer: dict[tuple[str, int], torch.Tensor] = {}
    for part in parts:
        if part["kind"] in ("head", "attn_bias"):
            key = ("attn", part["layer"])
            by_layer[key] = by_layer.get(key, 0) + part["values"]
        elif part["kind"] in ("mlp", "remainder"):
            by_layer[(part["kind"], part["layer"])] = part["values"]
    running = parts[0]["values"]
    out = []
    for layer in range(n_layers):
        out.append(_part_rows("accumulated", layer, -1, f"L{layer} pre", running))
        running = running + by_layer[("attn", layer)]
        out.append(_part_rows("accumulated", layer, -1, f"L{layer} mid", running))
        running = running + by_layer[("mlp", layer)]
    out.append(_part_rows("accumulated", n_layers, -1, "final", running + by_layer[("remainder", -1)]))
    return out


def dla_table(parts: list[dict], items: Items) -> pd.DataFrame:
    """One row per (scored position, part): prompt, position, kind, layer, head (-1: none), label, attribution."""
    frames = []
    for order, part in enumerate(parts):
        frames.append(pd.DataFrame({
            "prompt": items.prompt, "position": items.position, "kind": part["kind"], "layer": part["layer"],
            "head": part["head"], "label": part["label"], "order": order,
            "attribution": part["values"].detach().double().cpu().numpy()}))
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values(["prompt", "position", "order"], kind="stable").drop(columns="order")


def layer_totals(table: pd.DataFrame) -> dict[str, float]:
    """Each layer's attention (its heads + attn bias) and MLP attribution, mean over the scored positions:
    ``{"L3 attn": ..., "L3 MLP": ...}``."""
    rows = table[table["kind"].isin(("head", "attn_bias", "mlp"))]
    rows = rows.assign(sublayer=np.where(rows["kind"] == "mlp", "MLP", "attn"))
    sums = rows.groupby(["prompt", "position", "layer", "sublayer"])["attribution"].sum()
    return {f"L{layer} {sub}": float(v) for (layer, sub), v in sums.groupby(["layer", "sublayer"]).mean().items()}
