"""The sparse autoencoder itself: TopK (Gao et al. 2024) or ReLU + L1, in SAELens's parameter layout.

Method: docs/methods.md, "SAEs on embeddings and residual streams". Parameters, with SAELens's names
and shapes (so that ``sae_lens.SAE.load_from_disk`` reads the saved files as they are):

- ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` (the paper's
  ``b_pre``, subtracted before encoding: SAELens's ``apply_b_dec_to_input=True``);
- topk: ``z = ReLU(TopK_k((x - b_dec) W_enc + b_enc))``, ``x̂ = z W_dec + b_dec`` (O'Neill et al. 2024,
  after Gao et al. 2024; ``saerch/topk_sae.py``);
- relu: ``z = ReLU((x - b_dec) W_enc + b_enc)`` (SAELens "standard"), trained with an L1 penalty;
- each row of ``W_dec`` (the paper's decoder column: one atom) has unit norm, kept by projecting the
  parallel part out of its gradient and renormalising after every optimiser step.

Losses (per batch, ``nmse(a, x) = Σ‖a − x‖² / Σ‖x − x̄‖²`` with ``x̄`` the batch mean):
``nmse(x̂_k, x) + multik_coef · nmse(x̂_4k, x) + auxk_coef · nmse(ê, x − x̂_k)`` where ``ê`` decodes
(without bias) the top ``auxk`` pre-activations among dead latents; the auxiliary term is 0 while no
latent is dead. relu: ``nmse(x̂, x) + l1_coef · mean_rows Σ_j z_j``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from workbench.errors import WorkbenchError

ARCHITECTURES = ("topk", "relu")


def nmse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Σ‖recon − x‖² / Σ‖x − mean(x)‖²`` over the rows of a batch (``saerch``'s normalized_mse)."""
    return (recon - x).pow(2).sum() / (x - x.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)


class SparseAutoencoder(torch.nn.Module):
    """A TopK or ReLU SAE: rows float32 ``[..., d_in]`` -> codes ``[..., d_sae]`` -> ``[..., d_in]``."""

    def __init__(self, d_in: int, d_sae: int, k: int = 16, architecture: str = "topk"):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise WorkbenchError(f"architecture must be one of {ARCHITECTURES}; got {architecture!r}.")
        if d_in < 1 or d_sae < 1:
            raise WorkbenchError(f"an SAE needs d_in >= 1 and d_sae >= 1; got {d_in}, {d_sae}.")
        if architecture == "topk" and not 1 <= k <= d_sae:
            raise WorkbenchError(f"k = {k} must be between 1 and the dictionary size d_sae = {d_sae}: "
                                 "lower k or raise d_sae.")
        self.d_in, self.d_sae, self.k, self.architecture = int(d_in), int(d_sae), int(k), architecture
        self.W_enc = torch.nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec = torch.nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    # ---- initialisation (saerch's init_from_data_) -----------------------------------------------
    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor, seed: int) -> None:
        """``b_dec`` = coordinate-wise median of ``sample [n, d_in]``; ``W_dec`` Xavier-uniform from a
        generator seeded with ``seed``, rows at unit norm; ``W_enc = W_dec.T``; ``b_enc = 0``."""
        gen = torch.Generator().manual_seed(int(seed))
        w = torch.empty(self.d_in, self.d_sae)  # the reference's decoder.weight layout [d_model, n_dirs]
        torch.nn.init.xavier_uniform_(w, generator=gen)
        self.W_dec.copy_(F.normalize(w.T, dim=1))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.copy_(torch.median(sample.float().to(self.b_dec.device), dim=0).values)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from each ``W_dec`` row's gradient its component along the row (unit-norm atoms)."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad.sub_(parallel * self.W_dec)

    # ---- forward -------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise WorkbenchError(f"this SAE reads vectors of dimension {self.d_in}; got {x.shape[-1]} "
                                 f"(shape {tuple(x.shape)}): give vectors from the model and hook it was trained on.")

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − b_dec) W_enc + b_enc``: ``[..., d_in] -> [..., d_sae]``."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    @staticmethod
    def top(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, ReLU(values)) of the ``k`` largest pre-activations of each row, both ``[B, k]``."""
        values, indices = torch.topk(pre, k=k, dim=-1)
        return indices, F.relu(values)

    def decode_sparse(self, indices: torch.Tensor, values: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """``Σ_j values_j W_dec[indices_j] (+ b_dec)`` for ``[B, m]`` codes, without a dense ``[B, d_sae]``."""
        out = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")
        return out + self.b_dec if bias else out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes ``z [..., d_sae]`` (zeros outside the top k for topk)."""
        self.check_input(x)
        pre = self.pre_acts(x.to(self.W_enc.dtype))
        if self.architecture == "relu":
            return F.relu(pre)
        indices, values = self.top(pre.reshape(-1, self.d_sae), self.k)
        z = torch.zeros_like(pre.reshape(-1, self.d_sae)).scatter_(-1, indices, values)
        return z.reshape(pre.shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``x̂ [..., d_in]``."""
        return self.decode(self.encode(x))


def topk_loss(sae: SparseAutoencoder, x: torch.Tensor, steps_since_fired: torch.Tensor, *, multik: int,
              multik_coef: float, auxk: int, auxk_coef: float, dead_steps: int) -> dict:
    """One TopK training loss on a batch ``x [B, d_in]``; updates ``steps_since_fired [d_sae]`` in place
    (+1 for every latent, 0 for those firing in this batch) before the dead mask is read, as saerch does.

    Returns ``{"loss", "recon", "multik", "auxk", "n_dead", "indices", "values"}`` (losses as tensors).
    """
    pre = sae.pre_acts(x)
    indices, values = sae.top(pre, sae.k)
    recon = sae.decode_sparse(indices, values)
    out = {"recon": nmse(recon, x), "indices": indices, "values": values}
    loss = out["recon"]
    with torch.no_grad():
        steps_since_fired += 1
        steps_since_fired[indices[values > 0]] = 0
        dead = steps_since_fired > dead_steps
        n_dead = int(dead.sum())
    out["n_dead"] = n_dead
    if multik_coef > 0 and multik > sae.k:
        m_idx, m_val = sae.top(pre, min(multik, sae.d_sae))
        out["multik"] = nmse(sae.decode_sparse(m_idx, m_val), x)
        loss = loss + multik_coef * out["multik"]
    else:
        out["multik"] = torch.zeros(())
    if auxk_coef > 0 and auxk > 0 and n_dead > 0:
        masked = torch.where(dead[None, :], pre, torch.full_like(pre, -math.inf))
        a_idx, a_val = sae.top(masked, min(auxk, n_dead))
        error = (x - recon).detach()
        out["auxk"] = nmse(sae.decode_sparse(a_idx, a_val, bias=False), error)
        loss = loss + auxk_coef * out["auxk"]
    else:
        out["auxk"] = torch.zeros(())
    out["loss"] = loss
    return out


def relu_loss(sae: SparseAutoencoder, x: torch.Tensor, steps_since_fired: torch.Tensor, *, l1_coef: float) -> dict:
    """ReLU + L1 training loss on ``x [B, d_in]``: ``nmse + l1_coef · mean_rows Σ_j z_j / r`` with ``r`` the
    batch's RMS distance to its mean (so the coefficient does not depend on the scale of the data; unit-norm
    atoms, so ``Σ z_j ‖W_dec_j‖ = Σ z_j``). Updates ``steps_since_fired`` like :func:`topk_loss`."""
    z = F.relu(sae.pre_acts(x))
    recon = sae.decode(z)
    out = {"recon": nmse(recon, x), "multik": torch.zeros(()), "auxk": torch.zeros(())}
    rms = (x - x.mean(0, keepdim=True)).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
    out["l1"] = z.sum(1).mean() / rms.detach()
    out["loss"] = out["recon"] + l1_coef * out["l1"]
    with torch.no_grad():
        steps_since_fired += 1
        steps_since_fired[(z > 0).any(0)] = 0
    out["n_dead"] = 0
    return out


def codes_numpy(sae: SparseAutoencoder, x: np.ndarray, device=None) -> np.ndarray:
    """Dense codes float32 ``[N, d_sae]`` of rows ``x [N, d_in]`` (a batch: callers chunk)."""
    with torch.no_grad():
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        return sae.encode(t.to(device or sae.W_enc.device)).cpu().numpy()
