"""Benchmark: IOI circuit finding on smollm2-135m, the SAE method vs the ablation baseline.

SmolLM2-135M has 30 layers x 9 heads = 270 heads. The ablation baseline runs one forward pass of the
positive prompts per head (plus clean, negative and mean-collecting passes); the SAE method reads
the heads' ``hook_z`` for positives + negatives through the activation store and then trains a
200-feature SAE on 10 examples. Printed: runtimes of both, their ratio, the Spearman rank
correlation between SAE node scores and ablation effects, the top heads of each, and the SAE's
ROC-AUC against the ablation-established circuit.

The SAE path is timed cold: the run gets a fresh, empty store (a temporary folder, removed
afterwards), so its time includes the hooked forward pass and the write of the store entry, as a
first run does. (With a warm store the SAE path would only read the entry back, and the ratio
would overstate the method's advantage; the summary's ``sae_extraction_cache_hit`` says which.)

Run (CPU, one thread, niced; 10 min for --n-examples 8 on a 2-core machine shared with other jobs)::

    nice -n 10 .venv/bin/python benchmarks/bench_circuits.py [--model smollm2-135m] [--n-examples 16]
        [--seeds 1] [--threads 1] [--json out.json]

``--model`` takes a built-in name or a local causal-LM folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n-examples", type=int, default=16, help="positive prompts (and as many negatives)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from analyses.circuits import find_circuit
    from workbench.models import load_model
    from workbench.store import ActivationStore

    t0 = time.time()
    m = load_model(args.model)
    load_s = time.time() - t0
    print(f"model {m.name}: {m.n_layers} layers x {m.n_heads} heads, d={m.d_model}; loaded in {load_s:.1f}s; "
          f"threads {torch.get_num_threads()}", flush=True)
    last = {"msg": None}

    def progress(done, total, msg=""):
        if msg != last["msg"] or done == total or (msg == "ablating heads" and done % 10 == 0):
            print(f"  [{time.time() - t0:7.1f}s] {msg} {done}/{total}", flush=True)
            last["msg"] = msg

    t1 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-circuits-") as root:  # a fresh store: a cold SAE path
        table, summary = find_circuit(m, store=ActivationStore(root=Path(root)), task=args.task,
                                      n_examples=args.n_examples, seeds=args.seeds, batch_size=args.batch_size,
                                      progress=progress)
    total_s = time.time() - t1
    rt = summary["runtimes_s"]
    if rt["sae_extraction_cache_hit"]:
        raise SystemExit("the SAE path's store read was a cache hit in a fresh store: the timing is not cold")
    abl = summary["ablation"]
    print()
    print(f"task {summary['task']}: {summary['n_positive']} positive + {summary['n_negative']} negative prompts; "
          f"notes: {summary['task_notes']}")
    print(f"metric ({summary['metric']}): clean {abl['clean_metric']:.3f}, "
          f"negative prompts {abl['negative_metric']:.3f}")
    print(f"SAE method:  extraction into a fresh store {rt['sae_extraction']:.1f}s + one trial "
          f"{rt['sae_trial_mean']:.1f}s = {rt['sae_run']:.1f}s per run ({args.seeds} trials: {rt['sae_trials']})")
    print(f"ablation:    {rt['ablation']:.1f}s ({abl['n_forwards']} forward passes, {abl['n_examples']} prompts each)")
    print(f"time ratio ablation / SAE run: {rt['ablation_over_sae']:.1f}x wall clock; "
          f"{rt['cpu']['ablation_over_sae']:.1f}x process CPU time (SAE run {rt['cpu']['sae_run']:.1f} CPU-s, "
          f"ablation {rt['cpu']['ablation']:.1f} CPU-s)")
    print(f"Spearman(SAE node score, ablation effect) over {len(table)} heads: "
          f"{summary['spearman_sae_vs_ablation']:.3f}")
    print(f"top heads by ablation effect: {summary['top_heads_ablation']}")
    print(f"top heads by SAE score:       {summary['top_heads_sae']}")
    block = summary.get("vs_ablation")
    if block:
        print(f"ablation circuit (effect >= {abl['circuit_threshold']} of the gap): {block['n_reference_heads']} heads "
              f"{block['reference_heads'][:20]}")
        auc = block["node_roc_auc_mean"]
        print(f"SAE node ROC-AUC vs ablation circuit: per seed {block['node_roc_auc_per_seed']} -> "
              f"{auc if auc is None else round(auc, 3)} +- "
              f"{block['node_roc_auc_sd'] if block['node_roc_auc_sd'] is None else round(block['node_roc_auc_sd'], 3)}")
    print(f"end to end {total_s:.1f}s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load_s": load_s,
                                         "total_s": total_s, "summary": summary,
                                         "table": table.to_dict(orient="records")}, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
