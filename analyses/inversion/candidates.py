"""The proposer's next-token candidates: banned tokens, the CTRL repetition penalty, top-k ∩ top-p
(docs/methods.md, "Embedding inversion")."""

from __future__ import annotations

from functools import lru_cache

import torch

#: substrings that ban a token (the repo's \n, ", @ and NBSP, plus the other newline/quote forms)
BANNED_SUBSTRINGS = ("\n", "\r", '"', "@", "\xa0", "“", "”", "\t")


@lru_cache(maxsize=8)
def _banned_ids_cached(tok_key: int, tokenizer, vocab_size: int) -> torch.Tensor:
    n = len(tokenizer)
    pieces = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)
    banned = torch.zeros(vocab_size, dtype=torch.bool)
    for i, piece in enumerate(pieces):
        # a token that decodes to nothing would only repeat its parent text
        if piece == "" or any(s in piece for s in BANNED_SUBSTRINGS):
            banned[i] = True
    special = set(tokenizer.all_special_ids)
    special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if tokenizer.eos_token_id is not None:
        special.add(tokenizer.eos_token_id)
    for i in special:
        if 0 <= i < vocab_size:
            banned[i] = True
    banned[n:] = True  # logits rows with no token
    return banned


def banned_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """bool [V]: tokens the proposer may never propose (see :data:`BANNED_SUBSTRINGS`)."""
    return _banned_ids_cached(id(tokenizer), tokenizer, vocab_size)


def apply_repetition_penalty(logits: torch.Tensor, context_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty: for each row b and every token in ``context_ids[b]`` (prompt + generated),
    positive logits / penalty, negative logits * penalty. logits [B, V], context_ids [B, T]."""
    if penalty == 1.0:
        return logits
    picked = torch.gather(logits, 1, context_ids)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(1, context_ids, picked)


def propose(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """top-k ∩ top-p proposals per row: (token ids [B, k], valid mask [B, k]) sorted by probability.

    A token is inside top-p when the probability mass of the tokens ranked above it is < top_p
    (so the first token is always kept); top_p = 1 is plain top-k.
    """
    probs = torch.softmax(logits, dim=-1)
    k = min(top_k, logits.shape[-1])
    top_probs, top_ids = probs.topk(k, dim=-1)  # sorted descending
    mass_before = top_probs.cumsum(-1) - top_probs
    valid = (mass_before < top_p) & (top_probs > 0)
    return top_ids, valid
