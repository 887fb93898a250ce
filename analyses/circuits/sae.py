"""The sparse autoencoder of O'Neill & Bui (arXiv 2405.12522), with the official code's quirks.

Reference: ``charlieoneill11/sae-circuits`` @10fd2e7, ``src/sae.py`` and ``src/train.py``
(docs/methods.md, "SAE circuits"). One SAE is shared by all heads; it sees each (example, head) output vector
``x`` (d_model wide, the head's output in the residual basis averaged over positions) as one row.

- ``f = ReLU(W_e (x - b_d) + b_e)``, ``x_hat = W_d f + b_d`` (tied pre-encoder / post-decoder bias).
- ``W_e`` [F, d] and ``W_d`` [d, F] are both normalised along their *input* dimension (last axis of
  the ``torch.nn.Linear``-shaped weight): for ``W_e`` one unit-norm row per feature, for ``W_d`` one
  unit-norm row per *output dimension* rather than per atom (the quirk). Weights are renormalised at
  every forward, and a gradient hook removes the gradient component parallel to each row.
- Init: weights N(0, 1) then normalised; ``b_e ~ U(-1/sqrt(d), 1/sqrt(d))``; ``b_d = 0``.
- Loss: ``mse_loss(x_hat, x) + lambda * mean_rows ||f||_1``; Adam, full batch.
- Code of a row: ``argmax_j f_j`` (first index on ties, so an all-zero row gets code 0).
"""

from __future__ import annotations

import math

import torch


def _project_out_parallel(weight: torch.Tensor):
    """Gradient hook: ``g - (g . w) w / |w|`` per row (keeps rows on the unit sphere)."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        dot = (grad * weight).sum(-1, keepdim=True)
        return grad - dot * weight / weight.norm(dim=-1, keepdim=True)

    return hook


class CircuitSAE(torch.nn.Module):
    """Shared-by-all-heads SAE. Input rows float32 [..., d_model] -> features [..., n_features]."""

    def __init__(self, d_model: int, n_features: int = 200, generator: torch.Generator | None = None):
        super().__init__()
        self.d_model, self.n_features = d_model, n_features
        w_e = torch.randn(n_features, d_model, generator=generator)
        w_d = torch.randn(d_model, n_features, generator=generator)
        bound = 1.0 / math.sqrt(d_model) if d_model > 0 else 0.0
        b_e = (torch.rand(n_features, generator=generator) * 2 - 1) * bound
        self.W_e = torch.nn.Parameter(torch.nn.functional.normalize(w_e, dim=-1))
        self.b_e = torch.nn.Parameter(b_e)
        self.W_d = torch.nn.Parameter(torch.nn.functional.normalize(w_d, dim=-1))
        self.b_d = torch.nn.Parameter(torch.zeros(d_model))
        self.W_e.register_hook(_project_out_parallel(self.W_e))
        self.W_d.register_hook(_project_out_parallel(self.W_d))

    @torch.no_grad()
    def _renormalise(self) -> None:
        self.W_e.copy_(torch.nn.functional.normalize(self.W_e, dim=-1))
        self.W_d.copy_(torch.nn.functional.normalize(self.W_d, dim=-1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [..., d] -> (features f [..., F], reconstruction x_hat [..., d])."""
        self._renormalise()
        f = torch.relu((x - self.b_d) @ self.W_e.T + self.b_e)
        x_hat = f @ self.W_d.T + self.b_d
        return f, x_hat

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Top-1 code per row: int64 [...] = argmax over features."""
        f, _ = self.forward(x)
        return f.argmax(dim=-1)


def sae_loss(f: torch.Tensor, x_hat: torch.Tensor, x: torch.Tensor, lam: float) -> torch.Tensor:
    """``MSE(x_hat, x) + lam * mean over rows of ||f||_1`` (rows = every (example, head))."""
    recon = torch.nn.functional.mse_loss(x_hat, x)
    sparsity = f.reshape(-1, f.shape[-1]).abs().sum(-1).mean()
    return recon + lam * sparsity


def train_sae(x_train: torch.Tensor, *, n_features: int = 200, lam: float = 0.02, n_epochs: int = 500,
              lr: float = 1e-3, seed: int = 0) -> tuple[CircuitSAE, float]:
    """Train on ``x_train`` float32 [n_examples, n_heads, d_model], full batch. Returns (sae, final loss).

    Same arithmetic as autograd on :class:`CircuitSAE` (renormalise, forward, backward, project out
    the parallel gradient, Adam), with the gradients written out by hand: the SAE is tiny, so
    autograd's per-op overhead would dominate (tests check both paths agree).
    Backward of ``L = sum((x_hat - x)^2) / (R d) + lam * sum(f) / R`` (f >= 0; R rows):
    ``g = 2 (x_hat - x) / (R d)``, ``dW_d = g^T f``, ``dpre = (g W_d + lam / R) * [pre > 0]``,
    ``dW_e = dpre^T (x - b_d)``, ``db_e = sum_r dpre``, ``db_d = sum_r g - sum_r dpre W_e``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    # initialised on the CPU (the same numbers on every device), trained where the activations are
    sae = CircuitSAE(x_train.shape[-1], n_features, generator=gen).to(x_train.device)
    x = x_train.reshape(-1, x_train.shape[-1]).float()
    rows, d = x.shape
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    W_e, b_e, W_d, b_d = sae.W_e, sae.b_e, sae.W_d, sae.b_d
    loss = float("nan")
    with torch.no_grad():
        for _ in range(int(n_epochs)):
            sae._renormalise()
            xc = x - b_d
            pre = torch.addmm(b_e, xc, W_e.T)
            f = torch.relu(pre)
            diff = torch.addmm(b_d, f, W_d.T).sub_(x)
            loss = float(diff.square().mean() + lam * f.sum() / rows) if _ == n_epochs - 1 else loss
            g = diff.mul_(2.0 / (rows * d))
            gW_d = g.T @ f
            dpre = torch.addmm(torch.full_like(pre, lam / rows), g, W_d).mul_(pre > 0)
            gW_e = dpre.T @ xc
            gb_e = dpre.sum(0)
            gb_d = g.sum(0) - (dpre @ W_e).sum(0)
            # the official backward hook: remove the gradient component parallel to each row
            gW_e -= (gW_e * W_e).sum(-1, keepdim=True) * W_e / W_e.norm(dim=-1, keepdim=True)
            gW_d -= (gW_d * W_d).sum(-1, keepdim=True) * W_d / W_d.norm(dim=-1, keepdim=True)
            W_e.grad, b_e.grad, W_d.grad, b_d.grad = gW_e, gb_e, gW_d, gb_d
            opt.step()
    if not math.isfinite(loss):
        with torch.no_grad():
            f, x_hat = sae(x)
            loss = float(sae_loss(f, x_hat, x, lam))
    return sae, loss


def train_sae_autograd(x_train: torch.Tensor, *, n_features: int = 200, lam: float = 0.02, n_epochs: int = 500,
                       lr: float = 1e-3, seed: int = 0) -> tuple[CircuitSAE, float]:
    """Reference path of :func:`train_sae` through autograd and the gradient hooks (slower)."""
    gen = torch.Generator().manual_seed(int(seed))
    sae = CircuitSAE(x_train.shape[-1], n_features, generator=gen)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(int(n_epochs)):
        opt.zero_grad(set_to_none=True)
        f, x_hat = sae(x_train)
        loss = sae_loss(f, x_hat, x_train, lam)
        loss.backward()
        opt.step()
    return sae, float(loss.detach())
