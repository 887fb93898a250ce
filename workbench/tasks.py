"""Prompt-pair tasks: paired positive (clean) / negative (corrupted) prompts and what the model should answer.

Shared by the back-ends that score heads on a task (circuits: SAE circuit finding and ablation;
attribution: logit attribution and activation / attribution patching), so that no back-end imports
another.

Built-in generators (the tokenizer decides which words are usable; all names and answers must be
single tokens so that each positive prompt and its negative have the same length):

- ``ioi`` (Wang et al. 2022): "When Mary and John went to the store, John gave a drink to" -> " Mary"
  vs " John". Negative (as the SAE-circuits code): the first occurrence of S becomes IO and the
  other IO becomes a third name, so no name repeats ("names replaced by a third name").
- ``greater_than`` (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" ->
  two-digit tokens > 32 vs <= 32 (probability difference). Negative: start year ``XX01``. Needs a
  tokenizer with two-digit number tokens (GPT-2 style).
- ``docstring`` (Heimersheim & Janiak 2023): a Python ``def`` with 6 arguments and a docstring that
  documents 2 of the 3 middle ones; the answer is the next argument's name vs the other argument
  names. Negative: ``random_random`` corruption (every argument name in the def and in the
  docstring replaced by a fresh random name).
- ``induction`` (Olsson et al. 2022): ``[BOS] r r`` with ``r`` random tokens; metric = mean
  log-probability of the correct next token over the repeated half. Negative: ``[BOS] r r'``.
- ``csv``: a user file with columns ``positive``, ``negative``, ``answer`` and optionally ``wrong``
  (example: ``sample_data/circuits/example_task_capitals.csv``)
  (one pair of prompts per row; answers are token strings such as " Paris", first token used).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import WorkbenchError
from .hooked import ordinary_token_ids

TASKS = ("ioi", "greater_than", "docstring", "induction", "csv")
#: SAE L1 coefficient per task (docs/methods.md, "SAE circuits": 0.02 for IOI and greater-than, 0.05 docstring)
DEFAULT_LAMBDA = {"ioi": 0.02, "greater_than": 0.02, "docstring": 0.05, "induction": 0.02, "csv": 0.02}


@dataclass
class Task:
    """Paired prompts (token ids, BOS included when the tokenizer has one) and scoring targets.

    ``targets[i]`` lists ``(position, correct_ids, wrong_ids)`` for positive prompt ``i``: the logits
    at ``position`` are scored. ``metric``: ``logit_diff`` (mean correct logit - mean wrong logit),
    ``prob_diff`` (sum of correct probs - sum of wrong probs) or ``logprob`` (mean log-prob of the
    correct token). The metric of the negative prompts uses the positive prompt's targets.
    """

    name: str
    positive: list[list[int]]
    negative: list[list[int]]
    targets: list[list[tuple[int, list[int], list[int]]]]
    metric: str
    description: str = ""
    texts_positive: list[str] = field(default_factory=list)
    texts_negative: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def paired_same_length(self) -> bool:
        return all(len(p) == len(n) for p, n in zip(self.positive, self.negative)) and \
            len(self.positive) == len(self.negative)


# ------------------------------------------------------------------------------------------------
# tokenizer helpers
# ------------------------------------------------------------------------------------------------
def encode(tokenizer, text: str, prepend_bos: bool = True) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if prepend_bos and bos is not None:
        ids = [int(bos)] + ids
    return ids


def single_token(tokenizer, text: str) -> int | None:
    """The id if ``text`` is exactly one token (no special tokens added), else None."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        return None
    return int(ids[0])


def _single_token_words(tokenizer, words: list[str], prefix: str = " ") -> list[str]:
    return [w for w in words if single_token(tokenizer, prefix + w) is not None]


def _usable_words(tokenizer, words: list[str], minimum: int, what: str) -> list[str]:
    """The words that are single tokens (with a leading space); too few is an error naming the task."""
    usable = _single_token_words(tokenizer, words)
    if len(usable) < minimum:
        raise WorkbenchError(f"{what} needs at least {minimum} {'names' if what == 'IOI' else 'argument names'} that "
                             f"are single tokens (with a leading space) for this tokenizer; found {len(usable)} of "
                             f"{len(words)}. Use another task or a CSV task.")
    return usable


#: one drawn prompt pair: (positive ids, negative ids, targets, positive text, negative text), or None
Pair = "tuple[list[int], list[int], list[tuple[int, list[int], list[int]]], str, str] | None"


def _draw_pairs(n: int, draw: Callable[[], Pair], failure: str) -> tuple[list, list, list, list, list]:
    """Call ``draw`` until it has given ``n`` pairs (None: rejected, e.g. lengths differ), at most
    ``50 n + 100`` times; returns (positives, negatives, targets, positive texts, negative texts)."""
    pos, neg, targets, tp, tn = [], [], [], [], []
    tries = 0
    while len(pos) < n:
        tries += 1
        if tries > 50 * n + 100:
            raise WorkbenchError(failure)
        pair = draw()
        if pair is None:
            continue
        for column, value in zip((pos, neg, targets, tp, tn), pair):
            column.append(value)
    return pos, neg, targets, tp, tn


# ------------------------------------------------------------------------------------------------
# IOI
# ------------------------------------------------------------------------------------------------
IOI_NAMES = [
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel",
    "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah",
    "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric",
    "Elizabeth", "Adam", "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle",
    "Rachel", "Laura", "Lauren", "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy",
    "Crystal", "Michelle", "Tiffany", "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca",
    "Jacob", "Stephen", "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin",
    "Paul", "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa",
    "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon",
    "Vanessa", "Courtney", "Christine", "Alicia", "Cody", "Allison", "Bradley", "Samuel",
]
# BABA templates of Wang et al. (2022); ABBA versions swap the first two names.
IOI_BABA_TEMPLATES = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
]
IOI_ABBA_TEMPLATES = [t.replace("[B] and [A]", "[A] and [B]", 1) for t in IOI_BABA_TEMPLATES]
IOI_PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
IOI_OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]


def _fill(template: str, a: str, b: str, place: str, obj: str) -> str:
    return (template.replace("[PLACE]", place).replace("[OBJECT]", obj)
            .replace("[A]", a).replace("[B]", b))


def make_ioi(tokenizer, n: int, seed: int = 0, prepend_bos: bool = True) -> Task:
    names = _usable_words(tokenizer, IOI_NAMES, 3, "IOI")
    rng = random.Random(seed)
    templates = IOI_BABA_TEMPLATES + IOI_ABBA_TEMPLATES

    def draw() -> Pair:
        template = rng.choice(templates)
        io, s, c = rng.sample(names, 3)
        place, obj = rng.choice(IOI_PLACES), rng.choice(IOI_OBJECTS)
        text_p = _fill(template, io, s, place, obj)
        # negative (official construction): A -> C, B -> S, then the first S -> IO
        text_n = _fill(template, c, s, place, obj).replace(s, io, 1)
        ids_p, ids_n = encode(tokenizer, text_p, prepend_bos), encode(tokenizer, text_n, prepend_bos)
        if len(ids_p) != len(ids_n):
            return None
        io_id, s_id = single_token(tokenizer, " " + io), single_token(tokenizer, " " + s)
        return ids_p, ids_n, [(len(ids_p) - 1, [io_id], [s_id])], text_p, text_n

    pos, neg, targets, tp, tn = _draw_pairs(
        n, draw, "Could not build IOI prompt pairs of equal token length for this tokenizer.")
    return Task("ioi", pos, neg, targets, "logit_diff",
                "Indirect object identification: logit(IO) - logit(S) at the last position.", tp, tn,
                [f"{len(names)} single-token names"])


# ------------------------------------------------------------------------------------------------
# Greater-than
# ------------------------------------------------------------------------------------------------
GT_NOUNS = [
    "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment", "attack", "attempts",
    "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration", "coma", "competition",
    "confrontation", "consequence", "conspiracy", "construction", "consultation", "contact", "contract",
    "convention", "cooperation", "custody", "deal", "decline", "decrease", "demonstrations", "development",
    "disagreement", "disorder", "dispute", "domination", "dynasty", "effect", "effort", "employment",
    "endeavor", "engagement", "epidemic", "evaluation", "exchange", "existence", "expansion", "expedition",
    "experiments", "fall", "fame", "flights", "friendship", "growth", "hardship", "hostility", "illness",
    "impact", "imprisonment", "improvement", "incarceration", "increase", "insurgency", "invasion",
    "investigation", "journey",
]


def _greater_than_texts(rng: random.Random, yy: int) -> tuple[int, str, str]:
    """A century ``xx`` (12..19), and the positive prompt (start year ``xx yy``) and the negative one
    (start year ``xx 01``), both ending "to the year {xx}"."""
    xx = rng.randint(12, 19)
    noun = rng.choice(GT_NOUNS)
    return (xx, f"The {noun} lasted from the year {xx}{yy:02d} to the year {xx}",
            f"The {noun} lasted from the year {xx}01 to the year {xx}")


def make_greater_than(tokenizer, n: int, seed: int = 0, prepend_bos: bool = True) -> Task:
    """Greater-than prompts (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17".

    With a token for every two-digit number (GPT-2) the score is P(YY' > YY) - P(YY' <= YY) over the
    two-digit tokens after the prompt, as the paper. A tokenizer that splits numbers into digits
    (Llama 3, SmolLM2, Gemma) gets the digit-level variant (:func:`_greater_than_digits`).
    """
    yy_ids = [single_token(tokenizer, f"{yy:02d}") for yy in range(100)]
    if any(i is None for i in yy_ids):
        return _greater_than_digits(tokenizer, n, seed, prepend_bos)
    rng = random.Random(seed)
    yy = 2

    def draw() -> Pair:
        nonlocal yy
        xx, text_p, text_n = _greater_than_texts(rng, yy)
        ids_p, ids_n = encode(tokenizer, text_p, prepend_bos), encode(tokenizer, text_n, prepend_bos)
        year_ok = tokenizer(f" {xx}{yy:02d}", add_special_tokens=False)["input_ids"] == \
            [single_token(tokenizer, f" {xx}"), yy_ids[yy]]
        this, yy = yy, yy + 1 if yy < 98 else 2  # balanced over YY = 02..98, as the official generator
        if not year_ok or len(ids_p) != len(ids_n):
            return None
        correct = [yy_ids[k] for k in range(this + 1, 100)]
        wrong = [yy_ids[k] for k in range(0, this + 1)]
        return ids_p, ids_n, [(len(ids_p) - 1, correct, wrong)], text_p, text_n

    pos, neg, targets, tp, tn = _draw_pairs(
        n, draw, "Could not build greater-than prompts: years do not split as ' XX' + 'YY'.")
    return Task("greater_than", pos, neg, targets, "prob_diff",
                "Greater-than: P(YY' > YY) - P(YY' <= YY) at the last position.", tp, tn)


def _greater_than_digits(tokenizer, n: int, seed: int, prepend_bos: bool) -> Task:
    """Greater-than for tokenizers that write numbers digit by digit: the next token after
    "... to the year 17" is the end year's tens digit, so the score is P(tens digit > t) - P(tens
    digit < t), ``t`` the tens digit of the start year's YY. The equal digit is left out (33 is
    later than 32, 31 is not). YY runs over 10..89 in turn (``t`` = 1..8, so both sides have
    digits); the negative prompt starts at YY = 01, as in the paper. A pair is kept only when the
    prompt followed by YY tokenises as the prompt's tokens and then YY's two digits."""
    digit_ids = [single_token(tokenizer, str(d)) for d in range(10)]
    if any(i is None for i in digit_ids):
        raise WorkbenchError(
            "greater_than needs a tokenizer with a single token for every two-digit number 00..99 (GPT-2 "
            "style) or for every digit 0..9; this one has neither. Use another task or a CSV task.")
    rng = random.Random(seed)
    yy = 10

    def draw() -> Pair:
        nonlocal yy
        xx, text_p, text_n = _greater_than_texts(rng, yy)
        ids_p, ids_n = encode(tokenizer, text_p, prepend_bos), encode(tokenizer, text_n, prepend_bos)
        tens, ones = divmod(yy, 10)
        digits_follow = encode(tokenizer, f"{text_p}{yy:02d}", prepend_bos) == ids_p + [digit_ids[tens], digit_ids[ones]]
        yy = yy + 1 if yy < 89 else 10
        if not digits_follow or len(ids_p) != len(ids_n):
            return None
        correct = [digit_ids[d] for d in range(tens + 1, 10)]
        wrong = [digit_ids[d] for d in range(0, tens)]
        return ids_p, ids_n, [(len(ids_p) - 1, correct, wrong)], text_p, text_n

    pos, neg, targets, tp, tn = _draw_pairs(
        n, draw, "Could not build greater-than prompts: the end year's digits do not follow the prompt as tokens.")
    return Task("greater_than", pos, neg, targets, "prob_diff",
                "Greater-than, digit level (this tokenizer splits numbers into digits): P(tens digit > YY's) - "
                "P(tens digit < YY's) at the last position.", tp, tn,
                notes=["digit-level greater-than: the tokenizer has no two-digit tokens, so the end year's tens "
                       "digit is scored; the equal digit is left out"])


# ------------------------------------------------------------------------------------------------
# Docstring
# ------------------------------------------------------------------------------------------------
DS_ARG_NAMES = [
    "file", "data", "name", "path", "value", "key", "size", "mode", "user", "text", "line", "item", "index",
    "count", "node", "model", "state", "config", "result", "source", "target", "url", "port", "host",
    "token", "query", "table", "field", "label", "image", "shape", "width", "height", "color", "level",
    "type", "time", "date", "code", "message", "content", "parent", "group", "order", "limit", "offset",
    "prefix", "filter", "context", "action", "event", "status", "output", "input", "number", "length",
]
DS_WORDS = [
    "the", "a", "new", "old", "first", "last", "current", "default", "given", "list", "string", "object",
    "function", "method", "class", "module", "system", "server", "client", "request", "response", "format",
    "option", "parameter", "variable", "element", "number", "file", "value", "line",
]
DS_FUNCS = ["get", "set", "load", "save", "run", "check", "update", "create", "parse", "process", "read", "write"]


def _docstring_text(fn: str, def_args: list[str], doc_args: list[str], desc: list[str],
                    arg_desc: list[list[str]]) -> str:
    lines = [f"def {fn}(self, {', '.join(def_args)}):", f'    """{" ".join(desc)}', ""]
    for a, d in zip(doc_args, arg_desc):
        lines.append(f"    :param {a}: {' '.join(d)}")
    lines.append("    :param")
    return "\n".join(lines)


def make_docstring(tokenizer, n: int, seed: int = 0, prepend_bos: bool = True) -> Task:
    names = _usable_words(tokenizer, DS_ARG_NAMES, 16, "docstring")
    words = DS_WORDS
    rng = random.Random(seed)

    def draw() -> Pair:
        # 2 prefix args, 3 matching args, 1 suffix arg; the docstring documents the first 2 matching
        args = rng.sample(names, 6)
        fn = rng.choice(DS_FUNCS)
        desc = [rng.choice(words) for _ in range(3)]
        arg_desc = [[rng.choice(words) for _ in range(2)] for _ in range(2)]
        matching = args[2:5]
        text_p = _docstring_text(fn, args, matching[:2], desc, arg_desc)
        fresh = rng.sample([x for x in names if x not in args], 8)  # random_random corruption
        text_n = _docstring_text(fn, fresh[:6], fresh[6:8], desc, arg_desc)
        ids_p, ids_n = encode(tokenizer, text_p, prepend_bos), encode(tokenizer, text_n, prepend_bos)
        if len(ids_p) != len(ids_n):
            return None
        correct = [single_token(tokenizer, " " + matching[2])]
        wrong = [single_token(tokenizer, " " + a) for a in args if a != matching[2]]
        return ids_p, ids_n, [(len(ids_p) - 1, correct, wrong)], text_p, text_n

    pos, neg, targets, tp, tn = _draw_pairs(n, draw, "Could not build docstring prompt pairs of equal token length.")
    return Task("docstring", pos, neg, targets, "logit_diff",
                "Docstring: logit(next argument) - mean logit(other argument names).", tp, tn)


# ------------------------------------------------------------------------------------------------
# Induction
# ------------------------------------------------------------------------------------------------
def make_induction(tokenizer, n: int, seed: int = 0, period: int = 50, prepend_bos: bool = True,
                   vocab_limit: int | None = 20000) -> Task:
    """``[BOS] r r`` (positive) and ``[BOS] r r'`` (negative), r, r' uniform over ordinary tokens.

    Targets: positions ``S+1 .. 2S-1`` (0 = BOS), each predicting the repeated next token.
    ``vocab_limit``: sample from the first ids only (frequent tokens of a BPE vocabulary).
    """
    if period < 2:
        raise WorkbenchError(f"induction period must be >= 2, got {period}")
    pool = ordinary_token_ids(tokenizer, vocab_limit)
    if len(pool) < 2 * period:
        raise WorkbenchError(f"induction needs at least {2 * period} ordinary tokens; the tokenizer has {len(pool)}.")
    rng = random.Random(seed)
    bos = getattr(tokenizer, "bos_token_id", None)
    head = [int(bos)] if prepend_bos and bos is not None else []
    off = len(head)
    pos, neg, targets = [], [], []
    for _ in range(n):
        r = rng.choices(pool, k=period)
        r2 = rng.choices(pool, k=period)
        seq = head + r + r
        pos.append(seq)
        neg.append(head + r + r2)
        targets.append([(t, [seq[t + 1]], []) for t in range(off + period, off + 2 * period - 1)])
    return Task("induction", pos, neg, targets, "logprob",
                f"Induction: mean log-prob of the correct next token on the repeated half (period {period}).",
                notes=[f"period {period}", f"{len(pool)} candidate tokens"])


# ------------------------------------------------------------------------------------------------
# CSV
# ------------------------------------------------------------------------------------------------
def load_csv_task(path: str | Path, tokenizer, n: int | None = None, prepend_bos: bool = True) -> Task:
    """User task: columns ``positive``, ``negative``, ``answer`` (+ optional ``wrong``), one pair per row."""
    import pandas as pd

    path = Path(path).expanduser()
    if not path.exists():
        raise WorkbenchError(f"Task file {path} does not exist.")
    try:
        frame = pd.read_csv(path, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any parse problem is the user's file
        raise WorkbenchError(f"Could not read {path} as CSV: {exc}") from exc
    missing = [c for c in ("positive", "negative", "answer") if c not in frame.columns]
    if missing:
        raise WorkbenchError(
            f"{path.name} lacks column(s) {missing}; a task CSV needs positive, negative, answer "
            f"(and optionally wrong), one positive/negative prompt pair per row. Found {list(frame.columns)}.")
    if len(frame) < 2:
        raise WorkbenchError(f"{path.name} has {len(frame)} row(s); give at least 2 prompt pairs.")
    if n is not None:
        frame = frame.iloc[:n]
    pos, neg, targets, notes = [], [], [], []
    truncated = 0
    for row in frame.itertuples(index=False):
        p, q = encode(tokenizer, str(row.positive), prepend_bos), encode(tokenizer, str(row.negative), prepend_bos)
        ans = tokenizer(str(row.answer), add_special_tokens=False)["input_ids"]
        if not ans:
            raise WorkbenchError(f"Empty answer for prompt {row.positive!r} in {path.name}.")
        truncated += len(ans) > 1
        wrong = []
        if "wrong" in frame.columns and str(getattr(row, "wrong")):
            w = tokenizer(str(getattr(row, "wrong")), add_special_tokens=False)["input_ids"]
            wrong = [int(w[0])] if w else []
        pos.append(p); neg.append(q)
        targets.append([(len(p) - 1, [int(ans[0])], wrong)])
    if truncated:
        notes.append(f"{truncated} answer(s) are several tokens; their first token is scored")
    metric = "logit_diff" if all(t[0][2] for t in targets) else "logprob"
    return Task("csv", pos, neg, targets, metric, f"User task from {path.name} ({metric}).",
                list(frame["positive"].astype(str)), list(frame["negative"].astype(str)), notes)


def make_task(name: str, tokenizer, n: int, seed: int = 0, task_file: str | None = None,
              period: int = 50, prepend_bos: bool = True) -> Task:
    """Build a task by name (``ioi``, ``greater_than``, ``docstring``, ``induction``, ``csv``)."""
    if task_file:
        return load_csv_task(task_file, tokenizer, n, prepend_bos)
    if name == "ioi":
        return make_ioi(tokenizer, n, seed, prepend_bos)
    if name == "greater_than":
        return make_greater_than(tokenizer, n, seed, prepend_bos)
    if name == "docstring":
        return make_docstring(tokenizer, n, seed, prepend_bos)
    if name == "induction":
        return make_induction(tokenizer, n, seed, period, prepend_bos)
    if name == "csv":
        raise WorkbenchError("task 'csv' needs task_file: a CSV with positive, negative, answer columns.")
    raise WorkbenchError(f"Unknown task {name!r}; choose one of {', '.join(TASKS)} (csv with task_file).")
