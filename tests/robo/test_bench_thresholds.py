"""bench/grm_thresholds.py: outcome figures recomputed from saved per-episode progress."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
grm_thresholds = pytest.importorskip("grm_thresholds")


def ep(policy, outcome, final, peak):
    return {"policy": policy, "outcome": outcome, "final_phi": final, "peak_phi": peak}


def test_figures_call_final_and_any_step_outcomes():
    episodes = [
        ep("expert", "success", 0.99, 0.99),
        ep("undo", "success", 0.10, 1.00),  # undone: wrong from the final Phi, right at any step
        ep("half", "partial", 0.50, 0.55),
        ep("random-freeze", "failure", 0.35, 0.40),  # above tau: called partial
        ep("near-miss", "partial", 0.80, 0.97),  # a peak that was not held: a false success
    ]
    f = grm_thresholds.figures(episodes, delta=0.05, tau=0.3)
    assert f["episodes"] == 5
    assert f["outcome_acc"] == pytest.approx(3 / 5)
    assert f["acc_no_undo"] == pytest.approx(3 / 4)
    assert f["acc_any_step"] == pytest.approx(3 / 5)
    assert f["false_succ"] == 0.0
    assert f["fsr_any_step"] == pytest.approx(1 / 3)
    # with a wider success margin its final Phi (0.80) is a false success too
    g = grm_thresholds.figures(episodes, delta=0.25, tau=0.3)
    assert g["false_succ"] == pytest.approx(1 / 3)
    mean = grm_thresholds.mean_row(
        [{"episodes": 5, **f}, {"episodes": 5, **g}], "mean over training tasks", "general"
    )
    assert mean["episodes"] == 10
    assert mean["outcome_acc"] == pytest.approx((f["outcome_acc"] + g["outcome_acc"]) / 2)
