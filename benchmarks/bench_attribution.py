"""Benchmark: attribution patching vs activation patching on the head-z grid of smollm2-135m, IOI prompts.

SmolLM2-135M has 30 layers x 9 heads = 270 heads. Activation patching runs the corrupted prompts once
per head with that head's ``attn.hook_z`` (all positions) replaced by its clean value, plus the
clean and corrupted forwards; attribution patching estimates the same 270 cells from one clean
forward, one corrupted forward and one backward. Both run in the same process on the same prompts
(``workbench run attribution_patching`` with ``compare_exact=true``), each timed with its own clean
forward. Printed: both runtimes and their ratio, the Spearman and Pearson correlation between the
grids, and the top heads of each.

Run (CPU; about 3 min for 16 prompts on a 2-core machine)::

    nice -n 10 .venv/bin/python benchmarks/bench_attribution.py [--model smollm2-135m] [--n-examples 16]
        [--threads 2] [--batch-size 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-examples", type=int, default=16, help="IOI prompt pairs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from workbench.analysis import run_analysis
    from workbench.models import load_model

    t0 = time.time()
    model = load_model(args.model)
    print(f"model {model.name}: {model.n_layers} layers x {model.n_heads} heads; loaded in {time.time() - t0:.1f}s; "
          f"threads {torch.get_num_threads()}", flush=True)
    result = run_analysis("attribution_patching", model=model, params={
        "task": "ioi", "n_examples": args.n_examples, "patch": "z", "batch_size": args.batch_size,
        "compare_exact": True})
    s = result.summary
    c = s["comparison"]
    print(f"IOI, {s['n_prompts']} prompt pairs, {s['n_cells']} head cells; clean LD {s['clean_metric']:.3f}, "
          f"corrupted LD {s['corrupted_metric']:.3f}")
    print(f"activation patching:  {c['seconds_exact']:.2f} s ({c['n_forwards_exact']} forwards)")
    print(f"attribution patching: {c['seconds_attribution']:.2f} s (2 forwards + 1 backward)")
    print(f"time ratio (exact / attribution): {c['speedup']:.1f}x")
    print(f"Spearman rank correlation: {c['spearman']:.3f}   Pearson: {c['pearson']:.3f}")
    print(f"top heads, exact:       {', '.join(s['top_cells_exact'])}")
    print(f"top heads, attribution: {', '.join(s['top_cells'])}")
    if args.json:
        args.json.write_text(json.dumps({"model": model.name, "threads": torch.get_num_threads(), **s}, indent=2,
                                        default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
