"""A training corpus sampled from the model itself, for the tuned lens.

The lens objective ``KL(p_L || p_l)`` needs inputs from the model's own distribution, not labels, so
text the model writes serves (a deviation from training on the Pile, recorded in ``lens.json``): it is
as large as the budget needs, never the evaluation text, and no package has to ship a corpus. Each
text starts from a varied short prompt (seeded choice) and is sampled at temperature 1 with no top-k
or top-p cut, through the plain model's KV cache (checked on every load). The corpus is written once
under ``cache_dir()/corpora/`` (JSONL, keyed by the model's fingerprint and the settings) and reused.
Sampling is resumable: each finished batch is appended to ``<corpus>.b<batch>.partial.jsonl``, and an
interrupted run continues after the last complete batch (each batch draws its own seed from one seeded
generator), so the finished corpus is the one an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from workbench.data import TextDataset, load_dataset
from workbench.errors import WorkbenchError
from workbench.paths import atomic_write, cache_dir

#: openers of varied register; the model continues each (a seeded choice per text)
OPENERS = (
    "The", "In", "A", "When", "It was", "Today", "My", "There is", "Scientists", "The history of",
    "How to", "Once upon a time", "According to", "The best way to", "In this article,", "Yesterday",
    "The government", "Researchers found that", "Here is a recipe for", "Dear", "The weather",
    "In 1987,", "Many people believe", "The city of", "Our results show", "Chapter 1.", "Q: What is",
    "The company announced", "If you want to", "One of the most", "The following", "She said",
    "Why do", "The problem with", "In the beginning", "This paper", "The team", "Last week,",
    "Step 1:", "The main reason", "After the war,", "Water", "The market", "At the end of", "I think",
    "The book", "In mathematics,", "The new law", "Children", "The study of",
)


def corpus_path(model, n_texts: int, max_new_tokens: int, seed: int) -> Path:
    key = json.dumps([model.fingerprint, n_texts, max_new_tokens, seed, OPENERS], sort_keys=True)
    return cache_dir() / "corpora" / f"sampled-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"


@torch.inference_mode()
def sampled_corpus(model, n_texts: int, max_new_tokens: int = 128, seed: int = 0, batch_size: int = 32,
                   progress=None) -> TextDataset:
    """``n_texts`` texts sampled from ``model`` (temperature 1), as a dataset; made once, then read."""
    model.require_kv_cache("sampling a corpus")
    path = corpus_path(model, n_texts, max_new_tokens, seed)
    if not path.exists():
        _write_corpus(model, path, n_texts, max_new_tokens, seed, batch_size, progress)
    return load_dataset(path)


def _write_corpus(model, path: Path, n_texts: int, max_new_tokens: int, seed: int, batch_size: int,
                  progress) -> None:
    tok, hf = model.tokenizer, model.hf_model
    rng = np.random.default_rng(seed)
    openers = [OPENERS[i] for i in rng.integers(0, len(OPENERS), n_texts)]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    partial = path.with_name(f"{path.stem}.b{batch_size}.partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    rows = _finished_batches(partial, batch_size, n_texts)
    t0, resumed = time.time(), len(rows)
    side, tok.padding_side = tok.padding_side, "left"  # generation continues the last real token of every row
    try:
        for start in range(0, n_texts, batch_size):
            batch_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))  # drawn for every batch
            if start < resumed:
                continue  # sampled before an interruption
            prompts = openers[start:start + batch_size]
            enc = tok(prompts, return_tensors="pt", padding=True).to(model.input_device)
            torch.manual_seed(batch_seed)
            out = hf.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens // 2,
                              pad_token_id=tok.pad_token_id)
            batch = [{"text": (opener + tok.decode(ids, skip_special_tokens=True)).replace("\n", " ").strip(),
                      "opener": opener} for opener, ids in zip(prompts, out[:, enc["input_ids"].shape[1]:])]
            with open(partial, "a", encoding="utf-8") as handle:  # one write per batch; a torn one is dropped
                handle.write("".join(json.dumps(r) + "\n" for r in batch))
            rows += batch
            if progress is not None:
                done = len(rows)
                progress(done, n_texts, f"sampling the corpus: {done}/{n_texts} texts, "
                                        f"{(time.time() - t0) / (done - resumed) * (n_texts - done):.0f} s left")
    finally:
        tok.padding_side = side
    rows = [r for r in rows if r["text"]]
    if not rows:
        raise WorkbenchError(f"{model.name} sampled no text: check its tokenizer and generation settings.")
    with atomic_write(path) as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    partial.unlink(missing_ok=True)


def _finished_batches(partial: Path, batch_size: int, n_texts: int) -> list[dict]:
    """The rows of the complete batches an interrupted run left in ``partial`` (a torn last line or an
    incomplete batch is cut off, and the file is rewritten to match)."""
    if not partial.exists():
        return []
    rows = []
    for line in partial.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    keep = min(len(rows) - len(rows) % batch_size, n_texts)
    rows = rows[:keep]
    with atomic_write(partial) as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    return rows
