"""Attention-pattern scores that identify induction circuits without any published list.

On ``[BOS] r r`` sequences (period S, positions 0 = BOS, 1..S first copy, S+1..2S second copy),
with the patterns (``blocks.{l}.attn.hook_pattern``) read through the activation store and scored by
:func:`workbench.hooked.repeat_pattern_scores`:

- previous-token score of a head: mean attention from position t to t-1, over t = 1..2S;
- induction score: mean attention from t to t-S+1 (the token after the previous occurrence of the
  current token), over the second copy t = S+1..2S (Olsson et al. 2022; docs/methods.md,
  "Ground-truth circuits");
- duplicate-token score: mean attention from t to t-S over the second copy;
- current-token score: mean attention from t to itself, over t = 1..2S.
"""

from __future__ import annotations

import pandas as pd

from workbench.data import TokenDataset
from workbench.hooked import ordinary_token_ids, repeat_scores_table, repeated_random_tokens
from workbench.store import ActivationStore

from .heads import Reader, store_reader


def repeat_attention(model, read: Reader, n_examples: int = 100, period: int = 50, seed: int = 0,
                     batch_size: int = 50, vocab_limit: int | None = 20000) -> tuple[pd.DataFrame, bool]:
    """:func:`attention_scores` through ``read``, and whether the store read was a cache hit."""
    tok = model.tokenizer
    bos = getattr(tok, "bos_token_id", None)
    seqs = repeated_random_tokens(ordinary_token_ids(tok, vocab_limit), n_examples, period, bos=bos, seed=seed,
                                  chunk=batch_size)
    hooks = model.hook_names("attn_pattern")
    dataset = TokenDataset(f"circuits-repeats-p{period}-s{seed}", seqs)
    entry = read(hooks, dataset, batch_size)
    try:
        table = repeat_scores_table(lambda layer, i: entry.attention_pattern(hooks[layer], i), len(seqs),
                                    len(hooks), period, offset=1 if bos is not None else 0)
    finally:
        entry.close()
    return table, not entry.extracted


def attention_scores(model, n_examples: int = 100, period: int = 50, seed: int = 0, *,
                     store: ActivationStore | None = None, read: Reader | None = None, batch_size: int = 50,
                     vocab_limit: int | None = 20000) -> pd.DataFrame:
    """Rows per (layer, head): prev_token_score, induction_score, duplicate_token_score, current_token_score.

    ``model`` is a loaded decoder (:func:`workbench.models.load_model`); the patterns of the
    ``n_examples`` random sequences come from ``read`` or ``store`` (default: the workbench's cache).
    """
    reader = read if read is not None else store_reader(model, store)
    return repeat_attention(model, reader, n_examples, period, seed, batch_size, vocab_limit)[0]
