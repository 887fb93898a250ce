"""Build ``sample_data/topics.csv`` (columns ``text,label``) from the chatterbot-corpus English YAML.

Source: the PyPI package ``chatterbot-corpus`` (BSD licence, Gunther Cox,
https://github.com/gunthercox/chatterbot-corpus), version 1.3.3. It ships about 4,400 English
utterances in 21 YAML files, one topic per file. The package is *not* a dependency of the
workbench; this script is run once by hand and its output is committed::

    pip download --no-deps chatterbot-corpus==1.3.3 -d /tmp/cc
    python scripts/make_topics.py /tmp/cc/chatterbot_corpus-1.3.3-py2.py3-none-any.whl

Cleaning (each step is there because the probe would otherwise measure something else):

- every utterance of a conversation (questions and answers) is a text, labelled with the file's
  first category;
- whitespace is collapsed; texts with a code block or over ``MAX_CHARS`` characters are dropped
  (the ``coding`` file holds whole programs), and so are texts under ``MIN_WORDS`` words ("No.",
  "Sort of." carry no topic);
- exact duplicates are removed (``tech_support`` repeats 20 lines 2,100 times: duplicates across
  cross-validation folds would let a probe memorise), and a text that occurs under two labels
  is dropped altogether;
- topics with fewer than ``MIN_PER_LABEL`` texts are dropped, larger ones are sampled down to
  ``MAX_PER_LABEL`` (seed 0) so no topic dominates the accuracy.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import re
import zipfile
from collections import defaultdict
from pathlib import Path

import yaml

MAX_CHARS = 300
MIN_WORDS = 3
MIN_PER_LABEL = 25
MAX_PER_LABEL = 120
SEED = 0


def _english_yaml_files(source: Path) -> dict[str, str]:
    """Return {file name: YAML text} for the English corpus in a wheel or an extracted folder."""
    out: dict[str, str] = {}
    if source.is_file():
        with zipfile.ZipFile(source) as zf:
            for name in zf.namelist():
                if re.search(r"chatterbot_corpus/data/english/[^/]+\.ya?ml$", name):
                    out[Path(name).name] = zf.read(name).decode("utf-8")
    else:
        for path in sorted(source.rglob("chatterbot_corpus/data/english/*.yml")):
            out[path.name] = path.read_text(encoding="utf-8")
    if not out:
        raise SystemExit(f"no chatterbot_corpus/data/english/*.yml found in {source}")
    return out


def build_rows(source: Path) -> list[tuple[str, str]]:
    by_text: dict[str, set[str]] = defaultdict(set)
    for _, text in sorted(_english_yaml_files(source).items()):
        doc = yaml.safe_load(text)
        label = str(doc["categories"][0]).strip().lower()
        for conv in doc.get("conversations", []):
            for utt in conv:
                if not isinstance(utt, str) or "```" in utt:
                    continue
                utt = " ".join(utt.split())
                if len(utt) > MAX_CHARS or len(utt.split()) < MIN_WORDS:
                    continue
                by_text[utt].add(label)
    per_label: dict[str, list[str]] = defaultdict(list)
    for utt, labels in by_text.items():
        if len(labels) == 1:
            per_label[next(iter(labels))].append(utt)
    rng = random.Random(SEED)
    rows: list[tuple[str, str]] = []
    for label in sorted(per_label):
        texts = sorted(per_label[label])
        if len(texts) < MIN_PER_LABEL:
            continue
        if len(texts) > MAX_PER_LABEL:
            texts = sorted(rng.sample(texts, MAX_PER_LABEL))
        rows.extend((t, label) for t in texts)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="chatterbot-corpus wheel or extracted folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "sample_data" / "topics.csv")
    args = parser.parse_args()
    rows = build_rows(args.source)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    args.out.write_text(buf.getvalue(), encoding="utf-8")
    counts: dict[str, int] = defaultdict(int)
    for _, label in rows:
        counts[label] += 1
    print(f"wrote {len(rows)} rows, {len(counts)} labels to {args.out}")
    for label, n in sorted(counts.items()):
        print(f"  {label:24s} {n}")


if __name__ == "__main__":
    main()
