"""What a feature (an SAE latent) is about: its top-activating texts, the words that set them apart
from the corpus, and for residual SAEs the tokens its decoder direction promotes and suppresses
(docs/methods.md, "SAEs on embeddings and residual streams").

- Examples: the ``top_n`` rows with the largest activation (for token-level SAEs at most one per text,
  shown as the token in ``window`` tokens of context).
- Word-contrast label (offline, not an LLM label): a word's share of the top examples containing it
  (the lower end of its one-sided 95% Wilson interval, so that two examples cannot look perfectly
  specific) minus its share of background snippets (every text of the corpus for sentence targets; a seeded
  sample of token windows of the same width for residual targets); words in at least two top examples,
  best first. The label is the best three words; *specificity* is the best word's difference (below 1).
- Logit effect: the decoder direction ``d_f`` through the model's final norm and unembedding,
  ``(LN_f(d_f) − LN_f(0)) W_U`` (a norm of a single direction is scale-free, so this is its linear
  part; the unembedding bias is left out as it is the same for every feature).
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import torch

from workbench.errors import WorkbenchError

WORD = re.compile(r"[a-z][a-z0-9'\-]{2,}")
N_BACKGROUND = 2000


def stop_words() -> frozenset:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def words_of(text: str, stop: frozenset) -> set[str]:
    return {w.strip("'-") for w in WORD.findall(text.lower()) if w not in stop}


class Snippets:
    """Texts of rows: whole texts for sentence targets, token windows with the token marked otherwise."""

    def __init__(self, entry, dataset, token_level: bool, window: int = 8):
        self.entry, self.dataset, self.token_level, self.window = entry, dataset, token_level, int(window)
        titles = dataset.frame["title"] if "title" in dataset.frame.columns and dataset.text_column != "title" else None
        self.titles = None if titles is None else titles.astype(str).tolist()

    def example(self, text: int, position: int, activation: float) -> dict:
        out = {"text": int(text), "activation": round(float(activation), 5)}
        if self.titles is not None:
            out["title"] = self.titles[text]
        if not self.token_level:
            body = self.dataset.texts[text]
            out["snippet"] = body if len(body) <= 240 else body[:240] + "…"
            return out
        tokens = self.entry.token_strings(int(text))
        a, b = max(0, position - self.window), min(len(tokens), position + self.window // 2 + 1)
        out.update(position=int(position), before="".join(tokens[a:position]), token=tokens[position],
                   after="".join(tokens[position + 1:b]))
        out["snippet"] = out["before"] + out["token"] + out["after"]
        return out

    def words_text(self, example: dict) -> str:
        """The text a top example's words are counted in: the whole text (sentence targets), else the window."""
        return example["snippet"] if self.token_level else self.dataset.texts[example["text"]]

    def background(self, seed: int, rows: np.ndarray | None = None) -> list[str]:
        """Background snippets: every text (sentence targets) or a seeded sample of token windows."""
        if not self.token_level:
            return list(self.dataset.texts[:self.entry.n_texts])
        pick = np.random.default_rng([int(seed), 3]).choice(len(rows), min(len(rows), N_BACKGROUND), replace=False)
        text = np.searchsorted(self.entry.offsets, rows[pick], side="right") - 1
        return [self.example(t, int(r - self.entry.offsets[t]), 0.0)["snippet"] for t, r in zip(text, rows[pick])]


def top_examples(scan, snippets: Snippets, locate, top_n: int) -> list[list[dict]]:
    """Per feature its ``top_n`` examples (``locate(positions) -> (text, position)`` arrays)."""
    out = []
    for f in range(scan.top_values.shape[1]):
        values, rows = scan.top_values[:, f], scan.top_rows[:, f]
        keep = values > 0
        texts, positions = locate(rows[keep]) if keep.any() else (np.zeros(0, int), np.zeros(0, int))
        chosen, seen = [], set()
        for value, text, position in zip(values[keep], texts, positions):
            if snippets.token_level and int(text) in seen:
                continue
            seen.add(int(text))
            chosen.append(snippets.example(int(text), int(position), float(value)))
            if len(chosen) == top_n:
                break
        out.append(chosen)
    return out


def wilson_lower(count: int, n: int, z: float = 1.645) -> float:
    """Lower end of the one-sided 95% Wilson interval of a share ``count / n``: a word in 2 of 2 top examples
    scores 0.43, in 8 of 8 0.75, so a feature with few examples cannot look perfectly specific."""
    if n <= 0:
        return 0.0
    p, z2 = count / n, z * z
    return float((p + z2 / (2 * n) - z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))) / (1 + z2 / n))


def contrast_words(examples: list[dict], background_df: Counter, n_background: int, stop: frozenset,
                   n_words: int = 6, text_of=None) -> list[list]:
    """``[[word, share in top examples, share in background], ...]``, best difference first (module docstring).
    ``text_of(example)``: the text whose words count (default its snippet; sentence targets: the whole text,
    as in the background, so that a word cut by the snippet's end is not counted)."""
    if len(examples) < 2:
        return []
    text_of = text_of or (lambda ex: ex["snippet"])
    df = Counter(w for ex in examples for w in words_of(text_of(ex), stop))
    n = len(examples)
    scored = [(wilson_lower(c, n) - background_df.get(w, 0) / max(n_background, 1), w, c) for w, c in df.items()
              if c >= 2]
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [[w, round(c / n, 3), round(background_df.get(w, 0) / max(n_background, 1), 4)]
            for score, w, c in scored[:n_words] if score > 0]


def background_counts(snippets: list[str], stop: frozenset) -> Counter:
    return Counter(w for s in snippets for w in words_of(s, stop))


@torch.no_grad()
def logit_effects(sae, model, n: int = 8, chunk: int = 256) -> tuple[list, list]:
    """Per feature its ``n`` most promoted and most suppressed tokens ``[[token, logit], ...]``."""
    bridge = getattr(model, "bridge", None)
    if bridge is None:
        raise WorkbenchError(f"logit effects need a decoder hooked through TransformerBridge; {model.name} is a "
                             f"{model.kind}.")
    W_U = bridge.W_U.detach().float()
    norm = bridge.ln_final
    zero = norm(torch.zeros(1, W_U.shape[0], device=W_U.device)).float()
    promoted, suppressed = [], []
    decode = model.tokenizer.decode
    for start in range(0, sae.d_sae, chunk):
        d = sae.W_dec[start:start + chunk].detach().float().to(W_U.device)
        effect = (norm(d).float() - zero) @ W_U
        for sign, out in ((1, promoted), (-1, suppressed)):
            values, ids = torch.topk(sign * effect, n, dim=1)
            out.extend([[decode([int(i)]), round(float(sign * v), 4)] for i, v in zip(row_ids, row_v)]
                       for row_ids, row_v in zip(ids.cpu(), values.cpu()))
    return promoted, suppressed


def feature_rows(scan, examples: list[list[dict]], background: list[str], effects: tuple | None,
                 text_of=None) -> list[dict]:
    """One record per feature: density, activations, label, specificity and the JSON columns."""
    stop = stop_words()
    bg = background_counts(background, stop)
    counts = scan.counts
    rows = []
    for f, exs in enumerate(examples):
        words = contrast_words(exs, bg, len(background), stop, text_of=text_of)
        fired = counts[f]
        rows.append({
            "feature": f, "density": float(fired / max(scan.n_rows, 1)),
            "log10_density": float(np.log10(fired / max(scan.n_rows, 1) + 1e-10)),
            "mean_activation": float(scan.sum_act[f] / fired) if fired else 0.0,
            "max_activation": float(scan.top_values[0, f]),
            "label": " · ".join(w for w, _, _ in words[:3]),
            "specificity": float(wilson_lower(round(words[0][1] * len(exs)), len(exs)) - words[0][2]) if words else 0.0,
            "words": json.dumps(words), "examples": json.dumps(exs), "hist": json.dumps(scan.hist[f].tolist()),
            "promoted": json.dumps(effects[0][f]) if effects else "[]",
            "suppressed": json.dumps(effects[1][f]) if effects else "[]",
        })
    return rows
