"""Held-out evaluation of zero-shot inversion (docs/methods.md, "Embedding inversion").

``python -m analyses.inversion.evaluate select``  writes ``sample_data/inversion_eval.txt``: 20
sentences drawn by a fixed seeded rule from the abstracts of ``sample_data/paper_abstracts.jsonl``
(nothing was tuned on them): split every abstract into sentences at ``[.!?]`` + space + capital
letter; keep sentences of 6..16 whitespace words, ASCII only, ending in ``.``; then
``random.Random(0).sample(pool, 20)`` and keep them in corpus order.

``python -m analyses.inversion.evaluate run --out /tmp/inv_eval.jsonl`` inverts each sentence's
minilm-l6 embedding (read from the activation store; proposer smollm2-135m, B = K = 10, 2 stages)
and appends one JSON line per sentence (resumable), then prints the means.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

from workbench.paths import SAMPLE_DATA

EVAL_FILE = SAMPLE_DATA / "inversion_eval.txt"
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def select_sentences(n: int = 20, seed: int = 0, min_words: int = 6, max_words: int = 16) -> list[str]:
    pool = []
    for line in (SAMPLE_DATA / "paper_abstracts.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        abstract = " ".join(json.loads(line)["abstract"].split())
        for sent in _SPLIT.split(abstract):
            sent = sent.strip()
            if min_words <= len(sent.split()) <= max_words and sent.isascii() and sent.endswith("."):
                pool.append(sent)
    pool = list(dict.fromkeys(pool))
    picked = sorted(random.Random(seed).sample(range(len(pool)), n))
    return [pool[i] for i in picked]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["select", "run"])
    ap.add_argument("--out", default="/tmp/inv_eval.jsonl")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--refine-steps", type=int, default=None)
    ap.add_argument("--shard", default="0/1", help="i/n: run sentences with index % n == i")
    ap.add_argument("--reverse", action="store_true", help="last sentence first (a helper process)")
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.command == "select":
        sents = select_sentences()
        EVAL_FILE.write_text("\n".join(sents) + "\n", encoding="utf-8")
        print(f"wrote {len(sents)} sentences to {EVAL_FILE}")
        return 0

    import numpy as np
    import torch

    from workbench.models import load_model

    from .metrics import text_metrics
    from .search import Embedder, Proposer, SearchConfig, invert
    from .targets import store_targets

    torch.set_num_threads(args.threads)
    sents = [s for s in EVAL_FILE.read_text(encoding="utf-8").splitlines() if s.strip()]
    out = Path(args.out)
    done = {json.loads(l)["target"] for l in out.read_text().splitlines()} if out.exists() else set()
    proposer = Proposer(load_model("smollm2-135m"))
    embedder = Embedder(load_model("minilm-l6"))
    vectors = store_targets(embedder.model, sents, [None], embedder.max_length)[None]
    cfg = SearchConfig(beam_width=args.beam, top_k=args.topk, max_steps=args.steps,
                       refine_steps=args.refine_steps, stages=2)
    shard, n_shards = (int(x) for x in args.shard.split("/"))
    order = list(enumerate(sents))[::-1] if args.reverse else list(enumerate(sents))
    for i, target in order:
        if out.exists():  # other processes may have done it meanwhile
            done |= {json.loads(l)["target"] for l in out.read_text().splitlines()}
        if target in done or i % n_shards != shard:
            continue
        res = invert(vectors[i], proposer, embedder, cfg, callback=lambda s, i=i: print(
            f"[{i}] stage {s.stage} step {s.step}/{s.total_steps} cos {s.best_cosine:.4f} {s.best_text}",
            file=sys.stderr, flush=True))
        row = {"i": i, "target": target, "reconstruction": res.text, "cosine": res.cosine,
               **text_metrics(target, res.text), "steps": res.steps, "seconds": round(res.seconds, 1),
               "stage_texts": res.stage_texts, "stage_cosines": res.stage_cosines,
               "config": {"beam": args.beam, "topk": args.topk, "steps": args.steps,
                          "refine_steps": args.refine_steps or args.steps}}
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    rows = list({r["target"]: r for r in map(json.loads, out.read_text().splitlines())}.values())
    for key in ("cosine", "token_f1", "bleu", "exact_match", "seconds"):
        print(f"mean {key}: {np.mean([float(r[key]) for r in rows]):.4f}  (n={len(rows)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
