"""Benchmark of zero-shot inversion (docs/methods.md, "Embedding inversion").

1. Candidates embedded per second by minilm-l6, batched (``--batch`` candidates per forward, as the
   beam search does: all B·K extensions of a step at once) vs one forward per candidate. Candidates
   are the B·K = 100 texts scored at step ``--cand-step`` of a real search (first held-out sentence).
   Target ratio >= 5x.
2. Seconds per sentence of the full search (proposer smollm2-135m, B = K = 10, ``--steps`` per stage,
   2 stages) on ``--sentences`` held-out sentences; also seconds per step.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_inversion.py [--threads 1] [--steps 32]``.
Timings depend on the CPU and its load; the machine is reported with the numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--sentences", type=int, default=1)
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--cand-step", type=int, default=16, help="take the candidates of this search step")
    args = ap.parse_args()

    import torch

    from analyses.inversion.search import Embedder, Proposer, SearchConfig, invert
    from analyses.inversion.targets import store_targets
    from workbench.models import load_model

    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
          f"{args.threads}, load average {os.getloadavg()[0]:.1f}")
    emb_model = load_model("minilm-l6")
    proposer_model = load_model("smollm2-135m")
    sents = [s for s in (Path(__file__).resolve().parents[1] / "sample_data" / "inversion_eval.txt")
             .read_text().splitlines() if s.strip()]
    # the candidates of one real search step (B*K extensions of the beams after --cand-step steps)
    embedder = Embedder(emb_model, batch_size=args.batch)
    proposer = Proposer(proposer_model)
    # the targets come from the activation store, as in the analysis; candidates from embedder.encode
    targets = store_targets(emb_model, sents[: max(1, args.sentences)], [None], embedder.max_length)[None]
    captured: list[list[str]] = []
    original = embedder.encode
    embedder.encode = lambda texts, batch_size=None: (captured.append(list(texts)), original(texts, batch_size))[1]
    invert(targets[0], proposer, embedder,
           SearchConfig(beam_width=10, top_k=10, max_steps=args.cand_step, stages=1, threshold=1.01))
    embedder.encode = original
    cands = captured[-1]
    while len(cands) < args.candidates:
        cands = cands + captured[-1]
    cands = cands[: args.candidates]
    lengths = [len(emb_model.tokenizer(c)["input_ids"]) for c in cands]
    print(f"candidates: {len(cands)} texts of step {args.cand_step}, {min(lengths)}-{max(lengths)} embedder tokens")
    embedder.encode(cands[:8])  # warm-up

    def timed(batch_size: int) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            embedder.encode(cands, batch_size=batch_size)
            best = min(best, time.perf_counter() - t0)
        return best

    t_batched, t_single = timed(args.batch), timed(1)
    rate_b, rate_s = len(cands) / t_batched, len(cands) / t_single
    print(f"embedding {len(cands)} candidates: batched (batch {args.batch}) {t_batched:.3f} s = {rate_b:.1f} cand/s; "
          f"one at a time {t_single:.3f} s = {rate_s:.1f} cand/s; ratio {rate_b / rate_s:.2f}x (target >= 5x)")

    if not args.skip_search:
        cfg = SearchConfig(beam_width=10, top_k=10, max_steps=args.steps, stages=2, threshold=1.01)
        total_s, total_steps, total_emb = 0.0, 0, 0
        for s, target in zip(sents[: args.sentences], targets):
            res = invert(target, proposer, embedder, cfg)
            total_s += res.seconds
            total_steps += res.steps
            total_emb += res.n_embedded
            print(f"  {res.seconds:.1f} s, {res.steps} steps, cos {res.cosine:.3f}: {s!r} -> {res.text!r}")
        n = min(args.sentences, len(sents))
        print(f"search (B=K=10, {args.steps} steps x 2 stages): {total_s / n:.1f} s per sentence, "
              f"{total_s / total_steps:.2f} s per step, {total_emb / total_s:.1f} candidates scored per second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
