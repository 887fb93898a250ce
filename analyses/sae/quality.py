"""The downstream cost of replacing vectors by their SAE reconstruction (docs/methods.md, "SAEs on
embeddings and residual streams").

- Sentence targets: title -> abstract retrieval (recall@1, MRR by cosine, :mod:`workbench.retrieval`)
  with the original embeddings, with both sides reconstructed, and with original queries against a
  reconstructed index.
- Residual targets: next-token cross-entropy (nats per predicted token) of the model as it is, with the
  layer replaced by its reconstruction at every position (position 0 kept with ``skip_first``), and with
  the layer zeroed there; ``loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)`` (SAELens's
  "CE loss score").
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.hooked import pad_right, run_batched
from workbench.retrieval import retrieval_scores

CE_BATCH = 4


@torch.no_grad()
def reconstruct(sae, X: np.ndarray, batch: int = 2048) -> np.ndarray:
    """``x̂`` float32 ``[N, d]`` of rows ``X [N, d]``, in batches on the SAE's device."""
    out = []
    for start in range(0, len(X), batch):
        x = torch.as_tensor(np.array(X[start:start + batch], dtype=np.float32)).to(sae.W_enc.device)
        out.append(sae(x).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, sae.d_in), np.float32)


def retrieval_cost(sae, queries: np.ndarray, documents: np.ndarray) -> dict:
    """Recall@1 and MRR with original, reconstructed and mixed embeddings (raw cosine: no centring)."""
    Qr, Dr = reconstruct(sae, queries), reconstruct(sae, documents)
    out = {"n_pairs": int(len(queries))}
    for name, (q, d) in {"original": (queries, documents), "reconstructed": (Qr, Dr),
                         "original_query_reconstructed_index": (queries, Dr)}.items():
        out[f"recall_at_1_{name}"], out[f"mrr_{name}"] = retrieval_scores(q, d, center=False)
    out["mrr_change"] = out["mrr_reconstructed"] - out["mrr_original"]
    return out


def _replacing(sae, kind: str, first: int):
    def hook(value, hook=None):
        flat = value[:, first:].float()
        new = sae(flat.reshape(-1, flat.shape[-1])).reshape(flat.shape) if kind == "sae" else torch.zeros_like(flat)
        return torch.cat([value[:, :first], new.to(value.dtype)], dim=1)
    return hook


@torch.no_grad()
def spliced_loss(model, sae, seqs: list[list[int]], hook: str, skip_first: bool, batch_size: int = CE_BATCH) -> dict:
    """Next-token cross-entropy (nats) clean, with ``hook`` replaced by the SAE's reconstruction, and zeroed."""
    first = 1 if skip_first else 0
    seqs = [s for s in seqs if len(s) > 1]
    out = {"n_texts": len(seqs), "n_predictions": int(sum(len(s) - 1 for s in seqs))}
    for kind in ("clean", "sae", "zero"):
        hooks = None if kind == "clean" else [(hook, _replacing(sae, kind, first))]
        total = 0.0
        for rows, logits, lengths in run_batched(model.bridge, seqs, hooks, batch_size):
            ids, _ = pad_right(seqs[rows])
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, ids[:, 1:, None].to(logp.device))[..., 0]
            mask = torch.arange(nll.shape[1])[None, :] < (lengths[:, None] - 1)
            total += float(nll[mask.to(nll.device)].sum())
        out[f"ce_{kind}"] = total / max(out["n_predictions"], 1)
    out["ce_increase"] = out["ce_sae"] - out["ce_clean"]
    gap = out["ce_zero"] - out["ce_clean"]
    out["loss_recovered"] = (out["ce_zero"] - out["ce_sae"]) / gap if gap > 0 else float("nan")
    return out
