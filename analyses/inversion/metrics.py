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
#: abbreviated titles: the full stop after them does not end a sentence, and alone they are not names
_TITLES = ("Dr", "Mr", "Mrs", "Ms", "Mx", "Prof", "Sr", "Jr", "St", "Mt", "Rev", "Gen", "Capt", "Sgt", "Lt", "Col")
_AFTER_TITLE = re.compile(r"\b(?:" + "|".join(_TITLES) + r")\.\s+$")


def sensitive_strings(text: str) -> dict[str, list[str]]:
    """Sensitive strings in ``text`` by kind (the project's own regex definition).

    - ``email``: ``local@domain.tld``.
    - ``date``: ISO dates (2021-03-04), numeric d/m/y or m/d/y with ``/`` or ``.``, a month name
      with a day and/or a four-digit year (``March 4, 2021``, ``4 March``, ``March 2021``).
    - ``number``: digit runs with optional ``.``/``,`` groups and ``%`` (``12``, ``3.5``, ``1,000``,
      ``95%``) that are not inside an e-mail or a date.
    - ``name``: maximal runs of capitalised words (first letter A-Z), space separated, after dropping
      a first word that starts a sentence (start of text or after ``. ! ? : ;`` or an opening
      quote/bracket; the full stop of an abbreviated title such as ``Dr.`` or ``Mrs.`` does not end
      a sentence, and the title itself is dropped), so ``The`` at a sentence start is not a name but
      ``BERT``, ``Alice Smith`` in mid-sentence and ``Patel`` in "Dr. Patel" are. Months inside dates count as dates, not names. A rough stand-in for
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
        before = text[:m.start()]
        if _SENTENCE_START.search(before) and not _AFTER_TITLE.search(before):
            words = words[1:]
        if words and words[-1] in _TITLES and text[m.end():m.end() + 1] == ".":
            words = words[:-1]  # "Dr" of "Dr. Patel": the name is what follows
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


# ---------------------------------------------------------------------------------------------
# What leaked, in words (the audit report)
# ---------------------------------------------------------------------------------------------
_KIND_ORDER = ("name", "email", "date", "number")
_KIND_PLURAL = {"name": "names", "email": "e-mail addresses", "date": "dates", "number": "numbers"}
_KIND_SINGULAR = {"name": "name", "email": "e-mail address", "date": "date", "number": "number"}
#: words too common to count as recovered content (the report's word list only)
STOPWORDS = frozenset(
    "a an the and or but of to in on at by for from with without into onto over under as is are was were be been "
    "being it its this that these those there their they them he she his her we our you your i my me not no so "
    "than then also can will would may might has have had do does did which who whom what when where while".split())


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _phrase(by_kind: dict[str, list[str]]) -> tuple[str, int]:
    """("the name 'Maria', the dates '4 May' and '5 May'", number of strings)."""
    parts, n = [], 0
    for kind in _KIND_ORDER:
        strings = by_kind.get(kind) or []
        if strings:
            noun = _KIND_SINGULAR[kind] if len(strings) == 1 else _KIND_PLURAL[kind]
            parts.append(f"the {noun} " + _join([f"'{s}'" for s in strings]))
            n += len(strings)
    return (_join(parts) if parts else ""), n


def recovered_words(target: str, prediction: str) -> list[str]:
    """Content words of ``target`` (letters/digits, not in :data:`STOPWORDS`) that also occur in
    ``prediction``, case-insensitively, in the target's order, each once."""
    pred = {w.lower() for w in word_tokenize(prediction)}
    out: list[str] = []
    for w in word_tokenize(target):
        if w[0].isalnum() and w.lower() not in STOPWORDS and w.lower() in pred and w not in out:
            out.append(w)
    return out


def leak_description(target: str | None, prediction: str) -> str:
    """What the reconstruction recovered of ``target``, in plain words, e.g. "The names 'Patel' and
    'Lisbon' were recovered verbatim; the date 'March 4' was not. Words recovered: Patel, Lisbon,
    postcard (3 of 9 content words)."

    Sensitive strings are :func:`sensitive_strings` (the project's regex definition: its 'names' are
    capitalised words, so places and organisations count as names); a string is recovered when
    :func:`leakage` finds it. ``target=None`` (an inverted vector): the original is unknown.
    """
    if target is None:
        return ("The original text is unknown (a vector was inverted), so what leaked cannot be checked; "
                "the reconstruction is the best guess at it.")
    kinds = sensitive_strings(target)
    _, _, leaked = leakage(target, prediction)
    got = {k: [s for s in v if s in leaked] for k, v in kinds.items()}
    missed = {k: [s for s in v if s not in leaked] for k, v in kinds.items()}
    got_text, n_got = _phrase(got)
    missed_text, n_missed = _phrase(missed)
    if n_got and n_missed:
        first = (f"{got_text[0].upper()}{got_text[1:]} {'was' if n_got == 1 else 'were'} recovered verbatim; "
                 f"{missed_text} {'was' if n_missed == 1 else 'were'} not.")
    elif n_got:
        first = f"{got_text[0].upper()}{got_text[1:]} {'was' if n_got == 1 else 'were'} recovered verbatim."
    elif n_missed:
        first = f"{missed_text[0].upper()}{missed_text[1:]} {'was' if n_missed == 1 else 'were'} not recovered."
    else:
        first = "The original holds no names, numbers, e-mail addresses or dates."
    content = [w for w in dict.fromkeys(word_tokenize(target)) if w[0].isalnum() and w.lower() not in STOPWORDS]
    words = recovered_words(target, prediction)
    if words:
        second = f"Words recovered: {', '.join(words)} ({len(words)} of {len(content)} content words)."
    else:
        second = f"None of its {len(content)} content words was recovered."
    return f"{first} {second}"
