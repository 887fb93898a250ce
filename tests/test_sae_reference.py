"""A plain PyTorch TopK SAE loop, written out as in ``saerch/topk_sae.py`` (dense latents, the decoder as
``nn.Linear`` weights), against which the back-end's streamed, sparse-decoding loop must give the same
losses; ``benchmarks/bench_sae.py`` times it as the reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analyses.sae.inputs import ArrayRows
from analyses.sae.settings import resolve, settings_from
from analyses.sae.train import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(n=6000, d=32, m=64, k=3, noise=0.01, seed=0):
    """Rows that are sparse positive combinations of ``k`` of ``m`` unit directions, plus noise (and the directions)."""
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((m, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    idx = np.stack([rng.choice(m, k, replace=False) for _ in range(n)])
    X = np.einsum("nk,nkd->nd", rng.uniform(0.5, 1.5, (n, k)), D[idx]) + noise * rng.standard_normal((n, d))
    return X.astype(np.float32), D


def reference_losses(X, s, dead_steps, n_steps):
    """A plain dense TopK SAE loop written out as in saerch/topk_sae.py, with the documented batch order."""
    X = torch.as_tensor(X)
    n, d = X.shape
    g = torch.Generator().manual_seed(s["seed"])
    dec = torch.empty(d, s["d_sae"])  # decoder.weight [d_model, n_dirs]
    torch.nn.init.xavier_uniform_(dec, generator=g)
    dec = (dec / dec.norm(dim=0, keepdim=True)).requires_grad_()
    enc = dec.detach().t().clone().requires_grad_()  # encoder.weight [n_dirs, d_model]
    sample = np.sort(np.random.default_rng([s["seed"], 1]).choice(n, min(n, 4096), replace=False))
    pre_bias = torch.median(X[sample], dim=0).values.clone().requires_grad_()
    latent_bias = torch.zeros(s["d_sae"], requires_grad=True)
    params = [enc, latent_bias, dec, pre_bias]
    opt = torch.optim.Adam(params, lr=s["lr"])
    stats = torch.zeros(s["d_sae"], dtype=torch.long)

    def nmse(r, x):
        return ((r - x) ** 2).sum() / ((x - x.mean(0, keepdim=True)) ** 2).sum()

    def decode(pre, k):
        vals, inds = torch.topk(pre, k, dim=-1)
        vals = F.relu(vals)
        return torch.zeros_like(pre).scatter(-1, inds, vals), inds, vals

    batch, losses = min(s["batch_size"], n), []
    per_epoch = n // batch
    for step in range(n_steps):
        epoch, j = divmod(step, per_epoch)
        rows = np.sort(np.random.default_rng([s["seed"], epoch]).permutation(n)[j * batch:(j + 1) * batch])
        x = X[rows]
        pre = (x - pre_bias) @ enc.t() + latent_bias
        lat, inds, vals = decode(pre, s["k"])
        recons = lat @ dec.t() + pre_bias
        mlat, _, _ = decode(pre, s["multik"])
        loss = nmse(recons, x) + s["multik_coef"] * nmse(mlat @ dec.t() + pre_bias, x)
        with torch.no_grad():
            stats += 1
            stats[inds[vals > 0]] = 0
        dead = stats > dead_steps
        if dead.any():
            masked = torch.where(dead[None], pre, torch.tensor(-float("inf")))
            alat, _, _ = decode(masked, min(s["auxk"], int(dead.sum())))
            loss = loss + s["auxk_coef"] * nmse(alat @ dec.t(), (x - recons).detach())
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            dec.grad -= (dec * dec.grad).sum(0, keepdim=True) * dec
        torch.nn.utils.clip_grad_norm_(params, s["grad_clip"])
        opt.step()
        with torch.no_grad():
            dec /= dec.norm(dim=0, keepdim=True)
        losses.append(float(loss.detach()))
    return losses


def test_same_losses_as_a_plain_reference_loop():
    X, _ = planted(n=2000, d=24, m=48)
    s = resolve(settings_from({"k": 4, "d_sae": 96, "steps": 30, "batch_size": 200, "lr": 2e-3, "dead_rows": 600}),
                24, target_token_level=False)
    ours = []
    _, record = fit(ArrayRows(X), s, on_step=lambda step, out: ours.append(float(out["loss"].detach())))
    assert record["dead_steps"] == 3  # dead latents (and the auxiliary loss) within the steps compared
    np.testing.assert_allclose(ours, reference_losses(X, s, record["dead_steps"], 30), rtol=1e-5, atol=1e-6)
