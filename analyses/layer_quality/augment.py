"""Seeded text augmentations for the augmentation-based metrics (InfoNCE, LiDAR, DiME).

In the spirit of nlpaug's ``Sequential([SplitAug(), RandomCharAug(), KeyboardAug()])`` that Skean et
al. use, with the same default rates, implemented here so there is no dependency and every output is
reproducible from ``(seed, prompt index, augmentation index)``:

1. ``split``: split ``word_p`` of the words with >= ``min_char`` characters at a random position
   ("representation" -> "repres entation");
2. ``random_char``: in ``word_p`` of the eligible words, substitute ``char_p`` of the characters with
   random letters/digits;
3. ``keyboard``: in ``word_p`` of the eligible words, replace ``char_p`` of the characters with a
   QWERTY neighbour (typos).

Word counts per step are ``clip(int(word_p * n_eligible), min_words, max_words)`` and character
counts ``clip(int(char_p * len(word)), 1, max_chars)``, as in nlpaug. Tokens are whitespace words;
punctuation attached to a word is part of it, as with nlpaug's default tokenizer.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass

import numpy as np

from workbench.errors import WorkbenchError

STEPS = ("split", "random_char", "keyboard")

_ROWS = ("1234567890-", "qwertyuiop[", "asdfghjkl;'", "zxcvbnm,./")


def _keyboard_neighbours() -> dict[str, str]:
    """Neighbours on a staggered QWERTY layout: same row left/right, the row above (c, c+1) and the
    row below (c-1, c)."""
    pos = {ch: (r, c) for r, row in enumerate(_ROWS) for c, ch in enumerate(row)}
    out = {}
    for ch, (r, c) in pos.items():
        if not ch.isalnum():
            continue
        cand = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
        neigh = [_ROWS[rr][cc] for rr, cc in cand if 0 <= rr < len(_ROWS) and 0 <= cc < len(_ROWS[rr])]
        out[ch] = "".join(n for n in neigh if n.isalnum())
    return out


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()
_RANDOM_CHARS = string.ascii_letters + string.digits


@dataclass(frozen=True)
class AugmentSettings:
    """Rates of the three steps (nlpaug defaults). ``asdict`` of this goes into the run summary."""

    steps: tuple[str, ...] = STEPS
    word_p: float = 0.3
    char_p: float = 0.3
    min_char: int = 4
    min_words: int = 1
    max_words: int = 10
    max_chars: int = 10
    max_words_per_text: int | None = None  # truncate each text to its first words before augmenting

    def __post_init__(self):
        bad = [s for s in self.steps if s not in STEPS]
        if bad:
            raise WorkbenchError(f"unknown augmentation step(s) {bad}; choose from {', '.join(STEPS)}.")
        for name in ("word_p", "char_p"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise WorkbenchError(f"augmentation {name} must be in [0, 1]; got {value}.")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d


def _n_words(n_eligible: int, s: AugmentSettings) -> int:
    if n_eligible == 0:
        return 0
    return int(min(n_eligible, np.clip(int(s.word_p * n_eligible), s.min_words, s.max_words)))


def _pick_words(words: list[str], rng: np.random.Generator, s: AugmentSettings) -> list[int]:
    eligible = [i for i, w in enumerate(words) if len(w) >= s.min_char]
    k = _n_words(len(eligible), s)
    return sorted(rng.choice(eligible, size=k, replace=False).tolist()) if k else []


def _char_positions(word: str, rng: np.random.Generator, s: AugmentSettings, keyboard: bool) -> list[int]:
    pos = [i for i, ch in enumerate(word) if ch.isalnum() and (not keyboard or ch.lower() in KEYBOARD_NEIGHBOURS)]
    if not pos:
        return []
    k = int(min(len(pos), np.clip(int(s.char_p * len(word)), 1, s.max_chars)))
    return rng.choice(pos, size=k, replace=False).tolist()


def _split(words: list[str], rng, s) -> list[str]:
    out = list(words)
    for i in reversed(_pick_words(words, rng, s)):
        w = out[i]
        cut = int(rng.integers(1, len(w)))
        out[i:i + 1] = [w[:cut], w[cut:]]
    return out


def _substitute(words: list[str], rng, s, keyboard: bool) -> list[str]:
    out = list(words)
    for i in _pick_words(words, rng, s):
        chars = list(out[i])
        for j in _char_positions(out[i], rng, s, keyboard):
            ch = chars[j]
            if keyboard:
                neigh = KEYBOARD_NEIGHBOURS[ch.lower()]
                new = neigh[int(rng.integers(len(neigh)))]
                chars[j] = new.upper() if ch.isupper() else new
            else:
                chars[j] = _RANDOM_CHARS[int(rng.integers(len(_RANDOM_CHARS)))]
        out[i] = "".join(chars)
    return out


def augment_text(text: str, rng: np.random.Generator, settings: AugmentSettings | None = None) -> str:
    """One augmented copy of ``text`` (the steps in order, each drawing from ``rng``)."""
    s = settings or AugmentSettings()
    words = text.split()
    if s.max_words_per_text:
        words = words[:s.max_words_per_text]
    for step in s.steps:
        if step == "split":
            words = _split(words, rng, s)
        else:
            words = _substitute(words, rng, s, keyboard=(step == "keyboard"))
    return " ".join(words)


def augment_texts(texts: list[str], n_augmentations: int, seed: int = 0,
                  settings: AugmentSettings | None = None) -> list[list[str]]:
    """``n_augmentations`` augmented copies of each text: ``out[i][j]``.

    Copy j of text i uses ``np.random.default_rng([seed, i, j])``, so it does not depend on the other
    texts or on how many copies are asked for.
    """
    if n_augmentations < 1:
        raise WorkbenchError(f"n_augmentations must be >= 1; got {n_augmentations}.")
    s = settings or AugmentSettings()
    return [[augment_text(t, np.random.default_rng([seed, i, j]), s) for j in range(n_augmentations)]
            for i, t in enumerate(texts)]
