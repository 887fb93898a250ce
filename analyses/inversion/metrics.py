"""Text-recovery metrics for embedding inversion.

- :func:`word_tokenize`: the project's regex word tokenizer, an equivalent of nltk's Treebank
  ``word_tokenize`` for plain English (nltk is not installed). Words are runs of letters/digits with
  inner ``. ' - ,`` joins (``e-mail``, ``3.5``, ``1,000``, ``U.S``); every other non-space character is
  its own token. Differences from nltk: contractions stay whole (``don't`` vs ``do`` + ``n't``) and
  quotes are not rewritten to `` / ''.
- :func:`token_set_f1`: vec2text's ``token_set_f1`` (``_text_comparison_metrics``): F1 between the
  *sets* of word tokens of target and reconstruction, case-sensitive, as vec2text computes it.
- :func:`bleu`: sacrebleu ``sentence_bleu`` (13a tokenizer, word level, 0-100) — not the character-level
  BLEU the ZSInvert repo gets by passing raw strings to nltk.
- :func:`exact_match`: string equality after ``strip()``.
- :func:`sensitive_strings` / :func:`leakage`: the project's own regex definition of sensitive strings
  (spaCy is not installed; neither paper defines it this way), see :func:`sensitive_strings`.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z0-9]+(?:[.'\-,][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


def word_tokenize(text: str) -> list[str]:
    """Word tokens of ``text`` (see the module docstring for how this differs from nltk)."""
    return _WORD.findall(text)


def token_set_f1(target: str, prediction: str) -> float:
    """vec2text's token-set F1 (0..1) between word-token sets; 0 when both are empty."""
    true_set, pred_set = set(word_tokenize(target)), set(word_tokenize(prediction))
    tp = len(true_set & pred_set)
    fp = len(true_set) - tp  # vec2text's naming: target words that were missed
    fn = len(pred_set) - tp
    precision = tp / (tp + fp + 1e-20)
    recall = tp / (tp + fn + 1e-20)
    return float(2 * precision * recall / (precision + recall + 1e-20))


def bleu(target: str, prediction: str) -> float:
    """sacrebleu sentence BLEU (0-100, 13a word tokenization, default exp smoothing)."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [target]).score)


def exact_match(target: str, prediction: str) -> bool:
    return target.strip() == prediction.strip()


# ---------------------------------------------------------------------------------------------
# Sensitive strings
# ---------------------------------------------------------------------------------------------
EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b")
_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
DATE = re.compile(
    r"\b(?:\d{4}-\d{1,2}-\d{1,2}"                                   # 2021-03-04
    r"|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}"                               # 04/03/2021, 4.3.21
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?(?:,?\s+\d{{4}})?"   # 4 March 2021, 4th Mar
    rf"|{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"   # March 4, 2021
    rf"|{_MONTH}\s+\d{{4}})\b")                                     # March 2021
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*%?")
_CAP_RUN = re.compile(r"\b[A-Z][\w'\-]*(?:\s+[A-Z][\w'\-]*)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|[\"'(\[]\s*)$")


def sensitive_strings(text: str) -> dict[str, list[str]]:
    """Sensitive strings in ``text`` by kind (the project's own regex definition).

    - ``email``: ``local@domain.tld``.
    - ``date``: ISO dates (2021-03-04), numeric d/m/y or m/d/y with ``/`` or ``.``, a month name
      with a day and/or a four-digit year (``March 4, 2021``, ``4 March``, ``March 2021``).
    - ``number``: digit runs with optional ``.``/``,`` groups and ``%`` (``12``, ``3.5``, ``1,000``,
      ``95%``) that are not inside an e-mail or a date.
    - ``name``: maximal runs of capitalised words (first letter A-Z), space separated, after dropping
      a first word that starts a sentence (start of text or after ``. ! ? : ;`` or an opening
      quote/bracket), so ``The`` at a sentence start is not a name but ``BERT`` or ``Alice Smith``
      in mid-sentence is. Months inside dates count as dates, not names. A rough stand-in for
      NER (PERSON/ORG/GPE/PRODUCT) that also catches acronyms and capitalised method names.

    Strings are de-duplicated per kind, in order of appearance.
    """
    found: dict[str, list[str]] = {"email": [], "date": [], "number": [], "name": []}
    taken: list[tuple[int, int]] = []

    def free(span: tuple[int, int]) -> bool:
        return all(span[1] <= a or span[0] >= b for a, b in taken)

    for kind, pattern in (("email", EMAIL), ("date", DATE), ("number", NUMBER)):
        for m in pattern.finditer(text):
            if free(m.span()):
                taken.append(m.span())
                if m.group() not in found[kind]:
                    found[kind].append(m.group())
    for m in _CAP_RUN.finditer(text):
        if not free(m.span()):
            continue
        words = m.group().split()
        if _SENTENCE_START.search(text[:m.start()]):
            words = words[1:]
        name = " ".join(words)
        if name and name not in found["name"]:
            found["name"].append(name)
    return found


def leakage(target: str, prediction: str) -> tuple[float, int, list[str]]:
    """(fraction recovered, number found, the recovered strings) of the target's sensitive strings.

    A string is recovered when its lower-cased form occurs in the lower-cased reconstruction at word
    boundaries. The fraction is NaN when the target holds no sensitive string.
    """
    strings = [s for group in sensitive_strings(target).values() for s in group]
    if not strings:
        return float("nan"), 0, []
    pred = prediction.lower()
    leaked = [s for s in strings
              if re.search(r"(?<![A-Za-z0-9])" + re.escape(s.lower()) + r"(?![A-Za-z0-9])", pred)]
    return len(leaked) / len(strings), len(strings), leaked


def text_metrics(target: str, prediction: str) -> dict:
    """token_f1, bleu, exact_match, leakage, n_sensitive, leaked for one (target, reconstruction)."""
    frac, n, leaked = leakage(target, prediction)
    return {"token_f1": token_set_f1(target, prediction), "bleu": bleu(target, prediction),
            "exact_match": exact_match(target, prediction), "leakage": frac, "n_sensitive": n,
            "leaked": "; ".join(leaked)}
