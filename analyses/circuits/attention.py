"""Attention-pattern scores that identify induction circuits without any published list.

On ``[BOS] r r`` sequences (period S, positions 0 = BOS, 1..S first copy, S+1..2S second copy):

- previous-token score of a head: mean attention from position t to t-1, over t = 1..2S;
- induction score: mean attention from t to t-S+1 (the token after the previous occurrence of the
  current token), over the second copy t = S+1..2S (Olsson et al. 2022; METHODS.md section 7);
- duplicate-token score: mean attention from t to t-S over the second copy;
- current-token score: mean attention from t to itself, over t = 1..2S.
"""

from __future__ import annotations

import pandas as pd
import torch

from .hooked import model_shape
from .tasks import _plain_token_ids


@torch.no_grad()
def attention_scores(bridge, n_examples: int = 100, period: int = 50, seed: int = 0,
                     tokenizer=None, batch_size: int = 50, vocab_limit: int | None = 20000) -> pd.DataFrame:
    """Rows per (layer, head): prev_token_score, induction_score, duplicate_token_score, current_token_score."""
    tok = tokenizer if tokenizer is not None else bridge.tokenizer
    n_layers, n_heads, _ = model_shape(bridge)
    pool = torch.tensor(_plain_token_ids(tok, vocab_limit))
    gen = torch.Generator().manual_seed(seed)
    bos = getattr(tok, "bos_token_id", None)
    S = period
    sums = {k: torch.zeros(n_layers, n_heads, dtype=torch.float64) for k in ("prev", "ind", "dup", "self")}
    names = {f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)}
    done = 0
    while done < n_examples:
        b = min(batch_size, n_examples - done)
        r = pool[torch.randint(len(pool), (b, S), generator=gen)]
        parts = ([torch.full((b, 1), int(bos))] if bos is not None else []) + [r, r]
        ids = torch.cat(parts, dim=1)
        off = 1 if bos is not None else 0
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
        t_all = torch.arange(1, ids.shape[1])
        t_rep = torch.arange(off + S, off + 2 * S)
        for l in range(n_layers):
            pat = cache[f"blocks.{l}.attn.hook_pattern"].double()  # [B, H, Tq, Tk]
            sums["prev"][l] += pat[:, :, t_all, t_all - 1].mean(-1).sum(0)
            sums["ind"][l] += pat[:, :, t_rep, t_rep - S + 1].mean(-1).sum(0)
            sums["dup"][l] += pat[:, :, t_rep, t_rep - S].mean(-1).sum(0)
            sums["self"][l] += pat[:, :, t_all, t_all].mean(-1).sum(0)
        done += b
    rows = []
    for l in range(n_layers):
        for h in range(n_heads):
            rows.append({"layer": l, "head": h,
                         "prev_token_score": float(sums["prev"][l, h] / n_examples),
                         "induction_score": float(sums["ind"][l, h] / n_examples),
                         "duplicate_token_score": float(sums["dup"][l, h] / n_examples),
                         "current_token_score": float(sums["self"][l, h] / n_examples)})
    return pd.DataFrame(rows)
