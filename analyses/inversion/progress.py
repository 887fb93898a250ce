"""Progress of an inversion run: the bar, the one-line message, and a structured record per step.

After every beam-search step :class:`StepReporter` calls

- ``ctx.progress(done, total, message)``: ``done`` / ``total`` count proposer steps over the whole
  run; ``message`` is ``"item i/n · layer L · stage s step t/T · cos 0.1234 · best text"`` (kept as
  it was for readers that split it);
- ``ctx.step(record)`` when the context has a ``step`` method, with ``record`` the plain dict
  described in :data:`RECORD_KEYS`;
- ``step_callback(item, n_items, layer, StepInfo)`` when :func:`analyses.inversion.run` was given one.
"""

from __future__ import annotations

from typing import Callable

from .search import SearchConfig, StepInfo

#: the keys of the structured step record, with their meaning
RECORD_KEYS = {
    "item": "0-based index of this inversion in the run (layer-major: layer index * n_targets + target)",
    "n_items": "inversions in the run (targets x layers)",
    "target": "row of the dataset or vectors being inverted (the table's `item` column)",
    "layer": "-1 = the sentence embedding, l >= 0 = mean-pooled hidden state l (the table's `layer`)",
    "stage": "search stage, 1-based (stage 2 refines the best stage-1 text)",
    "n_stages": "stages configured (the search may stop early at the threshold)",
    "step": "proposer step within the stage, 1-based",
    "total_steps": "step budget of this stage",
    "best_text": "best text so far for this item, over all its stages",
    "best_cosine": "its cosine to the target",
    "stage_best_text": "best text of the current stage",
    "stage_best_cosine": "its cosine to the target",
    "n_candidates": "candidate texts scored at this step",
    "done": "proposer steps done in the whole run (what the bar shows)",
    "total": "proposer steps of the whole run if no item stops early",
}


class StepReporter:
    """Turns each :class:`~analyses.inversion.search.StepInfo` into the bar, the message and the record."""

    def __init__(self, ctx, cfg: SearchConfig, n_targets: int, n_layers: int,
                 step_callback: Callable | None = None):
        self.ctx = ctx
        self.cfg = cfg
        self.refine = cfg.refine_steps or cfg.max_steps
        self.per_item = cfg.max_steps + (cfg.stages - 1) * self.refine
        self.n_targets = n_targets
        self.n_items = n_targets * n_layers
        self.total = self.n_items * self.per_item
        self.done_before = 0  # steps of the items already finished (each counted at its full budget)
        self.step_callback = step_callback
        step = getattr(ctx, "step", None)
        self.step_fn = step if callable(step) else None

    def _within_item(self, info: StepInfo) -> int:
        if info.stage == 1:
            return info.step
        return self.cfg.max_steps + (info.stage - 2) * self.refine + info.step

    def callback(self, layer_index: int, target: int, layer: int | None) -> Callable[[StepInfo], None]:
        """The ``invert`` callback for one (layer, target) pair."""
        item = layer_index * self.n_targets + target
        return lambda info: self.report(item, target, layer, info)

    def report(self, item: int, target: int, layer: int | None, info: StepInfo) -> None:
        done = min(self.done_before + self._within_item(info), self.total)
        where = "output" if layer is None else layer
        self.ctx.progress(done, self.total,
                          f"item {item + 1}/{self.n_items} · layer {where} · stage {info.stage} step "
                          f"{info.step}/{info.total_steps} · cos {info.best_cosine:.4f} · {info.best_text}")
        if self.step_fn is not None:
            self.step_fn(self.record(item, target, layer, info, done))
        if self.step_callback is not None:
            self.step_callback(item, self.n_items, layer, info)

    def record(self, item: int, target: int, layer: int | None, info: StepInfo, done: int) -> dict:
        """The structured step record (keys: :data:`RECORD_KEYS`)."""
        return {"item": item, "n_items": self.n_items, "target": target, "layer": -1 if layer is None else int(layer),
                "stage": info.stage, "n_stages": self.cfg.stages, "step": info.step, "total_steps": info.total_steps,
                "best_text": info.best_text, "best_cosine": float(info.best_cosine),
                "stage_best_text": info.stage_best_text, "stage_best_cosine": float(info.stage_best_cosine),
                "n_candidates": info.n_candidates, "done": done, "total": self.total}

    def item_done(self) -> None:
        self.done_before += self.per_item
