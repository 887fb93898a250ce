"""Datasets: texts (with optional labels and metadata) and user-supplied vectors.

Text sources: ``.txt`` (one text a line), ``.csv`` / ``.jsonl`` / ``.parquet`` (a named text column,
optional label column; other columns kept as metadata), or a built-in sample name. Vectors: ``.npy``,
or a parquet/CSV of numeric columns (or one column holding lists), for analyses that work on given
embeddings. Bad input raises :class:`~workbench.errors.WorkbenchError` before anything is computed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import WorkbenchError
from .paths import SAMPLE_DATA

TEXT_COLUMN_GUESSES = ("text", "sentence", "prompt", "abstract", "content", "source")
LABEL_COLUMN_GUESSES = ("label", "labels", "topic", "category", "class")

#: built-in sample sets: name -> (file, text column, label column, description)
BUILTIN_DATASETS: dict[str, tuple[str, str | None, str | None, str]] = {
    "abstracts": ("paper_abstracts.jsonl", "abstract", None,
                  "400 machine-learning paper abstracts (title + abstract)"),
    "titles": ("paper_abstracts.jsonl", "title", None, "the titles of the 400 paper abstracts"),
    "prompts": ("prompts.txt", None, None, "short factual and narrative prompts for lenses"),
    "topics": ("topics.csv", "text", "label", "chatterbot-corpus English utterances with topic labels"),
    "seq2seq-tasks": ("seq2seq_tasks.jsonl", "source", "task", "synthetic seq2seq tasks (DecoderLens)"),
}
DEFAULT_DATASET = "abstracts"
#: the source of a dataset given as texts in memory (typed in the app, or `--text` on the command line)
IN_MEMORY = "<texts>"
#: texts given in memory are written into a reproducing command when there are at most this many
MAX_TEXTS_IN_COMMAND = 20


@dataclass
class TextDataset:
    """Texts with optional labels; ``frame`` keeps every column of the source (one row per text)."""

    name: str
    texts: list[str]
    frame: pd.DataFrame
    text_column: str
    label_column: str | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list | None:
        return None if self.label_column is None else self.frame[self.label_column].tolist()

    @property
    def content_hash(self) -> str:
        """sha256 of the texts (order matters), independent of the file they came from."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8"))
            digest.update(b"\x00")
        return digest.hexdigest()[:32]

    def item_hashes(self) -> np.ndarray:
        """xxh3 of each text ``[n]`` uint64: what lets the store serve a prefix from a larger entry."""
        import xxhash

        return np.fromiter((xxhash.xxh3_64_intdigest(t.encode("utf-8")) for t in self.texts), np.uint64,
                           len(self.texts))

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int | None) -> "TextDataset":
        """The first ``n`` texts (a deterministic prefix, so caches of the prefix are reusable)."""
        if n is None or n >= len(self.texts):
            return self
        return TextDataset(f"{self.name}[:{n}]", self.texts[:n], self.frame.iloc[:n].reset_index(drop=True),
                           self.text_column, self.label_column, self.source, list(self.warnings))

    def stratified(self, n: int | None) -> "TextDataset":
        """``n`` labelled texts in the proportions of the labels: the first texts of each label (the
        counts by largest remainder, so they sum to ``n``), kept in file order. A plain prefix of a
        file sorted by label would hold only its first few labels."""
        if n is None or n >= len(self.texts):
            return self
        if self.label_column is None:
            raise WorkbenchError(f"{self.name} has no labels to stratify by; use subset(n) for the first n texts.")
        labels = np.asarray([str(x) for x in self.labels])
        names, counts = np.unique(labels, return_counts=True)
        exact = counts * n / len(labels)
        take = np.floor(exact).astype(int)
        for k in np.argsort(-(exact - take), kind="stable")[: n - int(take.sum())]:
            take[k] += 1
        keep = np.zeros(len(labels), dtype=bool)
        for name, k in zip(names, take):
            keep[np.flatnonzero(labels == name)[:k]] = True
        rows = np.flatnonzero(keep)
        return TextDataset(f"{self.name}[stratified:{n}]", [self.texts[i] for i in rows],
                           self.frame.iloc[rows].reset_index(drop=True), self.text_column, self.label_column,
                           self.source, list(self.warnings))

    @classmethod
    def from_texts(cls, texts: list[str], name: str = "texts", labels: list | None = None) -> "TextDataset":
        texts = [str(t) for t in texts]
        if not texts:
            raise WorkbenchError("The dataset is empty: give at least one text.")
        frame = pd.DataFrame({"text": texts})
        if labels is not None:
            if len(labels) != len(texts):
                raise WorkbenchError(f"{len(labels)} labels for {len(texts)} texts: give one label per text.")
            frame["label"] = labels
        # "<texts>": given in memory, not read from a file; the command line repeats them with --text
        return cls(name, texts, frame, "text", "label" if labels is not None else None, source=IN_MEMORY)


@dataclass
class TokenDataset:
    """Token-id sequences given directly (generated prompts, random induction sequences), for the
    activation store: no tokenizer runs, no special token is added, and the cache key is the
    content hash of the ids. ``frame`` holds one row of metadata per sequence (labels, task fields).
    """

    name: str
    ids: list[list[int]]
    frame: pd.DataFrame | None = None
    source: str = ""

    def __post_init__(self):
        self.ids = [[int(t) for t in seq] for seq in self.ids]
        if not self.ids:
            raise WorkbenchError("The token dataset is empty: give at least one sequence.")
        empty = next((i for i, seq in enumerate(self.ids) if not seq), None)
        if empty is not None:
            raise WorkbenchError(f"Token sequence {empty} is empty; every sequence needs at least one token.")
        if self.frame is None:
            self.frame = pd.DataFrame({"sequence": range(len(self.ids))})
        self.source = self.source or self.name

    @property
    def content_hash(self) -> str:
        """sha256 of the id sequences (order matters), tagged so it never equals a text hash."""
        digest = hashlib.sha256(b"token-ids\x00")
        for seq in self.ids:
            digest.update(np.asarray(seq, dtype=np.int64).tobytes())
            digest.update(b"\xff" * 8)
        return digest.hexdigest()[:32]

    @property
    def texts(self) -> None:
        return None

    def item_hashes(self) -> np.ndarray:
        """xxh3 of each id sequence (as int64 bytes) ``[n]`` uint64."""
        import xxhash

        return np.fromiter((xxhash.xxh3_64_intdigest(np.asarray(seq, dtype=np.int64).tobytes()) for seq in self.ids),
                           np.uint64, len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, n: int | None) -> "TokenDataset":
        if n is None or n >= len(self.ids):
            return self
        return TokenDataset(f"{self.name}[:{n}]", self.ids[:n], self.frame.iloc[:n].reset_index(drop=True), self.source)


def list_datasets() -> list[dict[str, str]]:
    return [{"name": name, "file": f"sample_data/{spec[0]}", "description": spec[3]}
            for name, spec in BUILTIN_DATASETS.items() if (SAMPLE_DATA / spec[0]).exists()]


#: a single text longer than this is cut while reading (no model reads this far): memory stays bounded
MAX_TEXT_CHARS = 1_000_000


def _read_lines(path: Path, warnings_out: list[str]) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file, streamed: a line longer than
    :data:`MAX_TEXT_CHARS` is cut there (and counted in a warning) without being read whole."""
    texts, n_cut, lineno = [], 0, 0
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            while True:
                line = handle.readline(MAX_TEXT_CHARS)
                if line == "":
                    break
                lineno += 1
                if len(line) == MAX_TEXT_CHARS and not line.endswith("\n"):
                    n_cut += 1
                    while (rest := handle.readline(MAX_TEXT_CHARS)) and not rest.endswith("\n"):
                        pass  # skip the remainder of the over-long line
                if line.strip():
                    texts.append(line.strip())
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"{path} is not UTF-8 text (near line {lineno + 1}: {exc.reason}); re-save it as UTF-8.") from exc
    if n_cut:
        warnings_out.append(f"{n_cut} line(s) of {path.name} were longer than {MAX_TEXT_CHARS:,} characters and were cut there.")
    return texts


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise WorkbenchError(f"{path} line {lineno} is not JSON ({exc.msg} at column {exc.colno}): "
                                         "give one JSON object per line.") from None
                if not isinstance(row, dict):
                    raise WorkbenchError(f"{path} line {lineno} is a JSON {type(row).__name__}, not an object: give "
                                         'one object per line, e.g. {"text": "..."}.')
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"{path} is not UTF-8 text ({exc.reason}); re-save it as UTF-8.") from exc
    return pd.DataFrame(rows)


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, encoding="utf-8") as handle:  # a clear error for non-UTF-8 files
                return pd.read_csv(handle)
        if suffix in {".jsonl", ".ndjson"}:
            return _read_jsonl(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"{path} is not UTF-8 text ({exc.reason}); re-save it as UTF-8.") from exc
    except pd.errors.EmptyDataError as exc:
        raise WorkbenchError(f"{path} holds no table (no header, no rows).") from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        kind = "a parquet file" if suffix == ".parquet" else f"valid {suffix[1:].upper()}"
        raise WorkbenchError(f"Could not read {path}: it is not {kind} ({str(exc).splitlines()[0][:200]}).") from exc
    raise WorkbenchError(f"Unsupported file type {suffix!r} for {path}: use .txt, .csv, .jsonl or .parquet.")


def _text_values(frame: pd.DataFrame, column: str, path: Path) -> pd.DataFrame:
    """Rows with a non-empty text in ``column``; a value that is a dict or list is an error."""
    bad = frame[column].map(lambda v: isinstance(v, (dict, list, tuple, np.ndarray)))
    if bad.any():
        first = int(np.argmax(bad.to_numpy()))
        raise WorkbenchError(f"{path}: column {column!r} holds a {type(frame[column].iloc[first]).__name__} in row "
                             f"{first} (and {int(bad.sum()) - 1} more), not text: name a text column with --text-column.")
    frame = frame[frame[column].notna()]
    return frame[frame[column].astype(str).str.strip() != ""].reset_index(drop=True)


_SLICE = re.compile(r"^(?P<base>.+)\[(?P<start>\d*):(?P<stop>\d*)\]$")


def load_dataset(spec: str | Path, text_column: str | None = None, label_column: str | None = None,
                 limit: int | None = None) -> TextDataset:
    """Load a built-in sample set by name or a text file / table by path.

    ``text_column`` defaults to the first of text/sentence/prompt/abstract/content found;
    ``label_column`` to label/topic/category if present. ``limit`` keeps the first N texts.
    A trailing ``[start:stop]`` keeps those rows (Python slice of the non-empty texts), e.g.
    ``abstracts[300:340]`` for texts a lens or probe never saw.
    """
    spec_str = str(spec)
    sliced = _SLICE.match(spec_str)
    if sliced and not Path(spec_str).expanduser().exists():
        base = load_dataset(sliced["base"], text_column, label_column)
        start = int(sliced["start"] or 0)
        stop = int(sliced["stop"]) if sliced["stop"] else len(base)
        if not start < min(stop, len(base)):
            raise WorkbenchError(f"{spec_str}: the slice [{start}:{stop}] selects no text of the {len(base)} in "
                                 f"{sliced['base']}.")
        frame = base.frame.iloc[start:stop].reset_index(drop=True)
        ds = TextDataset(spec_str, base.texts[start:stop], frame, base.text_column, base.label_column,
                         source=spec_str, warnings=list(base.warnings))
        return ds.subset(limit) if limit else ds
    if spec_str in BUILTIN_DATASETS:
        file, builtin_text, builtin_label, _ = BUILTIN_DATASETS[spec_str]
        path = SAMPLE_DATA / file
        text_column = text_column or builtin_text
        label_column = label_column or builtin_label
        name = spec_str
    else:
        path = Path(spec_str).expanduser()
        name = path.name
    if not path.exists():
        known = ", ".join(BUILTIN_DATASETS)
        raise WorkbenchError(f"No dataset at {path}: give an existing file or a built-in name ({known}).")
    if path.is_dir():
        raise WorkbenchError(f"{path} is a folder: give a .txt, .csv, .jsonl or .parquet file.")
    if path.stat().st_size == 0:
        raise WorkbenchError(f"{path} is empty: it needs at least one text.")

    notes: list[str] = []
    if path.suffix.lower() in {".txt", ".text", ""}:
        texts = _read_lines(path, notes)
        frame = pd.DataFrame({"text": texts})
        text_column = "text"
        label_column = None
    else:
        frame = _read_table(path)
        if text_column is None:
            text_column = next((c for c in TEXT_COLUMN_GUESSES if c in frame.columns), None)
            if text_column is None:
                raise WorkbenchError(
                    f"{path} has no text column among {list(TEXT_COLUMN_GUESSES)}; its columns are "
                    f"{list(frame.columns)[:20]}: name one with text_column= (CLI: --text-column).")
        elif text_column not in frame.columns:
            raise WorkbenchError(
                f"{path} has no column {text_column!r}; its columns are {list(frame.columns)[:20]}.")
        if label_column is not None and label_column not in frame.columns:
            raise WorkbenchError(
                f"{path} has no label column {label_column!r}; its columns are {list(frame.columns)[:20]}.")
        if label_column is None and spec_str not in BUILTIN_DATASETS:
            label_column = next((c for c in LABEL_COLUMN_GUESSES if c in frame.columns), None)
        frame = _text_values(frame, text_column, path)
        texts = [t if len(t) <= MAX_TEXT_CHARS else t[:MAX_TEXT_CHARS] for t in frame[text_column].astype(str)]
    if not texts:
        raise WorkbenchError(f"{path} holds no non-empty text: it needs at least one text.")
    ds = TextDataset(name, texts, frame.reset_index(drop=True), text_column, label_column, source=str(path),
                     warnings=notes)
    return ds.subset(limit) if limit else ds


def _npy_array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise WorkbenchError(f"{path} is not a plain numeric .npy array (object arrays are refused): {exc}") from exc
    except (OSError, EOFError) as exc:
        raise WorkbenchError(f"{path} is not a .npy file ({exc}); save the matrix with numpy.save.") from exc
    if isinstance(array, np.lib.npyio.NpzFile):
        names = list(array.files)
        array.close()
        raise WorkbenchError(f"{path} is an .npz archive (arrays {names[:5]}), not a .npy array: save the one matrix "
                             "with numpy.save(path, matrix).")
    return array


def _list_column(frame: pd.DataFrame) -> str | None:
    """The one column whose values are lists/arrays (parquet) or JSON lists (CSV), if there is one."""
    def is_list(v):
        return isinstance(v, (list, np.ndarray)) or (isinstance(v, str) and v.lstrip().startswith("["))

    found = [c for c in frame.columns if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])
             if len(frame) and is_list(frame[c].iloc[0])]
    return found[0] if len(found) == 1 else None


def _table_vectors(path: Path, column: str | None) -> np.ndarray:
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise WorkbenchError(f"{path} holds no table (no header, no rows).") from exc
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        kind = "a parquet file" if path.suffix.lower() == ".parquet" else "a readable CSV"
        raise WorkbenchError(f"Could not read {path}: it is not {kind} ({str(exc).splitlines()[0][:200]}).") from exc
    if len(frame) == 0:
        raise WorkbenchError(f"{path} has a header but no rows: it holds no vectors.")
    column = column or _list_column(frame)
    if column is None:
        numeric = frame.select_dtypes(include=[np.number])
        if numeric.shape[1] == 0:
            raise WorkbenchError(f"{path} has no numeric columns: give one column per dimension, or one column of "
                                 "lists named with --vector-column.")
        return numeric.to_numpy()
    if column not in frame.columns:
        raise WorkbenchError(f"{path} has no column {column!r}; its columns are {list(frame.columns)[:20]}.")
    values = frame[column]
    try:
        values = values.map(lambda v: json.loads(v) if isinstance(v, str) else v)
        return np.stack([np.asarray(v, dtype=np.float64) for v in values])
    except (ValueError, TypeError) as exc:
        raise WorkbenchError(f"Column {column!r} of {path} does not hold equal-length numeric vectors: {exc}") from exc


def load_vectors(path: str | Path, column: str | None = None) -> np.ndarray:
    """Load a matrix of embeddings float32 ``(N, D)`` from .npy, .parquet or .csv.

    Tables: every numeric column is a dimension, or ``column`` (CLI ``--vector-column``; found by
    itself when exactly one column holds lists) names one column holding a list per row (parquet
    lists, or JSON lists such as ``"[0.1, 0.2]"`` in a CSV). NaN or infinite values, complex
    numbers, a non-2-D array or an empty matrix are errors.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise WorkbenchError(f"No vectors file at {path}.")
    if path.is_dir():
        raise WorkbenchError(f"{path} is a folder: give a .npy, .parquet or .csv file.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = _npy_array(path)
    elif suffix in {".parquet", ".csv"}:
        array = _table_vectors(path, column)
    else:
        raise WorkbenchError(f"Unsupported vectors file {suffix!r}: use .npy, .parquet or .csv.")
    array = np.asarray(array)
    if np.iscomplexobj(array):
        raise WorkbenchError(f"{path} holds complex numbers: give real vectors (e.g. the real and imaginary parts "
                             "as separate dimensions).")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise WorkbenchError(f"{path} does not hold numbers (dtype {array.dtype}).")
    if array.ndim != 2:
        raise WorkbenchError(f"{path} holds an array of shape {array.shape}; vectors must be 2-D (N, D).")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise WorkbenchError(f"{path} holds an empty matrix {array.shape}.")
    with np.errstate(over="ignore"):
        array32 = array.astype(np.float32)
    bad = ~np.isfinite(array32)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        beyond = np.isfinite(array).all() if np.issubdtype(array.dtype, np.floating) else False
        why = "values beyond float32's range (about 3.4e38)" if beyond else "NaN or infinite values"
        raise WorkbenchError(f"{path} has {why} in {len(rows)} row(s) (first: {rows[:5].tolist()}); "
                             "drop or rescale those rows.")
    return array32


def vectors_hash(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:32]
