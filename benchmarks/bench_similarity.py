"""Benchmark of the layer-similarity matrix (workbench.stats.similarity_matrices) against a naive per-pair
implementation, in the same run on the same array.

The CKA matrix of every pair of the 31 residual layers (embeddings + 30 blocks) of ``smollm2-135m`` over
8,000 token vectors (a seeded subsample of 64 abstracts, 128 tokens each, the same rows at every layer):

- ours: each layer centred once into one [n, 31 x 576] matrix, each layer's ``||X^T X||_F`` once, each
  pair's cross-product ``X_i^T X_j`` once (the upper triangle only; one GEMM per row of the matrix);
- naive, feature space: Kornblith et al.'s ``feature_space_linear_cka(x, y)`` for each of the 31 x 31
  pairs (centre both, ``x^T y``, and both layers' ``x^T x`` again: numpy runs those two as SYRK, half a
  product each), every pair;
- naive, Gram space: Kornblith et al.'s ``cka(gram_linear(x), gram_linear(y))`` (each pair's two n x n
  Gram matrices, centred), on a seeded sample of ``--gram-pairs`` pairs, extrapolated to all 961 (the full
  loop would take hours).

All in float32 with the same BLAS threads; the matrices are compared (max absolute difference). The
flop count bounds the first ratio: per pair the feature-space loop does 1 + 2 x 1/2 products against our
1/2 (the triangle), about 3.9x. Peak memory: the process's resident high-water mark (``VmHWM``) above
what the loaded layers take, for our method, beside the bank's size. Times are wall and CPU seconds
(CPU seconds are the fair measure on a shared machine). Run:
``nice -n 10 .venv/bin/python benchmarks/bench_similarity.py`` (``--threads N``, ``--tokens N``).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def vm_hwm_mib() -> float:
    """The process's peak resident memory so far (MiB)."""
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read())[1]) / 1024


def vm_rss_mib() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read())[1]) / 1024


def reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def naive_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019) ``feature_space_linear_cka(features_x, features_y)``, one pair."""
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    dot = np.linalg.norm(x.T @ y) ** 2
    return float(dot / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019) ``cka(gram_linear(x), gram_linear(y))``: centred n x n Gram matrices."""
    def centred_gram(a):
        g = a @ a.T
        means = g.mean(0, dtype=np.float64)
        means -= means.mean() / 2
        return g - means[:, None].astype(g.dtype) - means[None, :].astype(g.dtype)

    gx, gy = centred_gram(x), centred_gram(y)
    return float(gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def load_layers(n_tokens: int, seed: int) -> list[np.ndarray]:
    from workbench.data import load_dataset
    from workbench.models import load_model
    from workbench.stats import subsample_rows
    from workbench.store import ActivationStore

    model = load_model("smollm2-135m", lazy=True)
    data = load_dataset("abstracts").subset(64)
    entry = ActivationStore().get_or_extract(model, data, model.resid_hooks(), max_length=128)
    rows = subsample_rows(entry.n_tokens, n_tokens, seed)
    layers = [np.ascontiguousarray(entry.layer(h)[rows]) for h in model.resid_hooks()]
    print(f"smollm2-135m: {len(layers)} layers x {layers[0].shape[0]} token vectors x {layers[0].shape[1]} dims "
          f"(of {entry.n_tokens} stored tokens)", flush=True)
    return layers


def timed(label: str, fn, *args, **kwargs):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    print(f"  {label:44s} wall {wall:8.2f} s   cpu {cpu:8.2f} s", flush=True)
    return out, wall, cpu


def naive_matrix(layers: list[np.ndarray], pairs: list[tuple[int, int]] | None = None, fn=naive_cka) -> np.ndarray:
    L = len(layers)
    out = np.full((L, L), np.nan)
    for i, j in pairs or [(i, j) for i in range(L) for j in range(L)]:
        out[i, j] = fn(layers[i], layers[j])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gram-pairs", type=int, default=6, help="seeded pairs timed for the Gram-space loop (0 = skip)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    from workbench.stats import similarity_matrices

    layers = load_layers(args.tokens, args.seed)
    L, (n, d) = len(layers), layers[0].shape
    rss0 = vm_rss_mib()
    reset_hwm()
    ours, w_ours, c_ours = timed("ours: similarity_matrices(metrics='cka')", similarity_matrices, layers,
                                 metrics="cka", precision="float32")
    peak = vm_hwm_mib() - rss0
    ours = ours["cka"]
    bank_mib = n * L * d * 4 / 2**20
    naive, w_naive, c_naive = timed(f"naive, feature space: {L * L} pairs", naive_matrix, layers)
    rows = [("ours (bank + upper-triangle cross-products)", w_ours, c_ours, ""),
            ("naive per pair, feature space (every pair)", w_naive, c_naive, f"{c_naive / c_ours:.1f}x")]
    diff = float(np.abs(naive - ours).max())
    if args.gram_pairs:
        rng = np.random.default_rng(args.seed)
        pairs = [tuple(int(v) for v in x) for x in rng.integers(0, L, size=(args.gram_pairs, 2))]
        gram, w_gram, c_gram = timed(f"naive, Gram space: {len(pairs)} sampled pairs", naive_matrix, layers,
                                     pairs, gram_cka)
        scale = L * L / len(pairs)
        rows.append((f"naive per pair, Gram space ({len(pairs)} pairs, x {scale:.0f})", w_gram * scale,
                     c_gram * scale, f"{c_gram * scale / c_ours:.1f}x"))
        diff = max(diff, float(np.nanmax(np.abs(gram - ours))))
    print()
    print(f"| {L} x {L} CKA, {n} tokens x {d} dims, {args.threads} thread(s) | wall s | CPU s | CPU speed-up |")
    print("|---|---|---|---|")
    for label, w, c, ratio in rows:
        print(f"| {label} | {w:.1f} | {c:.1f} | {ratio} |")
    print()
    print(f"max |naive - ours| = {diff:.2e}; CKA of consecutive layers {np.diagonal(ours, 1).mean():.4f} on average")
    print(f"peak memory above the loaded layers ({L * n * d * 4 / 2**20:.0f} MiB): {peak:.0f} MiB "
          f"(the centred bank: {bank_mib:.0f} MiB, plus float64 centring of one layer and one row of products)")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
