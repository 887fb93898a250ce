"""One progress bar over a whole run: declared phases fill their share, the bar never goes back, and the
text names the phase and gives one ETA for the whole run."""

import pytest

from workbench.analysis import RunContext


def test_phases_fill_their_share_of_one_bar():
    seen = []
    ctx = RunContext("demo", {}, progress_fn=lambda d, t, m="": seen.append((d / t, m)))
    ctx.plan([("extract texts", 3), ("metrics", 1)])
    ctx.phase("extract texts")
    for done in range(1, 5):
        ctx.progress(done, 4, f"extracted {done}/4 texts, 7 s left")
    assert seen[-1][0] == pytest.approx(0.75)
    assert "extract texts (1/2): extracted 4/4 texts" in seen[-1][1] and "7 s left" not in seen[-1][1]
    ctx.phase("metrics")
    ctx.progress(1, 2, "layer 1")
    assert seen[-1][0] == pytest.approx(0.875) and seen[-1][1].startswith("metrics (2/2): layer 1")
    ctx.progress(0, 2, "a part restarting its own count")
    assert seen[-1][0] == pytest.approx(0.875)  # never back
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)


def test_undeclared_phase_and_bad_plan_are_errors():
    ctx = RunContext("demo", {})
    with pytest.raises(ValueError, match="cost > 0"):
        ctx.plan([("a", 0)])
    ctx.plan([("a", 1)])
    with pytest.raises(ValueError, match="not declared"):
        ctx.phase("b")


def test_without_a_plan_progress_passes_through():
    seen = []
    ctx = RunContext("demo", {}, progress_fn=lambda d, t, m="": seen.append((d, t, m)))
    ctx.progress(2, 5, "step")
    assert seen == [(2, 5, "step")]
