"""Which perspectives make the GRM's progress: MAE and outcome accuracy per perspective set.

For a trained model and a bench folder (``bench/grm_targets.py``'s ``<out>/data``: per task a
``-train`` store with the reference demo, a ``-calib`` store and an ``-eval`` store), scores
the calibration and evaluation rollouts with each perspective set (the fused default, each
anchor alone, both anchors, incremental alone), chooses the outcome thresholds on the
calibration rollouts (training tasks only, as the bench does) and reports on the held-out
evaluation sets: VOC, progress MAE and Pearson against privileged progress, outcome
accuracy (with and without the undo rollouts) and the false-success rate.

    python bench/grm_perspectives.py --model runs/grm_tt/general/model --root runs/grm_tt

Prints a table and writes ``<root>/perspectives.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from models.grm.inference import GRMProgressModel  # noqa: E402
from robo.evaluation import (  # noqa: E402
    choose_thresholds,
    false_success_rate,
    outcome_accuracy,
    progress_agreement,
    score_store,
    voc,
)
from robo.store import EpisodeStore  # noqa: E402

SETS = {
    "fused (default)": ("incremental", "forward", "backward"),
    "forward + backward": ("forward", "backward"),
    "forward": ("forward",),
    "backward": ("backward",),
    "incremental": ("incremental",),
}


def tasks(root: Path) -> list[str]:
    """Task prefixes with train, calib and eval stores under ``root/data``."""
    data = root / "data"
    found = sorted(p.name[: -len("-eval")] for p in data.glob("*-eval"))
    keep = [t for t in found if (data / f"{t}-train").exists() and (data / f"{t}-calib").exists()]
    if not keep:
        raise SystemExit(f"no <task>-train/-calib/-eval stores under {data}: run the GRM bench")
    return keep


def scored(model, store_path: Path, reference, experts: bool) -> list[dict]:
    store = EpisodeStore.open(str(store_path))
    idx = [i for i in range(len(store)) if experts or store.episode_meta(i).policy != "expert"]
    rows = []
    for i, sc in zip(idx, score_store(model, store, reference, indices=idx), strict=True):
        ep = store.episode(i)
        rows.append(
            {
                "policy": ep.policy,
                "outcome": ep.outcome,
                "phi": np.asarray(sc.progress, np.float64),
                "true": np.asarray(ep.privileged_progress, np.float64),
            }
        )
    return rows


def figures(calib: list[dict], evals: list[dict]) -> dict:
    th = choose_thresholds([r["phi"][-1] for r in calib], [r["outcome"] for r in calib], None)
    rollouts = evals  # every held-out episode, experts included, as `robo reward eval` counts
    finals = [r["phi"][-1] for r in rollouts]
    outcomes = [r["outcome"] for r in rollouts]
    kept = [r for r in rollouts if r["policy"] != "undo"]
    agree = progress_agreement([r["phi"] for r in evals], [r["true"] for r in evals])
    return {
        "voc": float(np.mean([voc(r["phi"]) for r in evals if r["policy"] == "expert"])),
        "mae": agree["mae"],
        "pearson": agree["pearson"],
        "delta": th.delta,
        "tau": th.tau,
        "outcome_accuracy": outcome_accuracy(finals, outcomes, th.delta, th.tau)["accuracy"],
        "outcome_accuracy_excluding_undo": outcome_accuracy(
            [r["phi"][-1] for r in kept], [r["outcome"] for r in kept], th.delta, th.tau
        )["accuracy"],
        "false_success_rate": false_success_rate(finals, outcomes, th.delta),
        "rollouts": len(rollouts),
        "mae_per_policy": {
            pol: progress_agreement(
                [r["phi"] for r in evals if r["policy"] == pol],
                [r["true"] for r in evals if r["policy"] == pol],
            )["mae"]
            for pol in sorted({r["policy"] for r in evals})
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a trained GRM folder")
    ap.add_argument("--root", required=True, help="the GRM bench's --out folder (with data/)")
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated names of SETS")
    ap.add_argument("--out", default="", help="JSON path (default <root>/perspectives.json)")
    a = ap.parse_args()
    root = Path(a.root)
    names = [s for s in a.sets.split(",") if s]
    bad = [s for s in names if s not in SETS]
    if bad:
        raise SystemExit(f"unknown perspective sets {bad}: choose from {list(SETS)}")
    results = {}
    for name in names:
        t0 = time.time()
        model = GRMProgressModel.from_pretrained(a.model, perspectives=SETS[name])
        calib, evals, per_task = [], [], {}
        for task in tasks(root):
            reference = EpisodeStore.open(str(root / "data" / f"{task}-train")).episode(0)
            c = scored(model, root / "data" / f"{task}-calib", reference, experts=False)
            e = scored(model, root / "data" / f"{task}-eval", reference, experts=True)
            calib += c
            evals += e
            per_task[task] = progress_agreement([r["phi"] for r in e], [r["true"] for r in e])
        results[name] = {**figures(calib, evals), "mae_per_task": per_task}
        results[name]["seconds"] = time.time() - t0
    rows = [
        {
            "perspectives": n,
            "VOC": r["voc"],
            "MAE": r["mae"],
            "Pearson": r["pearson"],
            "acc": r["outcome_accuracy"],
            "acc w/o undo": r["outcome_accuracy_excluding_undo"],
            "FSR": r["false_success_rate"],
            "delta/tau": f"{r['delta']:.2f}/{r['tau']:.2f}",
            **{f"MAE {pol}": m for pol, m in r["mae_per_policy"].items()},
            "model": a.model,
            "details": r,
        }
        for n, r in results.items()
    ]
    columns = ["perspectives", "VOC", "MAE", "Pearson", "acc", "acc w/o undo", "FSR", "delta/tau"]
    columns += [k for k in rows[0] if k.startswith("MAE ")]
    report("grm_perspectives", rows, columns, a.out or str(root / "perspectives.json"))


if __name__ == "__main__":
    main()
