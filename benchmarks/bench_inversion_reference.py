"""Our zero-shot inversion search against a local transcription of the official one.

The official code is ``collinzrj/adversarial_decoding`` (ZSInvert; docs/methods.md, "Embedding
inversion"). It is not shipped here: transcribe its search (``llm/llm_wrapper.py``,
``llm/beam_search.py``, ``strategies/emb_inv_decoding.py``, ``scorers/*``, ``utils/*`` and the stage
loop of ``experiments/emb_inv_experiment.py``) into one Python file, adapted only to run offline with
our models, and pass its path. The file must define::

    invert(target, model, tokenizer, encoder, *, beam_width, top_k, top_p, max_steps, refine_steps,
           stages, repetition_penalty, prompt, refine_prompt) -> (text, cosine)

with ``target`` a normalised float32 vector, ``model``/``tokenizer`` the proposer (plain
transformers) and ``encoder`` an object with SentenceTransformer's ``encode(texts,
convert_to_tensor=True, normalize_embeddings=True)`` (the real SentenceTransformer over the
embedder's folder when sentence-transformers is installed, else an equivalent over
:func:`workbench.hooked.embed_texts`).

Both searches get the same targets (the embedder's sentence embeddings, from the activation store),
the same proposer, embedder, prompts and budget (B, K, steps per stage, 2 stages, penalty 1.5,
top_p 1, no early stop). Sides (``--sides``): ``ours`` (our search at ``--precision``, default
auto: bf16 where the CPU/GPU does bf16 natively, reported cosines recomputed in fp32), ``ours-fp32``
(our search in fp32, the official code's arithmetic: isolates the algorithm from the arithmetic) and
``official``. They run interleaved, sentence by sentence (the order rotates), in one process with
the same torch threads, so machine load hits all alike. For each side it prints the mean cosine
(recomputed by our fp32 embedder for the returned text), mean token-set F1, mean sentence BLEU
(sacrebleu, 0-100), and seconds per sentence: wall clock and CPU time of the process
(``time.process_time``; with one thread the work done, robust to other load on a shared machine).
Checks, for each of our sides against the official one: |Δ mean cosine| <= 0.02 and CPU-time
ratio >= 3.

Run (a small setting: 3 sentences per set, B = K = 10, 8 + 8 steps; a few minutes on one core)::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_inversion_reference.py \\
        /tmp/zsinvert/official_zsinvert.py --per-set 3 --steps 8 --refine-steps 8 --threads 1 [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = {"eval": ROOT / "sample_data" / "inversion_eval.txt", "general": ROOT / "sample_data" / "inversion_general.txt"}


def load_transcription(path: str):
    spec = importlib.util.spec_from_file_location("zsinvert_transcription", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    if not callable(getattr(module, "invert", None)):
        raise SystemExit(f"{path} defines no invert(target, model, tokenizer, encoder, ...)")
    return module


class EmbedTextsEncoder:
    """SentenceTransformer.encode over workbench.hooked.embed_texts (batch 32, length-sorted, as ST)."""

    def __init__(self, model, max_length: int):
        self.model, self.max_length = model, max_length

    def encode(self, texts, convert_to_tensor=True, normalize_embeddings=True, batch_size=32, **_):
        import torch

        from workbench.hooked import embed_texts

        single = isinstance(texts, str)
        out = embed_texts(self.model, [texts] if single else list(texts), batch_size=batch_size,
                          max_length=self.max_length)
        if normalize_embeddings:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out[0] if single else out


def make_encoder(emb_model, max_length: int, kind: str):
    folder = Path(str(getattr(emb_model.hf_model, "name_or_path", "")))
    if kind in ("auto", "st") and (folder / "modules.json").exists():
        try:
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(folder), device="cpu")
            st.max_seq_length = max_length
            return st, "sentence-transformers"
        except ImportError:
            if kind == "st":
                raise
    if kind == "st":
        raise SystemExit(f"{folder} is not a sentence-transformers folder")
    return EmbedTextsEncoder(emb_model, max_length), "embed_texts (ST-equivalent)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("transcription", help="path of the local transcription of the official search (a .py file)")
    ap.add_argument("--per-set", type=int, default=10, help="first N sentences of each set")
    ap.add_argument("--sets", default="eval,general")
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--refine-steps", type=int, default=16)
    ap.add_argument("--penalty", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--encoder", choices=["auto", "st", "embed_texts"], default="auto",
                    help="the official side's encoder: real SentenceTransformer (auto: when installed) or embed_texts")
    ap.add_argument("--proposer", default="smollm2-135m")
    ap.add_argument("--precision", default="auto", help="our side's precision: auto, fp32 or bf16")
    ap.add_argument("--sides", default="ours,ours-fp32,official", help="comma list of ours, ours-fp32, official")
    ap.add_argument("--json", default=None, help="write every sentence's result here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from analyses.inversion.metrics import bleu, token_set_f1
    from analyses.inversion.search import REFINE_PROMPT, STAGE1_PROMPT, Embedder, Proposer, SearchConfig, invert
    from analyses.inversion.targets import store_targets
    from workbench.models import load_model

    official = load_transcription(args.transcription)
    torch.set_num_threads(args.threads)
    emb_model, prop_model = load_model("minilm-l6"), load_model(args.proposer)
    embedder = Embedder(emb_model, precision="fp32")  # the scorer of every side's output
    sides = [x.strip() for x in args.sides.split(",") if x.strip()]
    if "official" not in sides or not set(sides) <= {"ours", "ours-fp32", "official"}:
        raise SystemExit("--sides: official plus ours and/or ours-fp32")
    ours_sides = {"ours": (Embedder(emb_model, precision=args.precision), Proposer(prop_model, precision=args.precision)),
                  "ours-fp32": (embedder, Proposer(prop_model, precision="fp32"))}
    ours_sides = {k: v for k, v in ours_sides.items() if k in sides}
    encoder, encoder_kind = make_encoder(emb_model, embedder.max_length, args.encoder)
    cfg = SearchConfig(beam_width=args.beam, top_k=args.topk, max_steps=args.steps, refine_steps=args.refine_steps,
                       stages=2, repetition_penalty=args.penalty, threshold=1.01)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; transcription {args.transcription}")
    print(f"budget: proposer {args.proposer}, embedder minilm-l6, B = {args.beam}, K = {args.topk}, "
          f"{args.steps} + {args.refine_steps} steps, penalty {args.penalty}, top_p 1; official encoder: {encoder_kind}")
    print("ours: " + ", ".join(f"{k} = embedder {e.precision} / proposer {p.precision}" for k, (e, p) in ours_sides.items()))

    def cosine(text: str, target) -> float:
        return float(torch.nn.functional.cosine_similarity(embedder.encode([text]), torch.as_tensor(target)[None])[0])

    rows = []
    for set_name in args.sets.split(","):
        sents = [s for s in SETS[set_name].read_text(encoding="utf-8").splitlines() if s.strip()][: args.per_set]
        targets = store_targets(emb_model, sents, [None], embedder.max_length)[None]
        for i, (sent, vec) in enumerate(zip(sents, targets)):
            vec = vec / np.linalg.norm(vec)
            k = len(rows) % len(sides)
            order = sides[k:] + sides[:k]
            row = {"set": set_name, "i": i, "target": sent}
            for side in order:
                w0, c0 = time.perf_counter(), time.process_time()
                if side in ours_sides:
                    side_embedder, side_proposer = ours_sides[side]
                    text = invert(vec, side_proposer, side_embedder, cfg).text
                else:
                    text, _ = official.invert(
                        torch.tensor(vec), prop_model.hf_model, prop_model.tokenizer, encoder,
                        beam_width=args.beam, top_k=args.topk, top_p=1.0, max_steps=args.steps,
                        refine_steps=args.refine_steps, stages=2, repetition_penalty=args.penalty,
                        prompt=STAGE1_PROMPT, refine_prompt=REFINE_PROMPT)
                row[side] = {"text": text, "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
                             "cosine": cosine(text, vec), "token_f1": token_set_f1(sent, text),
                             "bleu": bleu(sent, text)}
            rows.append(row)
            print(f"[{set_name} {i}] " + " | ".join(f"{side} {row[side]['cosine']:.3f} ({row[side]['cpu_s']:.1f} cpu-s)"
                                                     for side in sides) + f" | {sent[:50]!r}", flush=True)

    keys = ("cosine", "token_f1", "bleu", "wall_s", "cpu_s")

    def summary(subset):
        return {side: {k: float(np.mean([r[side][k] for r in subset])) for k in keys} for side in sides}

    print()
    print("| sentences | side | mean cosine | mean token F1 | mean BLEU | wall s / sentence | CPU s / sentence |")
    print("|---|---|---|---|---|---|---|")
    groups = {name: [r for r in rows if r["set"] == name] for name in args.sets.split(",")}
    groups["all"] = rows
    for name, subset in groups.items():
        s = summary(subset)
        for side in sides:
            print(f"| {name} ({len(subset)}) | {side} | {s[side]['cosine']:.3f} | {s[side]['token_f1']:.3f} | "
                  f"{s[side]['bleu']:.1f} | {s[side]['wall_s']:.1f} | {s[side]['cpu_s']:.1f} |")
    s = summary(rows)
    checks = {}
    print()
    for side in ours_sides:
        d_cos = s[side]["cosine"] - s["official"]["cosine"]
        ratio_cpu = s["official"]["cpu_s"] / s[side]["cpu_s"]
        ratio_wall = s["official"]["wall_s"] / s[side]["wall_s"]
        same = sum(r[side]["text"] == r["official"]["text"] for r in rows)
        checks[side] = {"d_cosine": d_cos, "ratio_cpu": ratio_cpu, "ratio_wall": ratio_wall, "same_text": same}
        print(f"{side}: mean cosine {side} - official {d_cos:+.3f} (|Δ| <= 0.02: {'PASS' if abs(d_cos) <= 0.02 else 'FAIL'}); "
              f"speed official / {side}: CPU {ratio_cpu:.2f}x, wall {ratio_wall:.2f}x (CPU >= 3x: "
              f"{'PASS' if ratio_cpu >= 3 else 'FAIL'}); identical text on {same} of {len(rows)} sentences")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "encoder": encoder_kind, "rows": rows,
                                               "summary": s, "checks": checks}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
