"""Train the project's attention-only induction model (``sample_data/models/attn-only-induction``).

A 4-layer, 8-head, attention-only transformer (d_model 64, head dim 8, RoPE, RMSNorm) trained on
repeated random token sequences ``[BOS] r r`` (``r`` uniform over 253 word tokens, |r| in [8, 50]),
so that it forms the induction circuit of Olsson et al. 2022 (arXiv 2209.11895): a previous-token
head in an early layer whose output the key of a later induction head reads (K-composition).

It is saved as an ordinary Hugging Face causal LM folder: a ``LlamaForCausalLM`` with
``intermediate_size=0`` (so every MLP outputs exactly zero and the model is attention-only), a
``tokenizers`` WordLevel tokenizer (``t0 .. t252`` plus ``<unk> <bos> <pad>``, whitespace split)
wrapped in ``PreTrainedTokenizerFast``, and ``workbench_model.json`` for the workbench's registry.

The shipped folder was built by this command (3000 steps took 838 s on one thread of a 2-core machine
shared with ~15 busy processes; the project rule is < 20 min on 2 cores)::

    nice -n 10 .venv/bin/python scripts/train_attn_only.py --steps 3000 --batch 32 --lr 3e-3 --seed 0 --threads 1

(these are the defaults; ``--out DIR`` writes elsewhere). It prints the final loss on the repeated
half and, per head, the previous-token, induction, duplicate-token and current-token attention
scores on 100 random ``[BOS] r r`` sequences of period 50 (:func:`workbench.hooked.repeat_scores_table`,
the scores the circuits analysis reports), through the workbench's own loading of the saved folder.
It imports only the workbench core, never an analysis back-end.

The shipped weights (seed 0) reach a repeated-half loss of 0.49 nats (first half 5.65; uniform 5.53).
Their circuit (``sample_data/circuits/ground_truth/induction_attn_only_induction.json``): previous-token
head L0H2, current-token heads L0H3 and L0H7, induction heads L1H2, L1H4, L1H5 (mean ablation of each
removes >= 4% of the clean-minus-unrepeated log-prob gap; every other head < 1%).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLE_DATA = ROOT / "sample_data"
DEFAULT_OUT = SAMPLE_DATA / "models" / "attn-only-induction"

N_WORDS = 253  # word tokens t0 .. t252; ids 3 .. 255
SPECIALS = ["<unk>", "<bos>", "<pad>"]
MIN_PERIOD, MAX_PERIOD = 8, 50


def build_tokenizer():
    """WordLevel tokenizer over ``t0 .. t252`` (ids 3..255) with ``<unk>=0 <bos>=1 <pad>=2``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for i in range(N_WORDS):
        vocab[f"t{i}"] = len(SPECIALS) + i
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<bos>",
        pad_token="<pad>",
        model_max_length=256,
    )


def build_model(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(SPECIALS) + N_WORDS,
        hidden_size=64,
        intermediate_size=0,  # no MLP: gate/up/down are 0-wide, the MLP output is exactly 0
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=2,
        attention_bias=False,
        mlp_bias=False,
    )
    return LlamaForCausalLM(cfg)


def repeated_batch(gen: torch.Generator, batch: int, period: int) -> torch.Tensor:
    """``[BOS] r r`` with r uniform over word ids; int64 [batch, 2*period+1]."""
    r = torch.randint(len(SPECIALS), len(SPECIALS) + N_WORDS, (batch, period), generator=gen)
    bos = torch.full((batch, 1), 1, dtype=torch.long)
    return torch.cat([bos, r, r], dim=1)


def print_attention_scores(folder: Path, n: int = 100, period: int = MAX_PERIOD, seed: int = 0) -> None:
    """Per-head attention-pattern scores of the saved model, loaded as the workbench loads it
    (``workbench.models.load_model``: a TransformerBridge over the plain model, load-checked)."""
    sys.path.insert(0, str(ROOT))
    from workbench.hooked import ordinary_token_ids, pad_right, repeat_scores_table, repeated_random_tokens
    from workbench.models import load_model

    model = load_model(str(folder), device="cpu", dtype="float32")
    seqs = repeated_random_tokens(ordinary_token_ids(model.tokenizer), n, period, bos=model.tokenizer.bos_token_id,
                                  seed=seed)
    hooks = model.hook_names("attn_pattern")
    ids, _ = pad_right(seqs)  # all of one length: no padding
    patterns = model.run_hooks(ids, torch.ones_like(ids), hooks)
    scores = repeat_scores_table(lambda layer, i: patterns[hooks[layer]][i].numpy(), n, len(hooks), period)
    print(scores.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def train(args, t0: float):
    """The training loop: AdamW, 100 warm-up steps then cosine decay, one random period per step."""
    model = build_model(args.seed)
    model.train()
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = 100

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    for step in range(args.steps):
        period = int(torch.randint(MIN_PERIOD, MAX_PERIOD + 1, (1,), generator=gen))
        x = repeated_batch(gen, args.batch, period)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(x).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            with torch.no_grad():
                rep = logits[:, period:]  # predictions of positions period+1 .. 2*period (repeated half)
                rep_loss = torch.nn.functional.cross_entropy(
                    rep.reshape(-1, rep.shape[-1]), x[:, period + 1 :].reshape(-1)
                )
            print(f"step {step:5d}  loss {loss.item():.4f}  repeated-half loss {rep_loss.item():.4f}  "
                  f"{time.time() - t0:.0f}s", flush=True)
    model.eval()
    return model


def evaluate(model) -> tuple[float, float]:
    """Mean loss on the first and on the repeated half of 200 fresh sequences of period 50."""
    egen = torch.Generator().manual_seed(12345)
    x = repeated_batch(egen, 200, MAX_PERIOD)
    with torch.no_grad():
        logits = model(x).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
        ).view(x.shape[0], -1)
    return ce[:, : MAX_PERIOD].mean().item(), ce[:, MAX_PERIOD:].mean().item()


def save(model, tok, args, train_s: float, first_half: float, rep_half: float) -> Path:
    """The Hugging Face folder plus ``workbench_model.json`` for the registry."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    meta = {
        "name": "attn-only-induction",
        "kind": "decoder",
        "description": (
            "4-layer, 8-head attention-only transformer (Llama layout with intermediate_size=0, "
            "d_model 64, RoPE) trained on repeated random token sequences; forms previous-token "
            "-> induction head circuits. Vocabulary: t0..t252 plus <unk> <bos> <pad>."
        ),
        "trained_by": "scripts/train_attn_only.py",
        "training": {
            "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
            "periods": [MIN_PERIOD, MAX_PERIOD], "train_seconds": round(train_s, 1),
            "final_loss_repeated_half": round(rep_half, 4),
            "final_loss_first_half": round(first_half, 4),
        },
    }
    (out / "workbench_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved to {out}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    t0 = time.time()
    tok = build_tokenizer()
    model = train(args, t0)
    train_s = time.time() - t0
    first_half, rep_half = evaluate(model)
    print(f"final: loss first half {first_half:.4f} (uniform = {math.log(N_WORDS):.4f}), "
          f"repeated half {rep_half:.4f}; trained in {train_s:.0f}s")
    print_attention_scores(save(model, tok, args, train_s, first_half, rep_half))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
