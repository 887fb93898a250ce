"""What logit attribution and patching run on: prompt pairs, answer tokens and the logit difference.

The prompts are a :class:`workbench.tasks.Task` (docs/methods.md, "Attention, DLA and patching"):

- ``task=prompts``: one clean and one corrupted prompt typed as parameters, with the ``answer``
  token (correct after the clean prompt) and the ``wrong`` token it is compared with, both single
  tokens (with their leading space);
- ``task=ioi | greater_than | docstring | induction | csv``: the prompt pairs of the core's task
  generators (:mod:`workbench.tasks`, shared with the circuits back-end), positives clean, negatives
  corrupted, each with its own targets.

The metric of a prompt is its logit difference, averaged over its targets ``(position, correct,
wrong)``: ``mean(logits[correct]) - mean(logits[wrong])``, or ``logits[correct] - logsumexp(logits)``
(the log-probability) when a target has no wrong tokens (the induction task, a blank ``wrong``). The
corrupted prompt is scored with its clean twin's targets. Every prompt starts with the tokenizer's
BOS when it has one (:func:`workbench.tasks.encode`).
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.errors import WorkbenchError
from workbench.hooked import Metric
from workbench.params import Param
from workbench.stats import layer_request, parse_layers
from workbench.stats.layer_list import FORMAT
from workbench.tasks import TASKS, Task, encode, make_task, single_token

CLEAN = "When John and Mary went to the shops, John gave the bag to"
CORRUPTED = "When John and Mary went to the shops, Mary gave the bag to"
SOURCES = ("prompts",) + TASKS

#: the parameters of logit attribution (the clean side only)
DLA_INPUT_PARAMS = {
    "task": Param("prompts", "where the prompts come from: prompts (typed below) or a task generator (its "
                             "clean prompts; csv needs task_file)", choices=SOURCES),
    "clean": Param(CLEAN, "clean prompt (task=prompts)"),
    "answer": Param(" Mary", "correct next token after the clean prompt: one token, leading space included "
                             "(task=prompts)"),
    "wrong": Param(" John", "token the answer is compared with, one token (task=prompts); blank: the answer's "
                            "logit alone (log-probability when patching)", nullable=True),
    "n_examples": Param(8, "prompt pairs drawn from the task generator", min=1, max=1000),
    "task_file": Param("", "CSV with columns positive, negative, answer and optionally wrong (task=csv)"),
    "period": Param(20, "period of the repeated random tokens (task=induction)", min=2, max=500),
    "batch_size": Param(16, "prompts (or patched prompts) per forward pass", min=1, max=1024),
}
#: the parameters of activation and attribution patching (a corrupted side too)
PATCH_INPUT_PARAMS = {**DLA_INPUT_PARAMS,
                      "corrupted": Param(CORRUPTED, "corrupted prompt with as many tokens as the clean one "
                                                    "(task=prompts)")}


def _layer_format(value):
    layer_request(value)  # the format only: the range is checked against the model when it runs
    return value


def layers_param(what: str) -> Param:
    """A ``layers`` parameter: which blocks (0..L-1; -1 the last) to {what}."""
    return Param("all", f"blocks to {what}: all, a block number (-1 the last) or a list such as 0,3,6", type=object,
                 check=_layer_format, allowed=FORMAT)


def block_list(value, model) -> list[int]:
    """The blocks ``layers`` names, checked against the model (0..L-1; negative numbers from the end)."""
    return parse_layers(value, model.n_layers - 1, owner=f"{model.name} (blocks)")


def require_decoder(model, analysis: str) -> None:
    if model.kind != "decoder":
        raise WorkbenchError(f"{analysis} needs a decoder-only model (attention heads through TransformerBridge); "
                             f"{model.name} is a {model.kind}. Try smollm2-135m or attn-only-induction.")


def answer_id(tokenizer, text: str, what: str) -> int:
    """The id of ``text`` when it is exactly one token; WorkbenchError saying how it splits otherwise."""
    token = single_token(tokenizer, text)
    if token is None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = [tokenizer.decode([i]) for i in ids]
        raise WorkbenchError(f"{what} {text!r} is {len(ids)} token(s) for this tokenizer ({pieces}), not one known "
                             "token: give a single token, with its leading space (e.g. ' Mary').")
    return token


def build_task(model, params: dict, seed: int, paired: bool) -> Task:
    """The prompts of a run: the typed pair (``task=prompts``) or the task generator's pairs.

    ``paired``: the corrupted side is needed (patching); the typed corrupted prompt is then encoded too.
    """
    tok = model.tokenizer
    if params["task"] != "prompts":
        return make_task(params["task"], tok, int(params["n_examples"]), seed, task_file=params["task_file"] or None,
                         period=int(params["period"]))
    if not str(params["clean"]).strip():
        raise WorkbenchError("The clean prompt is empty: type a prompt (task=prompts) or pick a task.")
    clean = encode(tok, params["clean"])
    correct = [answer_id(tok, params["answer"], "The answer")]
    wrong = [answer_id(tok, params["wrong"], "The wrong answer")] if params.get("wrong") else []
    corrupted = [encode(tok, params["corrupted"])] if paired else []
    return Task("prompts", [clean], corrupted, [[(len(clean) - 1, correct, wrong)]], "logit_diff",
                "Typed clean / corrupted prompts.", [params["clean"]], [params["corrupted"]] if paired else [])


def check_pairs(task: Task, per_position: bool) -> None:
    """Patching replaces activations position by position: each corrupted prompt needs its clean twin's
    token length, and per-position grids need every prompt of one length (positions line up)."""
    if len(task.negative) != len(task.positive):
        raise WorkbenchError(f"{len(task.positive)} clean prompts but {len(task.negative)} corrupted ones: give one "
                             "corrupted prompt per clean prompt.")
    for i, (clean, corrupted) in enumerate(zip(task.positive, task.negative)):
        if len(clean) != len(corrupted):
            raise WorkbenchError(
                f"Prompt pair {i}: the clean prompt is {len(clean)} tokens and the corrupted one {len(corrupted)}; "
                "patching replaces activations position by position, so give a corrupted prompt of the same token "
                "length (e.g. swap one single-token name for another).")
    lengths = sorted({len(p) for p in task.positive})
    if per_position and len(lengths) > 1:
        raise WorkbenchError(f"Per-position patching lines up positions across prompts, but these prompts are "
                             f"{lengths[0]}..{lengths[-1]} tokens long: use positions=all, one prompt pair "
                             "(task=prompts), or prompts of one template.")


def logit_diff_metric(task: Task) -> Metric:
    """The metric of the module docstring, for :mod:`workbench.hooked`: ``(logits [B, T, V], prompts)
    -> [B]``, differentiable, computed in float32 where the logits are."""
    def metric(logits: torch.Tensor, prompts: list[int]) -> torch.Tensor:
        rows = []
        for row, n in enumerate(prompts):
            values = []
            for position, correct, wrong in task.targets[n]:
                x = logits[row, position].float()
                base = x[wrong].mean() if wrong else torch.logsumexp(x, 0)
                values.append(x[correct].mean() - base)
            rows.append(torch.stack(values).mean())
        return torch.stack(rows)
    return metric


def metric_name(task: Task) -> str:
    """What the metric is, in words, for summaries and figure titles."""
    if all(wrong for targets in task.targets for _, _, wrong in targets):
        return "logit difference"
    return "log-probability of the answer"


def token_labels(tokens: list[str]) -> list[str]:
    """Tokens with whitespace made visible (␣ space, ↵ newline, ⇥ tab), for axis labels and hovers."""
    return [t.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") for t in tokens]


def position_labels(tokenizer, ids: list[int]) -> list[str]:
    """``"tok_i"`` labels of a prompt's positions (TransformerLens patching-notebook style)."""
    return [f"{t}_{i}" for i, t in enumerate(token_labels([tokenizer.decode([int(x)]) for x in ids]))]


def normalised(patched: np.ndarray, clean: float, corrupted: float) -> np.ndarray:
    """``(LD_patched - LD_corr) / (LD_clean - LD_corr)``: 0 = corrupted, 1 = clean."""
    gap = clean - corrupted
    if not np.isfinite(gap) or abs(gap) < 1e-6:
        raise WorkbenchError(f"The clean and corrupted prompts give the same metric ({clean:.4g} vs {corrupted:.4g}): "
                             "patching has nothing to restore; change the corrupted prompt.")
    return (np.asarray(patched, dtype=np.float64) - corrupted) / gap
