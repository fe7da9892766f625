"""Outcome figures of a finished ``grm_targets`` run under other outcome thresholds.

The outcome call depends on the thresholds only: the predicted progress of every evaluated
rollout is in the run's ``summary.json`` files (final and peak Phi per episode). This script
re-chooses the thresholds on the training tasks' calibration rollouts (with delta searched,
as the bench does, or fixed, e.g. at EVALUATION.md's default 0.05) and recomputes outcome
accuracy (final Phi, without undo, at any step) and false successes per task, then the mean
over training tasks and over one-shot tasks, without re-scoring the evaluation sets.

    python bench/grm_thresholds.py --out runs/grm_gen30 --delta 0.05
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from grm_targets import (  # noqa: E402
    HELD_OUT,
    MT10,
    TABLETOP,
    calibration_finals,
    mean_row,
    name,
)

from robo.evaluation import (  # noqa: E402
    choose_thresholds,
    predict_outcome,
    predict_outcome_any_step,
)
from robo.reward.ensemble import is_ensemble_dir  # noqa: E402


def figures(episodes: list[dict], delta: float, tau: float) -> dict:
    """Outcome accuracy (final Phi; without undo; at any step) and false-success rates."""

    def call(e: dict, any_step: bool) -> str:
        if any_step:  # the peak stands in for the whole trace: only its maximum matters
            return predict_outcome_any_step([e["peak_phi"], e["final_phi"]], delta, tau)
        return str(predict_outcome(e["final_phi"], delta, tau))

    def share(rows, hit) -> float | None:
        return float(np.mean([hit(e) for e in rows])) if rows else None

    failed = [e for e in episodes if e["outcome"] != "success"]
    return {
        "episodes": len(episodes),
        "outcome_acc": share(episodes, lambda e: call(e, False) == e["outcome"]),
        "acc_no_undo": share(
            [e for e in episodes if e["policy"] != "undo"],
            lambda e: call(e, False) == e["outcome"],
        ),
        "false_succ": share(failed, lambda e: call(e, False) == "success"),
        "acc_any_step": share(episodes, lambda e: call(e, True) == e["outcome"]),
        "fsr_any_step": share(failed, lambda e: call(e, True) == "success"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, help="a finished bench/grm_targets.py folder")
    ap.add_argument("--data", default="", help="its data folder (default <out>/data)")
    ap.add_argument("--delta", default="search", help="'search' (as the bench) or a fixed value")
    ap.add_argument("--json", default="", help="where to write the figures")
    a = ap.parse_args()
    root = Path(a.out)
    data_root = Path(a.data) if a.data else root / "data"
    model = root / "general" / "model"
    if not ((model / "config.json").exists() or is_ensemble_dir(model)):
        raise SystemExit(
            f"{model} holds no GRM or ensemble: give the folder of a finished grm_targets run"
        )
    tasks = [t for t in TABLETOP + MT10 if (root / "eval" / name(t) / "summary.json").exists()]
    if not tasks:
        raise SystemExit(f"no evaluation summaries under {root / 'eval'}: run the bench first")
    data = [{k: data_root / f"{name(t)}-{k}" for k in ("train", "calib")} for t in tasks]
    try:
        delta = None if a.delta == "search" else float(a.delta)
    except ValueError:
        raise SystemExit(f"--delta {a.delta}: give 'search' or a number such as 0.05") from None
    finals, outcomes, _ = calibration_finals(model, data)
    th = choose_thresholds(finals, outcomes, delta=delta)
    rows = []
    for sub, names, seen in (("eval", tasks, True), ("eval-adapted", HELD_OUT, False)):
        for t in names:
            path = root / sub / name(t) / "summary.json"
            if path.exists():
                eps = json.loads(path.read_text())["per_episode"]
                rows.append({"task": t, "seen": seen, **figures(eps, th.delta, th.tau)})
    rows.append(mean_row([r for r in rows if r["seen"]], "mean over training tasks", "general"))
    one_shot = [r for r in rows if r.get("seen") is False]
    if one_shot:
        rows.append(mean_row(one_shot, "mean over one-shot tasks", "general"))
    for r in rows:
        r.update(delta=th.delta, tau=th.tau)
    print(
        f"thresholds: delta {th.delta}, tau {th.tau} (chosen on {len(finals)} calibration rollouts)"
    )
    report(
        "grm_thresholds",
        rows,
        [
            "task",
            "episodes",
            "delta",
            "tau",
            "outcome_acc",
            "acc_no_undo",
            "false_succ",
            "acc_any_step",
            "fsr_any_step",
        ],
        a.json or str(root / f"grm_thresholds_{a.delta}.json"),
    )


if __name__ == "__main__":
    main()
