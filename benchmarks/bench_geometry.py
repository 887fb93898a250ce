"""Benchmark of the geometry estimators (workbench.stats) against scikit-dimension.

1. TwoNN and MLE (k=20) on 20,000 x 576 float32 points: ours (torch float32 candidates, threshold
   filtered, + exact float64 refinement; see ``workbench/stats/neighbors.py``) vs
   scikit-dimension 0.5.0 on the same array in the same run; times, speed ratios (CPU and wall)
   and relative difference of the values.
2. SVD anisotropy of 200,000 x 576 float32 points: streamed Gram / eigvalsh (float64 and the
   float32-product variant) vs a full ``torch.linalg.svd`` as LLM-Microscope's
   ``calculate_anisotropy_torch`` does it.

Single-threaded by default (torch and BLAS), as the development machines are shared; pass
``--threads N`` to change. Times are CPU seconds of the process (``time.process_time``), which on
one thread equal wall time on an idle machine and stay meaningful on a loaded one; the wall time of
every step is printed as it finishes and in the table (with ``--threads N`` > 1 compare wall times).
Run: ``nice -n 10 .venv/bin/python benchmarks/bench_geometry.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def manifold_points(n: int, d: int, intrinsic: int, seed: int) -> np.ndarray:
    """Points near a curved ``intrinsic``-dim manifold in R^d, float32 (ID well above 1, no ties)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, intrinsic))
    feats = np.hstack([z, np.sin(z), z**2 / 4])
    A = rng.standard_normal((feats.shape[1], d)) / np.sqrt(feats.shape[1])
    return (feats @ A + 0.01 * rng.standard_normal((n, d))).astype(np.float32)


def timed(label: str, fn, *args, **kwargs):
    """Run and time one step: returns (result, (CPU seconds of this process, wall seconds)).

    Single-threaded, CPU time is what the work costs even on a shared, overloaded machine; wall
    time is what a user waits (with several threads, CPU time adds the threads up)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    print(f"  {label:40s} cpu {cpu:8.2f} s   wall {wall:8.2f} s", flush=True)
    return out, (cpu, wall)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--n-svd", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=576)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-skdim", action="store_true")
    p.add_argument("--skip-ref-svd", action="store_true", help="skip the full-SVD reference")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    from workbench.stats import mle, svd_anisotropy, twonn

    rows = []
    print(f"threads: torch {torch.get_num_threads()}, BLAS {args.threads}; load avg {os.getloadavg()[0]:.1f}")
    with threadpool_limits(args.threads):
        X = manifold_points(args.n, args.dim, 8, seed=0)
        print(f"kNN data: {X.shape} {X.dtype}")
        ours_twonn, t_twonn = timed("ours TwoNN", twonn, X)
        ours_mle, t_mle = timed("ours MLE k=20", mle, X, k=20)
        ref_twonn = ref_mle = float("nan")
        t_ref_twonn = t_ref_mle = (float("nan"), float("nan"))
        if not args.skip_skdim:
            try:
                import skdim

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est, t_ref_twonn = timed("skdim TwoNN", skdim.id.TwoNN().fit, X)
                    ref_twonn = est.dimension_
                    est, t_ref_mle = timed("skdim MLE", skdim.id.MLE().fit, X)
                    ref_mle = est.dimension_
            except ImportError:
                print("scikit-dimension not installed: reference columns are NaN")
        rows.append(("TwoNN (discard 0.1)", f"{args.n}x{args.dim}", ours_twonn, t_twonn, ref_twonn, t_ref_twonn))
        rows.append(("MLE k=20 (MacKay-Ghahramani)", f"{args.n}x{args.dim}", ours_mle, t_mle, ref_mle, t_ref_mle))
        del X

        Y = manifold_points(args.n_svd, args.dim, 8, seed=1)
        Y += 3.0  # a common offset, as hidden states have
        a64, t64 = timed("ours SVD anisotropy float64", svd_anisotropy, Y)
        a32, t32 = timed("ours SVD anisotropy float32", svd_anisotropy, Y, precision="float32")
        ref_a, t_ref_a = float("nan"), (float("nan"), float("nan"))
        if not args.skip_ref_svd:

            def full_svd(E):  # calculate_anisotropy_torch's computation
                Et = torch.from_numpy(E)
                Et = Et - Et.mean(dim=0, keepdim=True)
                S = torch.linalg.svd(Et, full_matrices=False)[1].double()
                ev = S * S / (Et.shape[0] - 1)
                return float(ev.max() / ev.sum())

            ref_a, t_ref_a = timed("full torch SVD", full_svd, Y)
        rows.append(("SVD anisotropy (Gram float64)", f"{args.n_svd}x{args.dim}", a64, t64, ref_a, t_ref_a))
        rows.append(("SVD anisotropy (Gram float32)", f"{args.n_svd}x{args.dim}", a32, t32, ref_a, t_ref_a))

    head = (
        f"{'estimator':32s} {'data':>11s} {'ours':>12s} {'reference':>12s} {'rel.diff':>9s} "
        f"{'cpu_ours':>9s} {'cpu_ref':>9s} {'speedup':>8s} {'wall_ours':>9s} {'wall_ref':>9s} {'speedup':>8s}"
    )
    print()
    print(f"times: seconds, {args.threads} thread(s); cpu = CPU time of the process, wall = elapsed")
    print("reference: scikit-dimension 0.5.0 for TwoNN/MLE; full torch.linalg.svd (float32) for anisotropy")
    print(head)
    print("-" * len(head))
    for name, shape, v, t, rv, rt in rows:
        rel = abs(v - rv) / abs(rv) if np.isfinite(rv) else float("nan")
        cols = []
        for i in (0, 1):  # cpu, wall
            speed = rt[i] / t[i] if np.isfinite(rt[i]) else float("nan")
            cols.append(f"{t[i]:9.2f} {rt[i]:9.2f} {speed:7.2f}x")
        print(f"{name:32s} {shape:>11s} {v:12.6f} {rv:12.6f} {rel:9.1e} {cols[0]} {cols[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
