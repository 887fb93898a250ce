"""Benchmark: logit lens over N prompts × T tokens × every layer of SmolLM2-135M, from the cache.

Compares, on the same residual states read from the activation store (one extraction, then cache hits):

- ``ours``: :mod:`analyses.lenses` math, layer by layer in chunks of ``CHUNK`` positions: final
  distribution once per chunk, then per layer logits -> fp32 log_softmax -> top-k, p/rank of the
  final top-1, KL(final ‖ layer), entropy. Memory: a few ``CHUNK × V`` matrices.
- ``reference``: the ``tuned-lens`` package's ``LogitLens`` (plain transformers final norm +
  ``lm_head``) applied to the same states, prompt by prompt with all layers stacked
  (``[layers, T, V]``, the way its ``PredictionTrajectory`` works), then the same statistics. Without
  the package, the same math restated (HF ``model.norm`` + ``lm_head``).

Each method runs in its own subprocess so that peak RSS (``ru_maxrss``) is its own; the reported
"lens memory" is the peak RSS during the timed block (polled every 5 ms) minus the RSS just before it
(model loaded, cache entry opened); "peak RSS" is the process's RSS peak during the block.

    nice -n 10 .venv/bin/python benchmarks/bench_logit_lens.py              # 64 prompts × 128 tokens
    nice -n 10 .venv/bin/python benchmarks/bench_logit_lens.py --n-prompts 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Max resident set size (MB) of this process while the block runs, polled every 5 ms."""

    def __enter__(self):
        import threading

        self.peak = _current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _current_rss_mb())
            self._stop.wait(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss_mb())


def _entry(model, n_prompts: int, n_tokens: int):
    from workbench.data import load_dataset
    from workbench.store import ActivationStore

    ds = load_dataset("abstracts").subset(n_prompts)
    entry = ActivationStore().get_or_extract(model, ds, model.resid_hooks(), max_length=n_tokens)
    return entry


def child(method: str, n_prompts: int, n_tokens: int, threads: int, k: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from analyses.lenses.core import CHUNK, StatsBuffers, Unembed, final_logprobs, lens_logprobs, stats_from_logprobs
    from analyses.lenses.training import states
    from workbench.models import load_model

    model = load_model("smollm2-135m")
    entry = _entry(model, n_prompts, n_tokens)
    hooks = model.resid_hooks()
    L = len(hooks) - 1
    kl_sum = np.zeros(L + 1)
    rank_sum = np.zeros(L + 1)
    if method == "reference":
        try:
            from tuned_lens import model_surgery
            from tuned_lens.nn import LogitLens

            model_surgery._transformer_lens_available = False  # TL 4 removed HookedTransformer (probe only)
            impl = "tuned-lens package LogitLens"
        except ImportError:
            LogitLens = None
            impl = "restated reference math (HF norm + lm_head)"
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32).eval()
        lens = LogitLens.from_model(plain) if LogitLens is not None else None
        del plain
    else:
        impl = "analyses.lenses (chunked per layer)"
        unembed = Unembed.from_model(model)
    import gc

    gc.collect()
    base = _current_rss_mb()
    sampler = RssSampler().__enter__()
    t0 = time.perf_counter()
    with torch.no_grad():
        if method == "ours":
            buffers = StatsBuffers()  # as analyses/lenses/analysis.py: one set of [chunk, V] scratch tensors
            for start in range(0, entry.n_tokens, CHUNK):
                idx = np.arange(start, min(start + CHUNK, entry.n_tokens))
                logp_f = final_logprobs(unembed, states(entry, hooks[L], idx))
                p_f = logp_f.exp()
                tgt = logp_f.argmax(-1)
                for layer in range(L + 1):
                    logp = logp_f if layer == L else lens_logprobs(unembed, states(entry, hooks[layer], idx), layer,
                                                                   buffers=buffers)
                    st = stats_from_logprobs(logp, logp_f, tgt, k, p_final=p_f, buffers=buffers)
                    kl_sum[layer] += st.kl.sum()
                    rank_sum[layer] += st.rank.sum()
        else:
            for i in range(entry.n_texts):
                hs = torch.stack([torch.from_numpy(np.asarray(entry.text_activations(h, i))) for h in hooks])
                if lens is not None:
                    logits = torch.stack([lens(hs[layer], layer) for layer in range(L + 1)])
                else:
                    logits = plain_norm_head(model, hs)  # pragma: no cover
                logp = torch.log_softmax(logits.float(), -1)  # [layers, T, V]
                logp_f = logp[-1]
                p = logp.exp()
                kl = (logp_f.exp() * (logp_f - logp)).sum(-1)
                _ = -(p * logp).sum(-1)  # entropy
                tgt = logp_f.argmax(-1)
                lp_t = logp.gather(-1, tgt[None, :, None].expand(L + 1, -1, 1))
                rank = 1 + (logp > lp_t).sum(-1)
                _ = logp.topk(k, -1)
                kl_sum += kl.sum(-1).double().numpy()
                rank_sum += rank.sum(-1).double().numpy()
    seconds = time.perf_counter() - t0
    sampler.__exit__(None, None, None)
    return {"method": method, "impl": impl, "seconds": seconds, "peak_rss_mb": sampler.peak, "base_rss_mb": base,
            "lens_mem_mb": sampler.peak - base, "process_max_rss_mb": _rss_mb(), "n_positions": int(entry.n_tokens), "n_layers": L + 1,
            "mean_kl": (kl_sum / entry.n_tokens).tolist(), "mean_rank": (rank_sum / entry.n_tokens).tolist(),
            "threads": threads}


def plain_norm_head(model, hs):  # pragma: no cover - only without the package
    raise RuntimeError("tuned-lens is not installed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--n-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--child", choices=["ours", "reference"])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n_prompts, args.n_tokens, args.threads, args.top_k)))
        return
    # warm the cache once (extraction is not part of either timing)
    from workbench.models import load_model

    _entry(load_model("smollm2-135m"), args.n_prompts, args.n_tokens)
    results = {}
    for method in ("ours", "reference"):
        out = subprocess.run([sys.executable, __file__, "--child", method, "--n-prompts", str(args.n_prompts),
                              "--n-tokens", str(args.n_tokens), "--threads", str(args.threads),
                              "--top-k", str(args.top_k)], capture_output=True, text=True, check=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, ref = results["ours"], results["reference"]
    import numpy as np

    kl_diff = float(np.max(np.abs(np.array(ours["mean_kl"]) - np.array(ref["mean_kl"]))))
    rank_diff = float(np.max(np.abs(np.array(ours["mean_rank"]) - np.array(ref["mean_rank"]))))
    print(f"logit lens, {ours['n_positions']} positions × {ours['n_layers']} layers of smollm2-135m, "
          f"{args.threads} thread(s)")
    for r in (ours, ref):
        print(f"  {r['method']:9s} {r['seconds']:8.1f} s   peak RSS in block {r['peak_rss_mb']:7.0f} MB   "
              f"lens memory {r['lens_mem_mb']:7.0f} MB   ({r['impl']})")
    print(f"  time ratio ours/reference: {ours['seconds'] / ref['seconds']:.3f}")
    print(f"  peak-memory ratio ours/reference (lens memory): {ours['lens_mem_mb'] / max(ref['lens_mem_mb'], 1):.3f}"
          f"   (peak RSS: {ours['peak_rss_mb'] / ref['peak_rss_mb']:.3f})")
    print(f"  agreement: max |Δ mean KL| = {kl_diff:.2e} nats, max |Δ mean rank| = {rank_diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"ours": ours, "reference": ref, "kl_diff": kl_diff,
                                               "rank_diff": rank_diff}, indent=1))


if __name__ == "__main__":
    main()
