"""Benchmark: the ablation baseline with each head's forward resumed at its layer, against full forwards.

For a head of layer ``l`` the blocks below ``l`` cannot see the ablation, so the circuits baseline
(:func:`analyses.circuits.ablation.ablation_effects`) starts that forward at block ``l`` from the
positives' clean residual. The baseline here is the same function with ``resume=False``: every
forward from the tokens (as TransformerLens's ``start_at_layer`` does too: it swaps the residual in
at block ``l`` but still runs the blocks below). Both unembed only the scored positions of
length-sorted batches. Both runs are timed in the same process on the same prompts; the effects
must be equal (the maximum absolute difference is printed).

Run (2-core CPU)::

    .venv/bin/python benchmarks/bench_ablation_resume.py [--models smollm2-135m gemma3-270m]
        [--task ioi] [--n-examples 16] [--mode mean] [--threads 2] [--device auto] [--dtype float32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n-examples", type=int, default=16, help="positive prompts (and as many negatives)")
    ap.add_argument("--mode", default="mean", choices=("mean", "patch"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (both runs use the same)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from analyses.circuits.ablation import ablation_effects
    from analyses.circuits.tasks import make_task
    from workbench.models import load_model

    print("| model | heads | full forwards | resumed | speed-up | max abs difference of the effects |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        m = load_model(name, device=args.device, dtype=args.dtype)
        task = make_task(args.task, m.tokenizer, args.n_examples, seed=0)
        runs = {}
        for resume in (False, True):
            t0 = time.time()
            runs[resume] = ablation_effects(m.bridge, task, mode=args.mode, batch_size=args.batch_size, resume=resume)
            runs[resume].seconds = time.time() - t0
        full, fast = runs[False], runs[True]
        diff = float(np.max(np.abs(full.effect - fast.effect)))
        print(f"| {name}, {args.task}, {len(task.positive)} prompts, {args.mode} | {m.n_layers} × {m.n_heads} | "
              f"{full.seconds:.1f} s | {fast.seconds:.1f} s | **{full.seconds / fast.seconds:.2f}×** | {diff:.1e} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
