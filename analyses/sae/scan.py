"""One streamed pass of an SAE over rows: quality sums, firing densities, activation histograms, each
latent's top-activating rows and the co-occurrence counts (docs/methods.md, "SAEs on embeddings and
residual streams"). Memory is one batch of rows and codes plus ``[d_sae, ...]`` accumulators.

- fraction of variance unexplained ``FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖²`` (``x̄`` the mean of the rows scanned);
- ``L0``: mean number of latents firing (``z > 0``) per row; density of a latent: the share of rows it
  fires on; dead: density 0; dense: density above :data:`~.settings.DENSE_DENSITY`;
- histogram of ``log10 z`` over the rows a latent fires on, in :data:`HIST_BINS` fixed bins from
  ``10^HIST_LO`` to ``10^HIST_HI`` (values outside land in the end bins);
- top rows: the ``top_m`` largest activations of each latent with their row positions;
- co-occurrence ``C[i, j]``: the number of rows on which latents ``i`` and ``j`` both fire (``C[i, i]``
  is latent ``i``'s count), as in ``saerch/matrix.py`` (there one row is one abstract; for a
  residual target one row is one token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .sae import SparseAutoencoder
from .settings import DENSE_DENSITY

HIST_LO, HIST_HI, HIST_BINS = -4.0, 4.0, 64
SCAN_BATCH = 2048


@dataclass
class Scan:
    """Accumulated statistics of a pass (numpy, float64 unless noted)."""

    n_rows: int = 0
    sq_err: float = 0.0
    sq_norm: float = 0.0
    sum_x: np.ndarray | None = None
    active_total: float = 0.0
    counts: np.ndarray | None = None  # [F] rows fired on
    sum_act: np.ndarray | None = None  # [F]
    hist: np.ndarray | None = None  # int64 [F, HIST_BINS]
    top_values: np.ndarray | None = None  # float32 [top_m, F], descending
    top_rows: np.ndarray | None = None  # int64 [top_m, F] positions in the source (-1: none)
    cooc: np.ndarray | None = None  # [F, F]
    extra: dict = field(default_factory=dict)

    @property
    def density(self) -> np.ndarray:
        return self.counts / max(self.n_rows, 1)

    def quality(self) -> dict:
        """FVU, MSE per dimension, L0, dead and dense latents of the rows scanned."""
        total = self.sq_norm - float(self.sum_x @ self.sum_x) / max(self.n_rows, 1)
        d = len(self.sum_x)
        dens = self.density
        return {"n_rows": int(self.n_rows), "fvu": self.sq_err / max(total, 1e-30),
                "mse": self.sq_err / max(self.n_rows * d, 1), "l0": self.active_total / max(self.n_rows, 1),
                "dead": int((dens == 0).sum()), "dead_fraction": float((dens == 0).mean()),
                "dense": int((dens > DENSE_DENSITY).sum()), "dense_fraction": float((dens > DENSE_DENSITY).mean())}


def hist_edges() -> np.ndarray:
    """The ``HIST_BINS + 1`` edges of the activation histograms, in activation units (log-spaced)."""
    return np.logspace(HIST_LO, HIST_HI, HIST_BINS + 1)


def _merge_top(scan: Scan, z: torch.Tensor, positions: np.ndarray, top_m: int) -> None:
    m = min(top_m, z.shape[0])
    values, local = torch.topk(z, m, dim=0)  # [m, F]
    rows = torch.as_tensor(positions, dtype=torch.long)[local]
    values = torch.cat([torch.as_tensor(scan.top_values), values.float().cpu()])
    rows = torch.cat([torch.as_tensor(scan.top_rows), rows.cpu()])
    best, order = torch.topk(values, top_m, dim=0)
    scan.top_values, scan.top_rows = best.numpy(), torch.gather(rows, 0, order).numpy()


def _histogram(scan: Scan, z: torch.Tensor) -> None:
    feature = torch.nonzero(z > 0)[:, 1]
    values = z[z > 0]
    if len(values) == 0:
        return
    bins = ((torch.log10(values) - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS).long().clamp_(0, HIST_BINS - 1)
    counts = torch.bincount(feature * HIST_BINS + bins, minlength=scan.hist.size)
    scan.hist += counts.reshape(scan.hist.shape).cpu().numpy()


@torch.no_grad()
def scan(sae: SparseAutoencoder, source, *, top_m: int = 0, histogram: bool = False, cooccurrence: bool = False,
         batch: int = SCAN_BATCH, progress=None) -> Scan:
    """Stream ``source`` (``ArrayRows`` / ``StoreRows``) through ``sae`` once; see the module docstring."""
    device = sae.W_enc.device
    F_ = sae.d_sae
    out = Scan(sum_x=np.zeros(sae.d_in), counts=np.zeros(F_), sum_act=np.zeros(F_))
    if top_m:
        out.top_values = np.zeros((top_m, F_), np.float32)
        out.top_rows = np.full((top_m, F_), -1, np.int64)
    if histogram:
        out.hist = np.zeros((F_, HIST_BINS), np.int64)
    if cooccurrence:
        out.cooc = np.zeros((F_, F_))
    for n, (positions, rows) in enumerate(source.chunks(batch)):
        x = torch.from_numpy(rows).to(device)
        z = sae.encode(x)
        recon = sae.decode(z)
        active = (z > 0).float()
        out.n_rows += len(rows)
        out.sq_err += float((recon - x).double().pow(2).sum())
        out.sq_norm += float(x.double().pow(2).sum())
        out.sum_x += x.double().sum(0).cpu().numpy()
        out.active_total += float(active.sum())
        out.counts += active.sum(0).double().cpu().numpy()
        out.sum_act += z.double().sum(0).cpu().numpy()
        if top_m:
            _merge_top(out, z, positions, top_m)
        if histogram:
            _histogram(out, z)
        if cooccurrence:
            out.cooc += (active.T @ active).double().cpu().numpy()
        if progress is not None:
            progress(min((n + 1) * batch, source.n_rows), source.n_rows, "encoding the corpus")
    return out


def evaluate(sae: SparseAutoencoder, source) -> dict:
    """:meth:`Scan.quality` of one pass, with each latent's density (``density`` [d_sae] list)."""
    result = scan(sae, source)
    return {**result.quality(), "density": result.density.tolist()}
