"""Zero-shot embedding inversion by adversarial decoding (ZSInvert; Zhang, Morris, Shmatikov,
arXiv 2504.00147, repo ``collinzrj/adversarial_decoding``).

A causal LM (the *proposer*, in its chat format with a short instruction) proposes next tokens; a
sentence-level beam search keeps the ``beam_width`` partial texts whose embedding is closest (cosine)
to the target. Per step, for every beam (all beams have the same number of generated tokens):

1. next-token logits from the proposer (one batched forward of the ``B`` newest tokens on the shared,
   per-beam KV cache; the prompt prefix is run once and its cache expanded to the beams);
2. CTRL repetition penalty over every token in the context, prompt included (``penalize_prompt``,
   the repo's; off: the generated tokens only): positive logits are divided by
   ``repetition_penalty``, negative ones multiplied;
3. banned tokens (newlines, quotes, ``@``, NBSP, special/added tokens, EOS) get -1e10; EOS is never
   chosen, so each stage produces at most ``max_steps`` proposer tokens;
4. proposals = top-k ∩ top-p of the softmax;
5. the ``B·K`` extensions are decoded to text, de-duplicated, embedded in batches by the embedder and
   scored by ``cos(φ(text), e)``; the top ``B`` survive (``randomness``: the top ``n_keep_top`` plus a
   seeded random sample of the rest, as the repo's ``randomness=True``).

Stage 2 restarts from an empty text with the prompt ``"write a sentence similar to this: {best}"``;
every further stage (``stages`` > 2; the repo's experiment runs 5) restarts the same way from the best
text so far (or the ``refine_pool`` best stage results, one per line); without ``randomness`` a restart
whose prompt was already run (the best text did not change) would repeat that stage exactly, so the
search ends there. Unlike the repo, which returns
the final beam's best, we return the best text scored at *any* step of any stage (shorter prefixes are
valid texts), so the reported cosine never decreases over steps.

Arithmetic (``precision``): ``fp32`` is the repo's; ``bf16`` scores candidates under bf16 autocast
and runs the proposer as a bf16 copy, about 2.3x faster per sentence on a CPU with native bf16
(``avx512_bf16``/``amx_bf16``); the candidates' cosines move by about 1e-4, and the reported
cosines (every stage's best, hence the result) are recomputed in fp32. ``auto`` (default) picks
bf16 where the hardware does it natively. Compared with a transcription of the repo's search in
``benchmarks/bench_inversion_reference.py``.

Embeddings: :class:`Embedder` embeds the candidates through :func:`workbench.hooked.embed_texts`
(the core's one path for new texts); ``layer=None`` uses the model's own sentence embedding
(mean pooling + normalisation for minilm-l6), ``layer=l`` the attention-masked mean over tokens of
hidden state ``l`` (0 = embedding output). Targets of known texts come from the activation store
(:mod:`.targets`), which tokenises and pools the same way, so target and candidates are always
embedded alike (the repo embeds the target without special tokens and candidates with them; we do
not). See docs/methods.md, "Embedding inversion".
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from workbench.errors import WorkbenchError
from workbench.hooked import embed_texts

from .candidates import BANNED_SUBSTRINGS, apply_repetition_penalty, banned_token_mask, propose  # noqa: F401
from .precision import PRECISIONS, bf16_copy, native_bf16, resolve_precision  # noqa: F401

STAGE1_PROMPT = "Write a sentence."
REFINE_PROMPT = "write a sentence similar to this: {text}"
class Embedder:
    """Embeds candidate texts as the targets are embedded: ``encode(texts) -> float32 [N, D]`` (torch).

    ``layer=None``: the model's sentence embedding (its pooling and normalisation); ``layer=l``:
    mean over real tokens of ``hidden_states[l]`` (0 = embeddings, l = after block l). Texts are
    tokenized with the tokenizer's defaults (special tokens included), truncated at ``max_length``.

    ``precision="bf16"`` scores the search's candidates under bf16 autocast (about 2.5x faster on a
    CPU with native bf16; cosines within about 1e-4 of fp32); ``encode(..., exact=True)`` is always
    fp32, and the reported cosines of :func:`invert` are recomputed that way. ``auto`` (the default):
    bf16 where :func:`native_bf16`, else fp32.
    """

    def __init__(self, model, layer: int | None = None, batch_size: int = 128, max_length: int = 128,
                 precision: str = "auto"):
        if model.kind != "encoder":
            raise WorkbenchError(f"{model.name} is a {model.kind}; the inversion target must come from an "
                                 "encoder / sentence embedder such as minilm-l6.")
        if layer is not None and not 0 <= int(layer) <= model.n_layers:
            raise WorkbenchError(f"layer must be between 0 and {model.n_layers} for {model.name} "
                                 f"(or empty for its sentence embedding), got {layer}.")
        self.model = model
        self.layer = None if layer is None else int(layer)
        self.batch_size = int(batch_size)
        self.max_length = int(min(max_length, model.max_length))
        self.device = torch.device(getattr(model, "input_device", "cpu"))
        self.precision = resolve_precision(precision, self.device)
        self.calls = 0  # forward passes, for the benchmark

    @property
    def dim(self) -> int:
        return int(self.model.d_model)

    @property
    def normalizes(self) -> bool:
        return self.layer is None and bool(self.model.sentence_normalize)

    def encode(self, texts: list[str], batch_size: int | None = None, exact: bool = False) -> torch.Tensor:
        """Embed candidate texts as the targets were embedded (the core's one embedding path); under
        bf16 autocast when the precision is bf16 and not ``exact``. Returns float32."""
        self.calls += -(-len(texts) // int(batch_size or self.batch_size)) if texts else 0
        fast = self.precision == "bf16" and not exact
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if fast else nullcontext()
        with ctx:
            out = embed_texts(self.model, texts, layer=self.layer, batch_size=int(batch_size or self.batch_size),
                              max_length=self.max_length)
        return out.float()


@dataclass
class SearchConfig:
    """Beam-search settings (repo defaults: B = K = 30, 32 steps, top_p 1, penalty 1.5; ours B = K = 10).

    ``threshold``: stop as soon as the best cosine reaches it. ``randomness``: keep the top
    ``n_keep_top`` and a random sample (``seed``) of the other candidates. ``refine_prompt`` holds
    ``{text}``, replaced at the start of each stage after the first by the best text so far or, with
    ``refine_pool = n > 1``, by the ``n`` best distinct stage results so far (best first), one per
    line: a zero-shot stand-in for the paper's trained correction stage, which reads several
    candidates. ``penalize_prompt=False`` (a deviation) penalises only the generated tokens: the
    repo's penalty also covers the prompt, so a restart is pushed away from the very tokens of the text
    it is asked to paraphrase.
    """

    beam_width: int = 10
    top_k: int = 10
    top_p: float = 1.0
    repetition_penalty: float = 1.5
    penalize_prompt: bool = True  # the repo's: the penalty covers the prompt's tokens too
    max_steps: int = 32
    refine_steps: int | None = None  # None: max_steps
    stages: int = 2
    threshold: float = 0.99
    randomness: bool = False
    n_keep_top: int = 5
    prompt: str = STAGE1_PROMPT
    refine_prompt: str = REFINE_PROMPT
    refine_pool: int = 1
    seed: int = 0

    def check(self) -> None:
        for name in ("beam_width", "top_k", "max_steps", "stages", "refine_pool"):
            if int(getattr(self, name)) < 1:
                raise WorkbenchError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 < self.top_p <= 1:
            raise WorkbenchError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.repetition_penalty <= 0:
            raise WorkbenchError(f"repetition_penalty must be > 0, got {self.repetition_penalty}.")
        if "{text}" not in self.refine_prompt:
            raise WorkbenchError("refine_prompt must contain {text} (where the best first-stage text goes).")


@dataclass
class StepInfo:
    """What the progress callback gets after every step."""

    stage: int
    step: int
    total_steps: int
    best_text: str
    best_cosine: float
    stage_best_text: str
    stage_best_cosine: float
    n_candidates: int


@dataclass
class InversionResult:
    text: str
    cosine: float
    steps: int  # proposer steps run over all stages
    seconds: float
    stage_texts: list[str] = field(default_factory=list)
    stage_cosines: list[float] = field(default_factory=list)
    history: list[float] = field(default_factory=list)  # best-so-far cosine after each step
    n_embedded: int = 0


class Proposer:
    """A causal LM in its chat format; keeps one KV cache row per beam.

    ``precision="bf16"``: the proposer runs as a bf16 copy of the model (half the weight traffic per
    step, about 2x faster on a CPU with native bf16); its logits round to within about 0.3 of fp32's, so
    near-ties among the top-k proposals can swap. ``auto`` (the default): bf16 where
    :func:`native_bf16`, else fp32.
    """

    def __init__(self, model, precision: str = "auto"):
        if model.kind != "decoder":
            raise WorkbenchError(f"The proposer must be a decoder (causal LM), {model.name} is a {model.kind}.")
        model.require_kv_cache("the inversion proposer")
        self.model = model
        device = model.hf_model.get_input_embeddings().weight.device
        self.precision = resolve_precision(precision, device)
        # plain transformers: its KV-cache path is checked on every load (the copy shares its code)
        self.hf = bf16_copy(model.hf_model) if self.precision == "bf16" else model.hf_model
        self.tokenizer = model.tokenizer
        self.device = self.hf.get_input_embeddings().weight.device
        vocab = int(self.hf.get_output_embeddings().weight.shape[0])
        self.banned = banned_token_mask(self.tokenizer, vocab)

    def prompt_ids(self, instruction: str) -> torch.Tensor:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": instruction}],
                                          add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:  # no chat format: the instruction then a newline
            ids = tok(instruction + "\n")["input_ids"]
        return torch.tensor([list(ids)], dtype=torch.long)

    @torch.inference_mode()
    def start(self, prompt: torch.Tensor):
        """Run the prompt once: (logits of the next token [1, V], cache of batch 1)."""
        # the proposer runs on its model's device; the [B, V] logits come back to the CPU for the search
        # logits_to_keep=1: the vocabulary projection of the last prompt position only
        out = self.hf(input_ids=prompt.to(self.device), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().cpu(), out.past_key_values

    @torch.inference_mode()
    def step(self, cache, new_tokens: torch.Tensor, beam_idx: torch.Tensor):
        """Select cache rows ``beam_idx`` (expanding the prompt cache on the first step), append
        ``new_tokens`` [B], and return (next logits [B, V], cache)."""
        cache.reorder_cache(beam_idx.to(self.device))
        past = cache.get_seq_length()
        B = new_tokens.shape[0]
        attn = torch.ones(B, past + 1, dtype=torch.long, device=self.device)
        out = self.hf(input_ids=new_tokens.view(B, 1).to(self.device), past_key_values=cache, attention_mask=attn,
                      use_cache=True)
        return out.logits[:, -1].float().cpu(), out.past_key_values


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


def run_stage(proposer: Proposer, embedder: Embedder, target: torch.Tensor, instruction: str,
              cfg: SearchConfig, rng: np.random.Generator, steps: int, stage: int = 1,
              best_before: tuple[str, float] = ("", -2.0),
              callback: Callable[[StepInfo], None] | None = None) -> tuple[str, float, list[float], int, int]:
    """One beam-search stage. Returns (best text, its cosine, best-so-far history incl. earlier
    stages' best, steps run, candidates embedded). ``target``: [D], normalised."""
    prompt = proposer.prompt_ids(instruction)
    logits, cache = proposer.start(prompt)
    beams: list[list[int]] = [[]]
    best_text, best_cos = "", -2.0
    overall_text, overall_cos = best_before
    history: list[float] = []
    n_embedded = 0
    pen = cfg.repetition_penalty
    banned = proposer.banned
    steps_run = 0
    for t in range(steps):
        steps_run = t + 1
        generated = torch.tensor(beams, dtype=torch.long).view(len(beams), t)
        ctx = torch.cat([prompt.expand(len(beams), -1), generated], 1) if cfg.penalize_prompt else generated
        lg = apply_repetition_penalty(logits, ctx, pen) if ctx.shape[1] else logits
        lg = lg.masked_fill(banned[: lg.shape[1]].unsqueeze(0), -1e10)
        top_ids, valid = propose(lg, cfg.top_k, cfg.top_p)
        cand_beam, cand_tok, texts, seen = [], [], [], {}
        for b in range(len(beams)):
            for j in range(top_ids.shape[1]):
                if not valid[b, j]:
                    continue
                tok = int(top_ids[b, j])
                text = _decode(proposer.tokenizer, beams[b] + [tok])
                if text in seen:  # same text from another tokenization: embed once, keep the first
                    continue
                seen[text] = len(texts)
                cand_beam.append(b)
                cand_tok.append(tok)
                texts.append(text)
        emb = embedder.encode(texts)
        n_embedded += len(texts)
        cos = torch.nn.functional.cosine_similarity(emb, target.unsqueeze(0), dim=-1).numpy().astype(np.float64)
        order = np.argsort(-cos, kind="stable")
        if cfg.randomness and len(order) > cfg.beam_width:
            top = order[: cfg.n_keep_top]
            rest = order[cfg.n_keep_top:]
            extra = rng.choice(rest, size=cfg.beam_width - len(top), replace=False)
            keep = np.concatenate([top, np.sort(extra)])
        else:
            keep = order[: cfg.beam_width]
        if cos[order[0]] > best_cos:
            best_cos, best_text = float(cos[order[0]]), texts[order[0]]
        if best_cos > overall_cos:
            overall_cos, overall_text = best_cos, best_text
        history.append(overall_cos)
        beams = [beams[cand_beam[i]] + [cand_tok[i]] for i in keep]
        if callback is not None:
            callback(StepInfo(stage, t + 1, steps, overall_text, overall_cos, best_text, best_cos, len(texts)))
        if overall_cos >= cfg.threshold or t == steps - 1:
            break
        beam_idx = torch.tensor([cand_beam[i] for i in keep], dtype=torch.long)
        new_tok = torch.tensor([cand_tok[i] for i in keep], dtype=torch.long)
        logits, cache = proposer.step(cache, new_tok, beam_idx)
    return best_text, best_cos, history, steps_run, n_embedded


def refine_text(stage_texts: list[str], stage_cosines: list[float], pool: int = 1) -> str:
    """What ``{text}`` of the refine prompt becomes: the ``pool`` best distinct stage results, best
    first (ties: the earlier stage), one per line; ``pool = 1``: the best text so far."""
    order = sorted(range(len(stage_texts)), key=lambda i: (-stage_cosines[i], i))
    picked = list(dict.fromkeys(stage_texts[i] for i in order))[: max(1, int(pool))]
    return "\n".join(picked)


def invert(target: np.ndarray | torch.Tensor, proposer: Proposer, embedder: Embedder, cfg: SearchConfig,
           callback: Callable[[StepInfo], None] | None = None) -> InversionResult:
    """Invert one target vector ``[D]`` (in the embedder's space at its layer) to a text."""
    cfg.check()
    target = torch.as_tensor(np.asarray(target, dtype=np.float32)).flatten()
    if target.shape[0] != embedder.dim:
        raise WorkbenchError(f"The target has {target.shape[0]} dimensions, the embedder {embedder.dim}.")
    target = torch.nn.functional.normalize(target, dim=0)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    best = ("", -2.0)
    result = InversionResult("", -2.0, 0, 0.0)
    prompts_run: set[str] = set()
    for stage in range(1, cfg.stages + 1):
        if stage == 1:
            instruction, steps = cfg.prompt, cfg.max_steps
        else:
            # stage s >= 2 restarts from an empty text, prompted with the best text so far (the repo's
            # experiment runs 5 stages: 4 such restarts) or the refine_pool best stage results
            instruction = cfg.refine_prompt.replace("{text}", refine_text(result.stage_texts, result.stage_cosines,
                                                                          cfg.refine_pool))
            steps = cfg.refine_steps or cfg.max_steps
            if not cfg.randomness and instruction in prompts_run:
                # the best text did not change, so this restart's prompt is one already run: without
                # randomness the search is deterministic and would repeat that stage exactly
                break
        prompts_run.add(instruction)
        text, cos, hist, n_steps, n_emb = run_stage(proposer, embedder, target, instruction, cfg, rng, steps,
                                                    stage, best, callback)
        result.stage_texts.append(text)
        result.stage_cosines.append(cos)
        result.history += hist
        result.steps += n_steps
        result.n_embedded += n_emb
        if cos > best[1]:
            best = (text, cos)
        if best[1] >= cfg.threshold:
            break
    if embedder.precision != "fp32":
        # the search scored in bf16: report every stage's best at full precision
        exact = torch.nn.functional.cosine_similarity(embedder.encode(result.stage_texts, exact=True),
                                                      target.unsqueeze(0), dim=-1)
        result.stage_cosines = [float(c) for c in exact]
        i = int(np.argmax(result.stage_cosines))
        best = (result.stage_texts[i], result.stage_cosines[i])
    result.text, result.cosine = best
    result.seconds = time.time() - t0
    return result
