"""Tuned-lens training step: the chunked all-layer loss against the official loop's per-layer loss.

Both compute the tuned-lens loss ``KL(p_L || p_l)`` of every layer on the same stored states of
``--model`` (default ``smollm2-135m``; abstracts, the store) and leave the translators' gradients; the ratio is taken in
the same run, on the same positions and the same (randomly perturbed) translators.

- baseline: the formulation of tuned-lens 0.2.0's ``train_loop.py`` (and of this project's loop before
  the chunked loss): per layer, logits ``[positions, V]`` of ``lens(h)`` under autocast, ``log_softmax``,
  the KL against the model's log-probabilities, one backward per layer;
- ours: ``analyses.lenses.training.train_step`` (``layers_kl_to_final``: chunks of positions, ``p_L``
  shared by the layers, gradient ``(q − p_L) W_Uᵀ`` in closed form).

Each runs in its own process. Printed: seconds per step (median of ``--repeats``), the ratio, the
agreement of the per-layer losses and of the gradients (relative norm of the difference), and each one's
working memory: the peak of the process's anonymous memory (RssAnon, sampled every 10 ms) during its
steps above what it held before them (the store's memory-mapped states are file pages, not counted).

Run: .venv/bin/python benchmarks/bench_lens_training.py [--model smollm2-135m] [--positions 1024] [--autocast auto] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _run_variant(args) -> None:
    """One variant in this process: times its steps, saves its losses and gradient under ``args.out``."""
    import threading

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from analyses.lenses.core import TunedLens, Unembed, final_logprobs
    from analyses.lenses.training import _autocast, states, train_step
    from workbench.data import load_dataset
    from workbench.hardware import native_bf16
    from workbench.models import load_model
    from workbench.store import ActivationStore

    model = load_model(args.model)
    hooks = model.resid_hooks()
    entry = ActivationStore().get_or_extract(model, load_dataset("abstracts").subset(args.texts), hooks,
                                             max_length=128)
    unembed = Unembed.from_model(model)
    autocast = args.autocast if args.autocast != "auto" else ("bfloat16" if native_bf16(unembed.device) else "none")
    L = len(hooks) - 1
    torch.manual_seed(0)
    lens = TunedLens(L, unembed.d_model)
    with torch.no_grad():  # a trained-looking lens: the cost does not depend on it, the agreement might
        lens.weight.normal_(std=0.02)
        lens.bias.normal_(std=0.1)
    idx = np.sort(np.random.default_rng(0).choice(entry.n_tokens, args.positions, replace=False))
    for hook in hooks:  # map the states in before measuring
        states(entry, hook, idx)

    def baseline() -> list[float]:
        with torch.no_grad():
            logp_final = final_logprobs(unembed, states(entry, hooks[L], idx))
        losses = []
        for layer in range(L):
            h = states(entry, hooks[layer], idx)
            with _autocast(autocast, unembed.device):
                logp = torch.log_softmax(unembed(lens.transform(h, layer)).float(), dim=-1)
                loss = (logp_final.exp() * (logp_final - logp)).sum(-1).mean()
            loss.backward()
            losses.append(loss.item())
        return losses

    def ours() -> list[float]:
        return train_step(unembed, entry, hooks, lens, idx, autocast)

    step = ours if args.variant == "ours" else baseline
    before, peak, done = _rss_anon_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], _rss_anon_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times = []
    for _ in range(args.repeats):
        lens.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        losses = step()
        times.append(time.perf_counter() - t0)
    done.set()
    sampler.join()
    out = Path(args.out)
    np.save(out / f"{args.variant}-losses.npy", np.array(losses))
    np.save(out / f"{args.variant}-grad.npy",
            torch.cat([lens.weight.grad.flatten(), lens.bias.grad.flatten()]).numpy())
    (out / f"{args.variant}.json").write_text(json.dumps(
        {"s": statistics.median(times), "working_mib": peak[0] - before, "autocast": autocast, "layers": L}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a decoder (its vocabulary sets the cost)")
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--texts", type=int, default=40, help="abstracts whose states are sampled")
    parser.add_argument("--autocast", default="auto", help="auto | bfloat16 | none (auto: bf16 where native)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return _run_variant(args)

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("ours", "baseline"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--out", tmp], check=True)
        res = {v: json.loads((Path(tmp) / f"{v}.json").read_text()) for v in ("ours", "baseline")}
        la, lb = (np.load(Path(tmp) / f"{v}-losses.npy") for v in ("ours", "baseline"))
        ga, gb = (np.load(Path(tmp) / f"{v}-grad.npy") for v in ("ours", "baseline"))
    a, b = res["ours"], res["baseline"]
    loss_rel = float(np.max(np.abs(la - lb) / lb))
    grad_rel = float(np.linalg.norm(ga - gb) / np.linalg.norm(gb))
    print(f"{args.model}, {args.positions} positions x {a['layers']} layers, autocast {a['autocast']}, "
          f"{args.threads} threads, median of {args.repeats}, each in its own process")
    print("| step | seconds | working memory (peak RssAnon above the start, MiB) |")
    print("|---|---:|---:|")
    print(f"| per-layer logits + autograd (tuned-lens's loop) | {b['s']:.2f} | {b['working_mib']:.0f} |")
    print(f"| chunked, closed-form gradient (ours) | {a['s']:.2f} | {a['working_mib']:.0f} |")
    print(f"ratio: {b['s'] / a['s']:.2f}x less time, {b['working_mib'] / max(a['working_mib'], 1):.1f}x less working "
          f"memory; per-layer loss agrees to {loss_rel:.1e} (relative, largest layer), gradient to {grad_rel:.1e} "
          "(relative norm)")


if __name__ == "__main__":
    main()
