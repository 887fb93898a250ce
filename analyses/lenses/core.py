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
        b_U = None if b_U is None else b_U.detach().float().to(self.W_U.device)
        # a bias of zeros (the bridge gives one to models without) adds nothing but a pass over the logits
        self.b_U = None if b_U is None or not bool(b_U.any()) else b_U

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

    def weight_as(self, dtype: torch.dtype, transposed: bool = False) -> torch.Tensor:
        """``W_U [D, V]`` (or ``W_Uᵀ [V, D]``, contiguous) in ``dtype``: a copy made once per layout and
        dtype, for the lens's chunked matmuls."""
        if dtype == self.W_U.dtype and not transposed:
            return self.W_U
        cache = self.__dict__.setdefault("_weight_copies", {})
        if (dtype, transposed) not in cache:
            weight = self.W_U.to(dtype)
            cache[(dtype, transposed)] = (weight.T if transposed else weight).contiguous()
        return cache[(dtype, transposed)]

    def forward(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N, V]`` of states ``h [N, D]``, written into ``out`` when given (a reused buffer)."""
        z = torch.matmul(self.norm(h.float().to(self.device)).float(), self.W_U, out=out)
        return z if self.b_U is None else (z.add_(self.b_U) if out is not None else z + self.b_U)


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


def lens_logits(unembed: Unembed, h: torch.Tensor, layer: int, tuned: TunedLens | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[N, V]`` of the (tuned or logit) lens at ``layer`` for states ``h [N, D]`` (into ``out``
    when given)."""
    if tuned is not None:
        h = tuned.transform(h.float(), layer)
    return unembed(h, out=out)


def lens_logprobs(unembed: Unembed, h: torch.Tensor, layer: int, tuned: TunedLens | None = None,
                  buffers: "StatsBuffers | None" = None) -> torch.Tensor:
    """``log_softmax`` of :func:`lens_logits` ``[N, V]``; with ``buffers``, logits and log-probabilities are
    written into its reused ``[N, V]`` tensors (the same bits as fresh ones)."""
    if buffers is None:
        return torch.log_softmax(lens_logits(unembed, h, layer, tuned), -1)
    shape = (h.shape[0], unembed.d_vocab)
    z = lens_logits(unembed, h, layer, tuned, out=buffers.get("logits", shape, unembed.W_U.dtype, unembed.device))
    return torch.log_softmax(z, -1, out=buffers.get("logp", shape, z.dtype, z.device))


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


class StatsBuffers:
    """Reusable ``[N, V]`` scratch tensors for :func:`stats_from_logprobs` and the lens's ``log_softmax``.

    On the CPU a fresh tensor that size is a fresh ``mmap`` whose pages fault in on first touch; with a
    262k-token vocabulary, allocating a handful per layer put about 45 % of a decoding run in the kernel.
    One set serves every layer and chunk (written with ``out=``: the same kernels, the same bits)."""

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, int], dtype: torch.dtype, device) -> torch.Tensor:
        n, v = shape
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.device != torch.device(device) or buf.shape[1] != v \
                or buf.shape[0] < n:
            buf = self._bufs[name] = torch.empty(n, v, dtype=dtype, device=device)
        return buf[:n]


def stats_from_logprobs(logp: torch.Tensor, logp_final: torch.Tensor, target: torch.Tensor, k: int, *,
                        p_final: torch.Tensor | None = None, buffers: StatsBuffers | None = None) -> LayerStats:
    """Reduce ``logp [N, V]`` against ``logp_final [N, V]`` and ``target [N]`` (token ids).

    KL(p_L || p_l) in nats; rank = 1 + #{v : logp(v) > logp(t*)} (strict: ties do not count).
    ``p_final`` (= ``logp_final.exp()``) may be passed when many layers share one final distribution,
    ``buffers`` to reuse scratch tensors across calls; neither changes a bit of the result.
    """
    logp = logp.float()
    target = target.to(logp.device)
    if p_final is None:
        p_final = logp_final.exp()
    bufs = buffers if buffers is not None else StatsBuffers()
    scratch = bufs.get("stats", tuple(logp.shape), torch.float32, logp.device)
    kl = torch.sub(logp_final, logp, out=scratch).mul_(p_final).sum(-1)  # Σ p_L (log p_L − log p_l)
    p = torch.exp(logp, out=bufs.get("p", tuple(logp.shape), torch.float32, logp.device))
    entropy = -(torch.special.xlogy(p, p, out=scratch)).sum(-1)
    lp_target = logp.gather(-1, target[:, None])
    above = torch.gt(logp, lp_target, out=bufs.get("above", tuple(logp.shape), torch.bool, logp.device))
    # counted in fp32, exact while every partial count is an integer below 2^24 (any V up to 16.7M):
    # summing the bools directly converts them to a fresh [N, V] int64 tensor
    rank = 1 + (scratch.copy_(above).sum(-1).long() if logp.shape[-1] < 2 ** 24 else above.sum(-1))
    top_lp, top_ids = logp.topk(k, dim=-1)
    return LayerStats(kl=kl.clamp_min(0).cpu().numpy(), entropy=entropy.cpu().numpy(),
                      p_target=lp_target[:, 0].exp().cpu().numpy(), rank=rank.cpu().numpy(),
                      topk_ids=top_ids.cpu().numpy(), topk_probs=top_lp.exp().cpu().numpy())


class _LayersKLToFinal(torch.autograd.Function):
    """Per-layer mean KL(p_L || softmax(x_k W_U + b_U)) and its gradient in ``x``, chunked over positions.

    The tuned-lens loss ``mean_n Σ_v p_L (log p_L − log softmax z)`` on ``unembed`` logits ``z``, with the vocabulary axis never held for
    more than ``chunk`` positions. Per chunk, the model's own distribution ``p_L`` is computed once and
    shared by every layer, with ``Σ_v p_L(v) log p_L(v)`` and ``u = p_L W_Uᵀ``; then per layer

    - ``KL = Σ p_L log p_L − Σ p_L z + logsumexp z``, where ``Σ_v p_L(v) z_v = x·u + p_L·b_U`` (no pass
      over the vocabulary) and ``logsumexp z = max z − log max q`` (read off the softmax ``q``, whose
      largest entry is ``1 / Σ exp(z − max z)``: no second ``exp`` pass);
    - the gradient in closed form while the chunk's logits are at hand, ``∂KL/∂z = q − p_L``, so
      ``∂/∂x = (q − p_L) W_Uᵀ`` (the identity fused cross-entropy kernels use): nothing of size
      ``positions × V`` survives into backward.

    ``W_c`` / ``W_cT`` are ``W_U`` and its transpose in the dtype of the two per-layer matmuls. In
    bfloat16 this is what ``torch.autocast(dtype=bfloat16)`` does to the official loop's ``lens(h)``:
    bf16 inputs, logits rounded to bf16, softmax in fp32, the logit gradient rounded to bf16 for the
    backward matmul; only the reported loss's ``Σ p_L z`` uses unrounded logits. In float32 it is
    exact. ``p_L`` is always fp32, as the model's own output is.
    """

    @staticmethod
    def forward(ctx, x, x_final, W_U, b_U, W_c, W_cT, chunk):  # autograd's signature
        n_layers, n = x.shape[0], x.shape[1]
        want_grad = ctx.needs_input_grad[0]
        sums = torch.zeros(n_layers, dtype=torch.float64, device=x.device)
        grad = torch.empty_like(x) if want_grad else None
        # One set of [chunk, V] buffers serves every chunk and layer (written with ``out=``, the same
        # kernels, the same bits). A fresh tensor that size is a fresh mmap on the CPU whose pages fault
        # in on first touch: allocating them per layer spent about 30 % of a training step in the kernel.
        rows, vocab = min(chunk, n), W_U.shape[1]
        p_buf = x.new_empty(rows, vocab, dtype=torch.float32)  # p_L of the chunk (first its logits)
        q_buf = x.new_empty(rows, vocab, dtype=torch.float32)  # log p_L, then each layer's softmax
        z_buf = x.new_empty(rows, vocab, dtype=W_c.dtype)  # each layer's logits
        # ... in fp32 (+ b_U), the softmax's input: softmax(dtype=float32) would allocate this conversion
        zf_buf = (x.new_empty(rows, vocab, dtype=torch.float32)
                  if W_c.dtype != torch.float32 or b_U is not None else None)
        qc_buf = x.new_empty(rows, vocab, dtype=W_c.dtype) if want_grad and W_c.dtype != torch.float32 else None
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            m = stop - start
            z_final = torch.matmul(x_final[start:stop], W_U, out=p_buf[:m])
            if b_U is not None:
                z_final += b_U
            logp_final = torch.log_softmax(z_final, dim=-1, out=q_buf[:m])
            p_final = torch.exp(logp_final, out=p_buf[:m])
            neg_entropy = torch.linalg.vecdot(p_final, logp_final)  # Σ p_L log p_L
            u = p_final @ W_U.T  # [c, D]: Σ_v p_L(v) z_v = x·u (+ p_L·b_U)
            p_bias = 0.0 if b_U is None else p_final @ b_U
            for k in range(n_layers):
                x_k = x[k, start:stop]
                z = torch.matmul(x_k.to(W_c.dtype), W_c, out=z_buf[:m])
                if zf_buf is not None:
                    z = zf_buf[:m].copy_(z)  # exact
                    if b_U is not None:
                        z += b_U
                q = torch.softmax(z, dim=-1, out=q_buf[:m])
                lse = z.amax(dim=-1) - q.amax(dim=-1).log()  # argmax z = argmax q
                kl = neg_entropy - (torch.linalg.vecdot(x_k, u) + p_bias) + lse
                sums[k] += kl.sum(dtype=torch.float64)
                if want_grad:
                    q -= p_final
                    qc = q if qc_buf is None else qc_buf[:m].copy_(q)
                    grad[k, start:stop] = (qc @ W_cT).float()
        if want_grad:
            grad /= n
            ctx.save_for_backward(grad)
        return (sums / n).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_losses):
        (grad,) = ctx.saved_tensors
        return grad * grad_losses.to(grad.dtype)[:, None, None], None, None, None, None, None, None


#: positions per chunk of :func:`layers_kl_to_final`: on a 2-core CPU, 1,024 positions × 30 layers of
#: SmolLM2 take 7.6 s (forward and gradient, bf16) at 128, 9.3 s at 64 or 256
KL_CHUNK = 128


def layers_kl_to_final(unembed: Unembed, x: torch.Tensor, x_final: torch.Tensor,
                       compute_dtype: torch.dtype = torch.float32, chunk: int = KL_CHUNK) -> torch.Tensor:
    """Mean KL(p_L || p_k) in nats per layer, ``[K]`` (differentiable in ``x``).

    ``x [K, N, D]``: the *normalised* states of K layers (``unembed.norm`` already applied, so autograd
    sees the norm and any translator before it); ``x_final [N, D]``: the normalised last-layer states,
    whose logits are the model's own. See :class:`_LayersKLToFinal` for the chunking and the gradient.
    """
    device = unembed.device
    return _LayersKLToFinal.apply(x.float().to(device), x_final.float().to(device), unembed.W_U, unembed.b_U,
                                  unembed.weight_as(compute_dtype), unembed.weight_as(compute_dtype, transposed=True),
                                  int(chunk))


def n_chunks(n: int, chunk: int = CHUNK) -> int:
    return max(1, math.ceil(n / chunk))
