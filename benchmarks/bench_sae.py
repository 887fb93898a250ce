"""SAE training benchmarks, ratios measured in the same run.

1. Throughput: the back-end's loop (rows streamed from the activation store, sparse decoding) against the
   plain reference loop of ``tests/test_sae_reference.py`` (dense latents, the whole matrix in memory),
   same TopK settings (d_model 576 as smollm2-135m, 2 x 576 latents, k 16, auxk 32, multik 64, batch
   1024), same rows and batches. Target: >= 1x activations per second.
2. Peak memory of a fresh process that trains the same steps and then scans every row for the quality
   numbers, on a store entry of N texts and of 10 N texts. Target: grows < 10%. Two measures: VmHWM
   (every resident page, including the store's memory-mapped shards, which the kernel maps in as they
   are read and drops under pressure: these grow with the entry by design) and the peak of RssAnon
   (the process's own memory, sampled every 20 ms), which is what must stay bounded.

The rows are the layer-1 residual stream of a random-init 2-layer Llama of width 576 (built here, so the
benchmark needs no download and extracts in seconds); their values do not change the cost of a step.

Run: .venv/bin/python benchmarks/bench_sae.py [--texts 96] [--steps 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SETTINGS = {"k": 16, "d_sae": 1152, "batch_size": 1024, "lr": 1e-3}


def _vm_hwm_mib() -> float:
    """Peak resident set of this process (VmHWM; not ru_maxrss, which Linux carries over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class AnonPeak:
    """Peak RssAnon of this process (anonymous memory: heap, tensors; not file-backed mapped pages),
    sampled on a thread every ``period`` seconds."""

    def __init__(self, period: float = 0.02):
        import threading

        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    @staticmethod
    def now_mib() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.peak = max(self.peak, self.now_mib())

    def __enter__(self):
        self.peak = self.now_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now_mib())


def make_model(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import make_word_tokenizer

    tok = make_word_tokenizer(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg.architectures = ["LlamaForCausalLM"]
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def corpus(n: int):
    """``n`` texts of 127 words (128 tokens with BOS) cut from the sample abstracts (cycled)."""
    from workbench.data import TextDataset, load_dataset

    words = " ".join(load_dataset("abstracts").texts).split()
    return TextDataset.from_texts([" ".join(words[(i * 127) % (len(words) - 127):][:127]) for i in range(n)],
                                  name=f"bench{n}")


def open_rows(model_dir: Path, store_root: Path, n_texts: int):
    from analyses.sae.inputs import StoreRows, resolve_target, row_index
    from workbench.models import load_model
    from workbench.store import ActivationStore

    import numpy as np

    model = load_model(str(model_dir), lazy=True)
    target = resolve_target(model, "layer:1")
    entry = ActivationStore(root=store_root).get_or_extract(model, corpus(n_texts), [target.hook], max_length=128)
    return StoreRows(entry, target.hook, row_index(entry, target, np.arange(entry.n_texts), True))


def settings(steps: int) -> dict:
    from analyses.sae.settings import resolve, settings_from

    return resolve(settings_from({**SETTINGS, "steps": steps}), 576, target_token_level=True)


def child_memory(model_dir: Path, store_root: Path, n_texts: int, steps: int) -> None:
    """Fresh process: train ``steps`` steps from the store, then one quality scan of every row."""
    from analyses.sae.scan import evaluate
    from analyses.sae.train import fit

    rows = open_rows(model_dir, store_root, n_texts)
    before = _vm_hwm_mib()
    t0 = time.time()
    with AnonPeak() as anon:
        sae, _ = fit(rows, settings(steps))
        quality = evaluate(sae, rows)
    print(json.dumps({"n_texts": n_texts, "rows": rows.n_rows, "peak_mib": _vm_hwm_mib(), "after_open_mib": before,
                      "anon_peak_mib": anon.peak, "fvu": quality["fvu"], "seconds": time.time() - t0}))


def throughput(rows, steps: int) -> tuple[float, float]:
    """(rows/s of the back-end's loop from the store, rows/s of the plain loop in memory), best of two each."""
    import numpy as np

    from analyses.sae.train import dead_steps_for, fit
    from test_sae_reference import reference_losses

    s = settings(steps)
    X = rows.rows(np.arange(rows.n_rows))
    dead = dead_steps_for(s, rows.n_rows, s["batch_size"])
    ours, plain = [], []
    for _ in range(2):  # interleaved, to share any drift in machine load
        t0 = time.perf_counter()
        fit(rows, s)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference_losses(X, s, dead, steps)
        plain.append(time.perf_counter() - t0)
    done = steps * s["batch_size"]
    return done / min(ours), done / min(plain)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        child_memory(Path(args.child[0]), Path(args.child[1]), int(args.child[2]), args.steps)
        return
    work = Path(tempfile.mkdtemp(prefix="bench_sae_"))
    os.environ.setdefault("WORKBENCH_CACHE", str(work / "cache"))
    try:
        model_dir = make_model(work / "model")
        store_root = work / "activations"
        small = open_rows(model_dir, store_root, args.texts)
        open_rows(model_dir, store_root, 10 * args.texts)  # extracted here, read by the child
        ours, plain = throughput(small, args.steps)
        mem = []
        for n in (args.texts, 10 * args.texts):
            out = subprocess.run([sys.executable, __file__, "--child", str(model_dir), str(store_root), str(n),
                                  "--steps", str(args.steps), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True, env=dict(os.environ))
            mem.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    growth = mem[1]["peak_mib"] / mem[0]["peak_mib"] - 1
    anon_growth = mem[1]["anon_peak_mib"] / mem[0]["anon_peak_mib"] - 1
    print(f"TopK SAE d_in 576, {SETTINGS['d_sae']} latents, k {SETTINGS['k']}, batch {SETTINGS['batch_size']}, "
          f"{args.steps} steps, {args.threads} thread(s); {small.n_rows} rows (1x)")
    print(f"{'measure':60s} {'value':>14s} {'target':>8s}")
    print(f"{'plain reference loop (dense, rows in memory)':60s} {plain:10.0f} rows/s")
    print(f"{'back-end loop (rows streamed from the store, sparse decode)':60s} {ours:10.0f} rows/s")
    print(f"{'  throughput ratio back-end / plain':60s} {ours / plain:13.2f}x {'>= 1x':>8s}")
    for m in mem:
        print(f"{'peak RSS (VmHWM), train + quality scan, %d texts (%d rows)' % (m['n_texts'], m['rows']):60s} "
              f"{m['peak_mib']:10.0f} MiB")
    print(f"{'  growth for 10x the rows (incl. mapped store pages)':60s} {100 * growth:12.1f} %")
    for m in mem:
        print(f"{'peak RssAnon (own memory), %d texts' % m['n_texts']:60s} {m['anon_peak_mib']:10.0f} MiB")
    print(f"{'  own-memory growth for 10x the rows':60s} {100 * anon_growth:12.1f} % {'< 10%':>8s}")


if __name__ == "__main__":
    main()
