"""Benchmark: every layer-quality metric for every layer of smollm2-135m over 200 prompts.

Target: under 2 minutes on 2 cores for the metrics, reading activations from the cache
(extraction is done first if the cache is cold and is timed separately). Prints the time per metric.

    python benchmarks/bench_layer_quality.py                 # smollm2-135m, 200 abstracts, from the cache
    python benchmarks/bench_layer_quality.py --random        # random arrays of the same shapes, no model
    python benchmarks/bench_layer_quality.py --threads 2     # BLAS threads (default 1)

Shapes (the analysis defaults): 31 layers (embeddings + 30 blocks), D = 576, 200 prompts truncated to
``max_length`` = 128 tokens (``--max-length 256`` for longer prompts), 32 prompts x 16 augmented copies. The topic probe and retrieval are downstream
scores, not metrics, and are not part of this target (the analysis reports their time in its summary).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analyses.layer_quality import DEFAULTS  # noqa: E402
from analyses.layer_quality.core import METRIC_COLUMNS, layer_row, pool  # noqa: E402

BUDGET_S = 120.0


def _random_inputs(n_layers=31, d=576, n_prompts=200, length=128, n_aug=32, A=16, seed=0):
    """Random stand-ins with the shapes of the real run (lengths vary like truncated abstracts)."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.integers(length // 2, 2 * length, n_prompts), length)
    # one set reused for every layer: the values do not change the cost, generating them would
    prompts = [np.cumsum(rng.standard_normal((n, d)).astype(np.float32), 0) for n in lengths]
    views = rng.standard_normal((n_aug, A, d)).astype(np.float32)

    def layer(_):
        return prompts, views

    return n_layers, layer, int(lengths.sum())


def _cache_inputs(args):
    from analyses.layer_quality.augment import AugmentSettings, augment_texts
    from workbench.analysis import RunContext
    from workbench.data import TextDataset, load_dataset
    from workbench.models import load_model

    t0 = time.perf_counter()
    model = load_model("smollm2-135m")
    ds = load_dataset("abstracts").subset(args.prompts)
    ctx = RunContext("layer_quality", dict(DEFAULTS), model=model, dataset=ds)
    hooks = model.resid_hooks()
    entry = ctx.activations(hooks, max_length=args.max_length, dataset=ds)
    settings = AugmentSettings(max_words_per_text=DEFAULTS["aug_max_words"])
    A, n_aug = DEFAULTS["n_augmentations"], DEFAULTS["aug_texts"]
    copies = augment_texts(ds.texts[:n_aug], A, seed=0, settings=settings)
    aug_ds = TextDataset.from_texts([t for row in copies for t in row], name=f"{ds.name}-augmented")
    aug_entry = ctx.activations(hooks, max_length=args.max_length, dataset=aug_ds)
    print(f"model + cache ready in {time.perf_counter() - t0:.1f} s "
          f"(cache: {[(e['dataset'], 'hit' if e['hit'] else 'extracted', e['seconds']) for e in ctx.cache_events]})")

    def layer(l):
        hook = hooks[l]
        prompts = (Z for _, Z in entry.iter_texts(hook))
        views = np.stack([pool(Z) for _, Z in aug_entry.iter_texts(hook)]).reshape(n_aug, A, -1)
        return prompts, views

    return len(hooks), layer, int(entry.n_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random", action="store_true", help="random arrays of the same shapes (no model)")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS threads (default 1: on a shared machine OpenBLAS threads spin and waste CPU)")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=DEFAULTS["max_length"])
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    import torch
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        n_layers, get_layer, n_tokens = _random_inputs(n_prompts=args.prompts, length=args.max_length,
                                                       n_aug=DEFAULTS["aug_texts"], A=DEFAULTS["n_augmentations"]) \
            if args.random else _cache_inputs(args)
        timings: dict[str, float] = {}
        params = {k: DEFAULTS[k] for k in ("alpha", "normalization", "clamp", "curvature", "pooling",
                                           "skip_first", "temperature", "dime_permutations", "lidar_delta")}
        t0, c0 = time.perf_counter(), time.process_time()
        rows = []
        for l in range(n_layers):
            t_read = time.perf_counter()
            prompts, views = get_layer(l)
            if not args.random:
                prompts = list(prompts)  # read the memory-mapped states (timed as "read")
            timings["read"] = timings.get("read", 0.0) + time.perf_counter() - t_read
            rows.append(layer_row(prompts, None, views, params=params, timings=timings))
        total, cpu = time.perf_counter() - t0, time.process_time() - c0

    source = "random arrays" if args.random else "smollm2-135m activations from the cache"
    print(f"\nlayer_quality metrics: {n_layers} layers x {args.prompts} prompts ({n_tokens} tokens), "
          f"{DEFAULTS['aug_texts']} x {DEFAULTS['n_augmentations']} augmented views, {source}, "
          f"{args.threads} thread(s)")
    for name in ["read", "pooling", *[m for m in METRIC_COLUMNS if m != "infonce_mi_lower_bound"]]:
        if name in timings:
            print(f"  {name:18s} {timings[name]:8.2f} s   ({timings[name] / n_layers * 1000:7.1f} ms/layer)")
    print(f"  {'total (wall)':18s} {total:8.2f} s   budget {BUDGET_S:.0f} s -> {'PASS' if total < BUDGET_S else 'FAIL'}")
    print(f"  {'total (CPU time)':18s} {cpu:8.2f} s   (all threads of this process; wall time also counts "
          f"waiting for the CPU when the machine is shared: load average {os.getloadavg()[0]:.1f})")
    last = rows[-1]
    print("  last layer: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)))


if __name__ == "__main__":
    main()
