"""Logit-lens and tuned-lens math (nostalgebraist 2020; Belrose et al. 2023, arXiv 2303.08112).

Conventions (TransformerLens names, see ``workbench.models``): layer 0 is the embedding output,
layer ``l >= 1`` the output of block ``l-1``, layer ``L`` the last block's output *before* the
final norm. For every layer the lens decodes a residual state ``h [N, D]`` with the model's own
final norm and unembedding, taken from the TransformerBridge (``bridge.ln_final``, ``bridge.W_U``,
``bridge.b_U``; the bridge runs without weight processing, so these are the model's own weights):

- logit lens:  ``z_l = LN_f(h_l) @ W_U + b_U``
- tuned lens:  ``z_l = LN_f(h_l + A_l h_l + b_l) @ W_U + b_U`` for ``l < L`` (one affine translator
  per layer, zero-initialised, so the untrained tuned lens *is* the logit lens).

At ``l = L`` both lenses return the model's logits. TransformerLens's last ``hook_resid_post`` is
pre-norm, so ``LN_f(h_L) @ W_U + b_U`` is exactly the model's output (checked in the tests), and the
final norm is applied once, never twice (HF's ``hidden_states[-1]`` is *post*-norm: the tuned-lens
package therefore uses ``model.logits`` there instead).

Per layer and position (all in fp32 from ``log_softmax``): top-k tokens and probabilities,
probability and rank of a target token ``t*`` (rank = 1 + #{v : p_l(v) > p_l(t*)}, so ties count in
the token's favour), ``KL(p_L || p_l) = Σ p_L (log p_L − log p_l)`` in nats, and entropy
``−Σ p_l log p_l`` in nats. The vocabulary axis is reduced chunk by chunk: memory is
``chunk × V`` floats, never ``layers × positions × V``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from workbench.errors import WorkbenchError

#: positions decoded at once; memory ~ a few × CHUNK × vocab × 4 bytes (256 × 49152 → 50 MB each)
CHUNK = 256


class Unembed(torch.nn.Module):
    """The model's final norm + unembedding: ``[..., D] -> logits [..., V]`` (fp32).

    Built from a TransformerBridge: ``ln_final`` is the bridge's final-norm component and
    ``W_U [D, V]``, ``b_U [V]`` the unembedding, detached so that training a lens never writes
    gradients into the model.
    """

    def __init__(self, norm: torch.nn.Module, W_U: torch.Tensor, b_U: torch.Tensor | None):
        super().__init__()
        self.norm = norm
        self.W_U = W_U.detach().float()  # on the model's device: the lens computes where the model runs
        self.b_U = None if b_U is None else b_U.detach().float().to(self.W_U.device)

    @classmethod
    def from_model(cls, model) -> "Unembed":
        bridge = getattr(model, "bridge", None)
        if bridge is None:
            raise WorkbenchError(
                f"The logit lens needs a decoder-only model hooked through TransformerBridge; "
                f"{getattr(model, 'name', model)} is a {getattr(model, 'kind', '?')}. Pick e.g. smollm2-135m.")
        b_U = getattr(bridge, "b_U", None)
        return cls(bridge.ln_final, bridge.W_U, b_U)

    @property
    def d_model(self) -> int:
        return int(self.W_U.shape[0])

    @property
    def d_vocab(self) -> int:
        return int(self.W_U.shape[1])

    @property
    def device(self) -> torch.device:
        return self.W_U.device

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.norm(h.float().to(self.device)).float() @ self.W_U
        return z if self.b_U is None else z + self.b_U


class TunedLens(torch.nn.Module):
    """One affine translator per layer ``l = 0..L-1``: ``h -> h + h A_lᵀ + b_l`` (zero-init).

    ``weight [L, D, D]`` (``A_l`` in nn.Linear layout: out × in), ``bias [L, D]``. Layer ``L`` is
    left as it is (identity). The residual parameterisation makes weight decay pull towards the
    identity, as in the official code (``tuned_lens/nn/lenses.py``, ``TunedLens.transform_hidden``).
    """

    def __init__(self, n_layers: int, d_model: int):
        super().__init__()
        self.n_layers = int(n_layers)
        self.d_model = int(d_model)
        self.weight = torch.nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.bias = torch.nn.Parameter(torch.zeros(n_layers, d_model))

    def transform(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Translate ``h [..., D]`` at ``layer`` (0..L); identity at ``layer == L``."""
        if layer == self.n_layers:
            return h
        if not 0 <= layer < self.n_layers:
            raise WorkbenchError(f"layer must be in 0..{self.n_layers}, got {layer}")
        return h + F.linear(h, self.weight[layer], self.bias[layer])

    def state(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.detach().to(dtype).contiguous(),
                "bias": self.bias.detach().to(dtype).contiguous()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "TunedLens":
        weight = torch.as_tensor(state["weight"]).float()
        lens = cls(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            lens.weight.copy_(weight)
            lens.bias.copy_(torch.as_tensor(state["bias"]).float())
        return lens


def lens_logits(unembed: Unembed, h: torch.Tensor, layer: int, tuned: TunedLens | None = None) -> torch.Tensor:
    """Logits ``[N, V]`` of the (tuned or logit) lens at ``layer`` for states ``h [N, D]``."""
    if tuned is not None:
        h = tuned.transform(h.float(), layer)
    return unembed(h)


@dataclass
class LayerStats:
    """Per-position statistics of one layer (numpy, length N; top-k arrays [N, k])."""

    kl: np.ndarray
    entropy: np.ndarray
    p_target: np.ndarray
    rank: np.ndarray
    topk_ids: np.ndarray
    topk_probs: np.ndarray


def final_logprobs(unembed: Unembed, h_last: torch.Tensor) -> torch.Tensor:
    """log p_L ``[N, V]`` (fp32) from the last layer's pre-norm states: the model's own output."""
    return torch.log_softmax(unembed(h_last).float(), dim=-1)


def stats_from_logprobs(logp: torch.Tensor, logp_final: torch.Tensor, target: torch.Tensor, k: int) -> LayerStats:
    """Reduce ``logp [N, V]`` against ``logp_final [N, V]`` and ``target [N]`` (token ids).

    KL(p_L || p_l) in nats; rank = 1 + #{v : logp(v) > logp(t*)} (strict: ties do not count).
    """
    logp = logp.float()
    target = target.to(logp.device)
    p_final = logp_final.exp()
    kl = (p_final * (logp_final - logp)).sum(-1)
    p = logp.exp()
    entropy = -(torch.special.xlogy(p, p)).sum(-1)
    lp_target = logp.gather(-1, target[:, None])
    rank = 1 + (logp > lp_target).sum(-1)
    top_lp, top_ids = logp.topk(k, dim=-1)
    return LayerStats(kl=kl.clamp_min(0).cpu().numpy(), entropy=entropy.cpu().numpy(),
                      p_target=lp_target[:, 0].exp().cpu().numpy(), rank=rank.cpu().numpy(),
                      topk_ids=top_ids.cpu().numpy(), topk_probs=top_lp.exp().cpu().numpy())


def kl_to_final(logits: torch.Tensor, logp_final: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_L || softmax(logits)) in nats (the tuned-lens training loss)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p_final = logp_final.exp()
    return (p_final * (logp_final - logp)).sum(-1).mean()


def n_chunks(n: int, chunk: int = CHUNK) -> int:
    return max(1, math.ceil(n / chunk))
