"""Activation-store benchmarks on smollm2-135m, ratios measured in the same run.

1. Extraction throughput: the store (all 31 residual layers, written to disk as safetensors shards
   with checksums) vs a plain transformers forward with output_hidden_states=True (computed, not
   stored) on the same 256 texts x 128 tokens, same batches. Target >= 0.9x.
2. Loading the cached entry (open + verify checksums + touch every layer's activations, memory-mapped)
   vs recomputing it. Target >= 20x faster.
3. Peak resident memory of a fresh process extracting N texts vs 10N texts. Target: grows < 10%.
4. The same at corpus scale, for the token metadata: 10,000 against 100,000 short texts (4-12 tokens
   each, every residual layer) on the built-in ``attn-only-induction`` model, whose forward pass is
   cheap enough that the store's own bookkeeping (token ids, strings, offsets, shard index) is what
   grows. The store keeps at most two shards in memory (one filling, one being written), a constant
   the 10,000-text run (100 MiB in all) would not reach with the default 256 MiB shards, so both
   runs use ``--scale-shard-mib`` (16) MiB shards: each passes that constant, and what is left is
   what grows with the number of texts. Target: peak memory grows < 10%. ``--scale-texts 0`` skips it.

Run: .venv/bin/python benchmarks/bench_store.py [--texts 256] [--mem-texts 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def texts_of_128_tokens(tokenizer, n: int) -> list[str]:
    """n texts of exactly 128 tokens cut from the sample abstracts (cycled)."""
    from workbench.data import load_dataset

    abstracts = load_dataset("abstracts").texts
    out, i = [], 0
    while len(out) < n:
        ids = tokenizer(abstracts[i % len(abstracts)] + " " + abstracts[(i + 1) % len(abstracts)])["input_ids"][:128]
        out.append(tokenizer.decode(ids))
        i += 1
    return out


def _vm_hwm_mib() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux keeps that across execve,
    so a child started by a large parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(n_texts: int, threads: int) -> None:
    """Child process: extract n_texts x 128 tokens (all residual layers) and print peak RSS in MiB."""
    import torch

    torch.set_num_threads(threads)
    from workbench.data import TextDataset
    from workbench.models import load_model
    from workbench.store import ActivationStore

    model = load_model("smollm2-135m")
    ds = TextDataset.from_texts(texts_of_128_tokens(model.tokenizer, n_texts), name=f"mem{n_texts}")
    root = Path(tempfile.mkdtemp(prefix="bench_mem_"))
    before = _vm_hwm_mib()
    t0 = time.time()
    ActivationStore(root=root).get_or_extract(model, ds, max_length=128, batch_size=8)
    peak = _vm_hwm_mib()
    shutil.rmtree(root)
    print(json.dumps({"n_texts": n_texts, "peak_mib": peak, "after_load_mib": before, "seconds": time.time() - t0}))


def measure_scale(n_texts: int, threads: int, shard_mib: int) -> None:
    """Child process: n_texts short texts through attn-only-induction into a fresh store; peak RSS."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from workbench.data import TextDataset
    from workbench.models import load_model
    from workbench.store import ActivationStore

    model = load_model("attn-only-induction")
    rng = np.random.default_rng(0)
    texts = [" ".join(f"t{t}" for t in rng.integers(0, 253, rng.integers(4, 13))) for _ in range(n_texts)]
    ds = TextDataset.from_texts(texts, name=f"scale{n_texts}")
    del texts
    root = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    before = _vm_hwm_mib()
    t0 = time.time()
    entry = ActivationStore(root=root, shard_bytes=shard_mib * 2**20).get_or_extract(model, ds, batch_size=256)
    n_tokens, disk = entry.n_tokens, sum(f.stat().st_size for f in entry.path.iterdir())
    peak = _vm_hwm_mib()
    shutil.rmtree(root)
    print(json.dumps({"n_texts": n_texts, "n_tokens": n_tokens, "disk_mib": disk / 2**20, "peak_mib": peak,
                      "after_load_mib": before, "seconds": time.time() - t0}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mem-texts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a shared machine)")
    parser.add_argument("--scale-texts", type=int, default=100_000, help="part 4: this many vs a tenth (0 = skip)")
    parser.add_argument("--scale-shard-mib", type=int, default=16, help="part 4: shard size of both runs")
    parser.add_argument("--child-mem", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-scale", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_mem:
        measure_memory(args.child_mem, args.threads)
        return
    if args.child_scale:
        measure_scale(args.child_scale, args.threads, args.scale_shard_mib)
        return

    import numpy as np
    import torch

    from workbench.data import TextDataset
    from workbench.models import load_model
    from workbench.store import ActivationStore

    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m")
    texts = texts_of_128_tokens(model.tokenizer, args.texts)
    ds = TextDataset.from_texts(texts, name="bench")
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))

    # -- 1. throughput --------------------------------------------------------------------------
    def plain_forward() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(texts), args.batch_size):
                enc = model.tokenizer(texts[start:start + args.batch_size], return_tensors="pt", padding=True)
                out = model.hf_model(**enc, output_hidden_states=True)
                assert len(out.hidden_states) == model.n_layers + 1
        return time.perf_counter() - t0

    def store_extract(i: int) -> tuple[float, object]:
        store = ActivationStore(root=tmp / f"run{i}")
        t0 = time.perf_counter()
        entry = store.get_or_extract(model, ds, max_length=128, batch_size=args.batch_size)
        return time.perf_counter() - t0, entry

    with torch.no_grad():  # warm-up of kernels on a short slice
        model.hf_model(**model.tokenizer(texts[:2], return_tensors="pt", padding=True))
    # interleave to share any drift in machine load
    t_plain_1 = plain_forward()
    t_store_1, entry = store_extract(1)
    t_plain_2 = plain_forward()
    t_store_2, _ = store_extract(2)
    t_plain, t_store = min(t_plain_1, t_plain_2), min(t_store_1, t_store_2)
    n_tokens = entry.n_tokens
    size_gib = sum((entry.path / s["file"]).stat().st_size for s in entry.meta["shards"]) / 2**30

    # -- 2. cached load vs recompute --------------------------------------------------------------
    store = ActivationStore(root=tmp / "run1")
    t0 = time.perf_counter()
    cached = store.get_or_extract(model, ds, max_length=128, batch_size=args.batch_size)
    checksum = 0.0
    for hook in cached.hooks:  # touch every layer's activations
        for _, arr in cached.iter_shards(hook):
            checksum += float(np.asarray(arr[:, 0]).sum())
    t_load = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)

    # -- 3. peak memory, N vs 10N texts, each in a fresh process ---------------------------------
    mem = []
    for n in (args.mem_texts, 10 * args.mem_texts):
        out = subprocess.run([sys.executable, __file__, "--child-mem", str(n), "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        mem.append(json.loads(out.stdout.strip().splitlines()[-1]))
    growth = mem[1]["peak_mib"] / mem[0]["peak_mib"] - 1
    scale = []
    for n in ((args.scale_texts // 10, args.scale_texts) if args.scale_texts else ()):
        out = subprocess.run([sys.executable, __file__, "--child-scale", str(n), "--threads", str(args.threads),
                              "--scale-shard-mib", str(args.scale_shard_mib)],
                             capture_output=True, text=True, check=True)
        scale.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"smollm2-135m, {args.texts} texts x 128 tokens = {n_tokens} tokens, 31 residual layers, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"{'measure':58s} {'value':>12s} {'target':>10s}")
    print(f"{'plain transformers forward (output_hidden_states)':58s} {n_tokens / t_plain:9.0f} tok/s")
    print(f"{'store extraction (forward + write %.2f GiB to disk)' % size_gib:58s} {n_tokens / t_store:9.0f} tok/s")
    print(f"{'  throughput ratio store / plain':58s} {t_plain / t_store:11.2f}x {'>= 0.9x':>10s}")
    print(f"{'load cached entry (verify + touch all layers)':58s} {t_load:10.2f} s")
    print(f"{'  speed-up cached load vs recompute (store extraction)':58s} {t_store / t_load:11.1f}x {'>= 20x':>10s}")
    print(f"{'peak RSS extracting %d texts' % mem[0]['n_texts']:58s} {mem[0]['peak_mib']:8.0f} MiB")
    print(f"{'peak RSS extracting %d texts' % mem[1]['n_texts']:58s} {mem[1]['peak_mib']:8.0f} MiB")
    print(f"{'  peak memory growth for 10x the data':58s} {100 * growth:10.1f} % {'< 10%':>10s}")
    for row in scale:
        print(f"{'attn-only-induction, %d short texts (%d tokens, %.0f MiB, %d MiB shards)' % (row['n_texts'], row['n_tokens'], row['disk_mib'], args.scale_shard_mib):58s}"
              f" {row['peak_mib']:8.0f} MiB  ({row['seconds']:.0f} s)")
    if scale:
        print(f"{'  peak memory growth for 10x the texts':58s} {100 * (scale[1]['peak_mib'] / scale[0]['peak_mib'] - 1):10.1f} %"
              f" {'< 10%':>10s}")


if __name__ == "__main__":
    main()
