"""The GPU check: one prepared run of what can only be measured on a GPU (no network needed).

Five measurements, each independent (a failure is recorded and the next one runs):

1. the load check (hooked path and KV-cache path against plain transformers) in float32, bfloat16 and
   float16 for both built-in decoders, with each dtype's stated tolerance;
2. store extraction (all residual layers to disk) against a plain transformers forward with
   ``output_hidden_states`` on the same GPU, 256 texts x 128 tokens of smollm2-135m (target >= 0.9x);
3. the logit lens (``analyses.lenses``, chunked) against tuned-lens's ``LogitLens`` on the same states
   on the GPU: seconds and the largest difference of the per-layer mean KL;
4. tuned-lens training steps per second (1024 positions a step, all translators, bf16 autocast);
5. inversion seconds per sentence at the paper's B = K = 30 (minilm-l6 embedder, smollm2-135m proposer).

It needs only the built environment and the converted models (``make setup`` ran, and
``workbench models`` converted both decoders). Results go to ``--out`` as ``gpu_check.json`` and a
text table ``gpu_check.txt`` (the README's GPU table is made from it).

Run: benchmarks/gpu_check.sh [OUT]   (or, to try it on a CPU with small sizes:
     .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DECODERS = ("smollm2-135m", "gemma3-270m")
DTYPES = ("float32", "bfloat16", "float16")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_checks(device: str, quick: bool) -> list[dict]:
    from workbench.models import load_model

    rows = []
    for name in DECODERS:
        for dtype in DTYPES[:1] if quick else DTYPES:
            t0 = time.perf_counter()
            model = load_model(name, device=device, dtype=dtype)
            report = model.load_report
            rows.append({"model": name, "dtype": dtype, "load_s": round(time.perf_counter() - t0, 2),
                         **{k: report.get(k) for k in ("logprob_max_abs_diff", "kv_step_max_abs_diff",
                                                       "kv_greedy_match", "kv_cache_ok", "tolerance", "device")}})
            del model
            _free()
    return rows


def _texts(tokenizer, n: int) -> list[str]:
    from benchmarks.bench_store import texts_of_128_tokens

    return texts_of_128_tokens(tokenizer, n)


def extraction(device: str, quick: bool, tmp: Path) -> dict:
    import torch

    from workbench.data import TextDataset
    from workbench.models import load_model
    from workbench.store import ActivationStore

    n, batch = (16, 8) if quick else (256, 32)
    model = load_model("smollm2-135m", device=device)
    texts = _texts(model.tokenizer, n)
    ds = TextDataset.from_texts(texts, name="gpu-check")

    def plain() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, n, batch):
                enc = model.tokenizer(texts[start:start + batch], return_tensors="pt", padding=True)
                out = model.hf_model(**enc.to(model.input_device), output_hidden_states=True)
                assert len(out.hidden_states) == model.n_layers + 1
        _sync(device)
        return time.perf_counter() - t0

    def store(i: int) -> tuple[float, object]:
        t0 = time.perf_counter()
        entry = ActivationStore(root=tmp / f"store{i}").get_or_extract(model, ds, max_length=128, batch_size=batch)
        return time.perf_counter() - t0, entry

    plain()  # warm-up (kernels, allocator)
    t_plain = min(plain(), plain())
    t_store, entry = min(store(1), store(2), key=lambda r: r[0])
    result = {"model": model.fingerprint, "dtype": model.dtype, "texts": n, "tokens": entry.n_tokens,
              "batch": batch, "plain_tok_s": entry.n_tokens / t_plain, "store_tok_s": entry.n_tokens / t_store,
              "ratio": t_plain / t_store, "target": ">= 0.9x", "entry": str(entry.path)}
    del model
    _free()
    return result


def logit_lens(device: str, entry_path: str) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from analyses.lenses.core import CHUNK, Unembed, final_logprobs, stats_from_logprobs
    from analyses.lenses.training import states
    from workbench.models import load_model
    from workbench.store import ActivationStore

    model = load_model("smollm2-135m", device=device, dtype="float32")
    entry = ActivationStore(root=Path(entry_path).parent).open(Path(entry_path).name)
    hooks = model.resid_hooks()
    L = len(hooks) - 1
    unembed = Unembed.from_model(model)
    ours = np.zeros(L + 1)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, entry.n_tokens, CHUNK):
            idx = np.arange(start, min(start + CHUNK, entry.n_tokens))
            logp_f = final_logprobs(unembed, states(entry, hooks[L], idx, device))
            target = logp_f.argmax(-1)
            for layer in range(L + 1):
                logp = logp_f if layer == L else torch.log_softmax(unembed(states(entry, hooks[layer], idx, device)), -1)
                ours[layer] += float(stats_from_logprobs(logp, logp_f, target, 5).kl.sum())
    _sync(device)
    t_ours = time.perf_counter() - t0

    from tuned_lens import model_surgery
    from tuned_lens.nn import LogitLens

    model_surgery._transformer_lens_available = False  # TransformerLens 4 has no HookedTransformer (a probe only)
    plain = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32).to(model.input_device).eval()
    lens = LogitLens.from_model(plain)
    ref = np.zeros(L + 1)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(entry.n_texts):
            hs = torch.stack([torch.from_numpy(np.asarray(entry.text_activations(h, i))) for h in hooks]).to(
                model.input_device)
            logp = torch.stack([lens(hs[layer], layer) for layer in range(L + 1)]).float().log_softmax(-1)
            kl = (logp[-1].exp() * (logp[-1] - logp)).sum(-1)
            ref += kl.sum(-1).double().cpu().numpy()
    _sync(device)
    t_ref = time.perf_counter() - t0
    ours, ref = ours / entry.n_tokens, ref / entry.n_tokens
    del model, plain, lens
    _free()
    return {"positions": entry.n_tokens, "layers": L + 1, "ours_s": t_ours, "tuned_lens_LogitLens_s": t_ref,
            "speedup": t_ref / t_ours, "max_abs_diff_mean_kl": float(np.abs(ours - ref).max()),
            "mean_kl_ours": ours.round(4).tolist()}


def lens_training(device: str, quick: bool, tmp: Path) -> dict:
    from analyses.lenses.train import train_tuned_lens
    from workbench.data import load_dataset
    from workbench.models import load_model
    from workbench.store import ActivationStore

    steps = 4 if quick else 40
    model = load_model("smollm2-135m", device=device)
    ds = load_dataset("abstracts")
    meta = train_tuned_lens(model, ds, out_dir=tmp / "lens", store=ActivationStore(root=tmp / "lens_store"),
                            steps=steps, positions_per_step=256 if quick else 1024, max_texts=40 if quick else 340,
                            eval_every=steps, heldout_texts=4, heldout_positions=256, resume=False)
    del model
    _free()
    return {"steps": steps, "positions_per_step": 256 if quick else 1024, "autocast": meta["settings"]["autocast"],
            "train_s": meta["timings"]["train_s"], "steps_per_s": steps / meta["timings"]["train_s"]}


def inversion(device: str, quick: bool) -> dict:
    from workbench.analysis import run_analysis

    n = 1 if quick else 5
    params = {"beam_width": 30, "top_k": 30, "max_items": n}
    if quick:
        params.update(beam_width=4, top_k=4, max_steps=4, refine_steps=4)
    t0 = time.perf_counter()
    result = run_analysis("inversion", model="minilm-l6", data=str(ROOT / "sample_data" / "inversion_eval.txt"),
                          params=params, device=device)
    seconds = time.perf_counter() - t0
    table = result.table
    return {"sentences": n, "B": params["beam_width"], "K": params["top_k"], "seconds_per_sentence": seconds / n,
            "mean_cosine": float(table["cosine"].mean()) if "cosine" in table else None}


def _table(report: dict) -> str:
    lines = [f"GPU check on {report['gpu']} (torch {report['torch']}, CUDA {report['cuda']}), {report['date']}"]
    for row in report.get("load_check", []):
        lines.append(f"load check {row['model']:13s} {row['dtype']:9s} hooked log-prob diff "
                     f"{row['logprob_max_abs_diff']:.2e}, KV step diff {row['kv_step_max_abs_diff']:.2e} "
                     f"(tolerance {row['tolerance']}), greedy match {row['kv_greedy_match']}, ok {row['kv_cache_ok']}")
    if "extraction" in report:
        e = report["extraction"]
        lines.append(f"store extraction {e['store_tok_s']:.0f} tok/s vs plain forward {e['plain_tok_s']:.0f} tok/s: "
                     f"{e['ratio']:.2f}x (target {e['target']}; {e['dtype']}, batch {e['batch']})")
    if "logit_lens" in report:
        g = report["logit_lens"]
        lines.append(f"logit lens {g['ours_s']:.2f} s vs tuned-lens LogitLens {g['tuned_lens_LogitLens_s']:.2f} s "
                     f"({g['speedup']:.1f}x) over {g['positions']} positions x {g['layers']} layers; "
                     f"mean-KL difference {g['max_abs_diff_mean_kl']:.1e}")
    if "lens_training" in report:
        t = report["lens_training"]
        lines.append(f"tuned-lens training {t['steps_per_s']:.2f} steps/s ({t['positions_per_step']} positions a step, "
                     f"autocast {t['autocast']})")
    if "inversion" in report:
        v = report["inversion"]
        lines.append(f"inversion {v['seconds_per_sentence']:.1f} s per sentence at B = {v['B']}, K = {v['K']} "
                     f"(mean cosine {v['mean_cosine']:.3f} over {v['sentences']})")
    for name, error in report.get("errors", {}).items():
        lines.append(f"{name} FAILED: {error.splitlines()[-1]}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes, to try the script on a CPU")
    ap.add_argument("--out", default="gpu_check_out")
    args = ap.parse_args()
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"no GPU ({platform.processor() or 'CPU'})"
    report = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "device": args.device,
              "quick": args.quick, "date": time.strftime("%Y-%m-%d"), "errors": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        steps = [("load_check", lambda: load_checks(args.device, args.quick)),
                 ("extraction", lambda: extraction(args.device, args.quick, Path(tmp))),
                 ("logit_lens", lambda: logit_lens(args.device, report["extraction"]["entry"])),
                 ("lens_training", lambda: lens_training(args.device, args.quick, Path(tmp))),
                 ("inversion", lambda: inversion(args.device, args.quick))]
        for name, step in steps:
            print(f"[gpu_check] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                report[name] = step()
            except Exception:  # noqa: BLE001 - record it and go on with the next measurement
                report["errors"][name] = traceback.format_exc()
            print(f"[gpu_check] {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
            (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    text = _table(report)
    (out / "gpu_check.txt").write_text(text + "\n")
    print(text)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
