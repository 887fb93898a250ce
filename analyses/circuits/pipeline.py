"""SAE circuit finding end to end, with the ablation baseline and ground truth when there is one.

:func:`find_circuit` is the back-end of the ``circuits`` analysis and usable directly::

    from workbench.models import load_model
    from analyses.circuits import find_circuit
    m = load_model("attn-only-induction")
    table, summary = find_circuit(m, task="induction")

Method (O'Neill & Bui, arXiv 2405.12522; docs/methods.md, "SAE circuits"): per-head outputs in the
residual basis averaged over positions for ``n_examples`` positive and ``n_examples`` negative
prompts, read through the activation store (:mod:`.heads`); SAE trials (:mod:`.sae_method`); the
ablation baseline (:mod:`.ablation`); references, table and summary (:mod:`.report`), whose
docstring says how to compare the runtimes.

The steps of :func:`find_circuit`: validate the parameters, build the task, run the SAE method,
run the ablation baseline, match a ground truth, add attention-pattern scores, write the table and
the summary.
"""

from __future__ import annotations

import time
from typing import Callable

import pandas as pd

from workbench.analysis import Param, defaults_of, validate_params
from workbench.errors import WorkbenchError
from workbench.hooked import model_shape
from workbench.store import ActivationStore

from .ablation import AblationResult, ablation_effects
from .attention import repeat_attention
from .ground_truth import architecture_of, match_ground_truth
from .heads import Reader, store_reader
from .report import AttentionRun, circuit_summary, circuit_table, reference_circuits
from .sae_method import run_sae_method
from .tasks import DEFAULT_LAMBDA, TASKS, Task, make_task

PARAMS = {
    "task": Param("ioi", f"one of {', '.join(TASKS)} (csv needs task_file)", choices=TASKS),
    "task_file": Param("", "CSV with columns positive, negative, answer [, wrong]: one prompt pair per row"),
    "n_examples": Param(250, "positive prompts (and as many negative ones); the paper uses 250", min=2),
    "position": Param("mean", "'mean' over positions (paper) or 'final' position only", choices=("mean", "final")),
    "n_features": Param(200, "SAE dictionary size (paper: 200)", min=2),
    "lambda": Param(None, "SAE L1 coefficient; default (null) 0.02 (0.05 for docstring)", type=float, min=0),
    "n_epochs": Param(500, "full-batch Adam epochs (paper: 500)", min=1),
    "lr": Param(1e-3, "Adam learning rate (paper: 1e-3)", min=0, closed="neither"),
    "n_sae_examples": Param(10, "examples the SAE trains on, drawn from positives + negatives (paper: 10; at most "
                            "2 * n_examples)", min=1),
    "seeds": Param(5, "number of trials (seeds seed, seed+1, ...): mean and sd over trials", min=1),
    "edges": Param(True, "also compute the edge (code co-occurrence) score"),
    "ablation": Param("mean", "'mean' (per-position mean ablation), 'patch' (from the paired negative) or 'none'",
                      choices=("mean", "patch", "none")),
    "ablation_examples": Param(None, "positive prompts used by the ablation baseline (default: n_examples)", type=int,
                               min=1),
    "circuit_threshold": Param(0.02, "reference circuit = heads whose ablation removes >= this fraction of the "
                               "clean-minus-negative metric gap", min=0, max=1),
    "period": Param(50, "induction task: length of the repeated random sequence", min=2),
    "prepend_bos": Param(True, "prepend the tokenizer's BOS token to every prompt"),
    "batch_size": Param(32, "prompts per forward pass", min=1),
    "attention_scores": Param(None, "add previous-token / induction attention scores (default: induction task only)",
                              type=bool),
}
DEFAULTS = defaults_of(PARAMS)


def check_params(p: dict) -> None:
    """The constraint between parameters (each one is checked by its :class:`Param`)."""
    if p["n_sae_examples"] > 2 * p["n_examples"]:
        raise WorkbenchError(f"circuits: the SAE's training examples (n_sae_examples = {p['n_sae_examples']}) are drawn "
                             f"from the {2 * p['n_examples']} prompts (n_examples = {p['n_examples']} a side): lower "
                             "the training examples or raise the prompts per side.")


def build_task(model, p: dict, seed: int) -> tuple[Task, float]:
    """The task's prompts (checked against the model's context) and the SAE's L1 coefficient."""
    task_name = "csv" if p["task_file"] else str(p["task"])
    lam = float(p["lambda"]) if p["lambda"] is not None else DEFAULT_LAMBDA.get(task_name, 0.02)
    task = make_task(task_name, model.tokenizer, int(p["n_examples"]), seed=seed, task_file=p["task_file"] or None,
                     period=int(p["period"]), prepend_bos=bool(p["prepend_bos"]))
    if len(task.positive) < 1 or len(task.negative) < 1:
        raise WorkbenchError("circuits needs at least one positive and one negative prompt.")
    max_len = min(int(getattr(model.bridge.cfg, "n_ctx", 10**9) or 10**9), int(model.max_length))
    longest = max(len(s) for s in task.positive + task.negative)
    if longest > max_len:
        raise WorkbenchError(f"A prompt has {longest} tokens but the model takes {max_len}; use shorter prompts "
                             f"(e.g. a smaller period).")
    return task, lam


def run_ablation(model, task: Task, p: dict, say: Callable[..., None]) -> AblationResult | None:
    """The ablation baseline (None when ``ablation`` is "none")."""
    if p["ablation"] == "none":
        return None
    return ablation_effects(model.bridge, task, mode=p["ablation"], n_examples=p["ablation_examples"],
                            batch_size=int(p["batch_size"]), progress=lambda d, t: say(d, t, "ablating heads"))


def run_attention(model, task: Task, p: dict, seed: int, read: Reader) -> AttentionRun | None:
    """Attention-pattern scores on random repeated sequences (default: the induction task only)."""
    want = p["attention_scores"] if p["attention_scores"] is not None else task.name == "induction"
    if not want:
        return None
    t0 = time.time()
    table, hit = repeat_attention(model, read, n_examples=min(100, int(p["n_examples"])), period=int(p["period"]),
                                  seed=seed)
    return AttentionRun(table, time.time() - t0, hit)


def run_phases(p: dict) -> list[tuple[str, float]]:
    """The run's phases with rough relative costs (the ablation baseline is one forward pass per head
    over the prompts, about ten times the SAE path): one progress bar spans them."""
    phases = [("SAE method", 1.0)]
    if p["ablation"] != "none":
        phases.append(("ablation baseline", 10.0))
    if p["attention_scores"] or (p["attention_scores"] is None and p["task"] == "induction" and not p["task_file"]):
        phases.append(("attention scores", 0.3))
    return phases


def find_circuit(model, *, store: ActivationStore | None = None, read: Reader | None = None, seed: int = 0,
                 progress: Callable[[int, int, str], None] | None = None,
                 phase: Callable[[str], None] | None = None, **params) -> tuple[pd.DataFrame, dict]:
    """Run the SAE method (several seeds), the ablation baseline and scoring on a loaded decoder.

    ``model`` comes from :func:`workbench.models.load_model`. Clean activations are read through
    ``read`` (see :mod:`.heads`; the ``circuits`` analysis reads through its run context) or else
    ``store`` (default: the workbench's activation cache). Returns ``(table, summary)``: one row per
    (layer, head) with ``sae_score`` (mean over trials of the softmax node score) and
    ``sae_score_sd``, ``sae_unique`` (mean raw count), ``edge_score``, ``ablation_effect`` (+
    normalised), ``in_ablation_circuit``, ``ground_truth``, ranks; the summary holds per-seed and
    mean +- sd ROC-AUCs, precision/recall, runtimes (with whether the SAE path's read was a cache
    hit), rank correlation. ``phase(name)`` is told when each of :func:`run_phases` begins.
    """
    p = validate_params("circuits", PARAMS, params)
    check_params(p)
    say = progress or (lambda done, total, msg="": None)
    enter = phase or (lambda name: None)
    read = read if read is not None else store_reader(model, store)
    task, lam = build_task(model, p, seed)
    enter("SAE method")
    sae = run_sae_method(model, task, read, p, lam, seed, say)
    if p["ablation"] != "none":
        enter("ablation baseline")
    abl = run_ablation(model, task, p, say)
    arch = architecture_of(model.bridge, getattr(model.hf_model, "config", None))
    gt = match_ground_truth(task.name, model.name, arch)
    references = reference_circuits(abl, gt, p["circuit_threshold"])
    if p["attention_scores"] or (p["attention_scores"] is None and task.name == "induction"):
        enter("attention scores")
    attn = run_attention(model, task, p, seed, read)
    shape = model_shape(model.bridge)
    table = circuit_table(shape[0], shape[1], sae, abl, references, gt, attn)
    summary = circuit_summary(task, shape, arch, lam, p, sae, abl, gt, references, table, attn)
    say(1, 1, "done")
    return table, summary
