"""The GRM's accuracy targets, end to end: data, general model, one-shot adaptation, figures.

1. Collect, per training task (own tabletop tasks + Meta-World MT10): expert demos,
   outcome-labelled training rollouts (more of the hard cases, near-miss and
   random-freeze), a calibration set of rollouts, and a held-out
   evaluation set (expert, noisy, near-miss, undo, half, random-freeze), each on its own
   seeds.
2. Train the general GRM on the training stores only.
3. Choose the outcome thresholds on the calibration rollouts of the training tasks: never
   trained on (on rollouts it was trained on, the model's final progress sits inside the
   labelled intervals more tightly than on new ones, which biases the thresholds) and never
   evaluated on.
4. Evaluate on the held-out sets of the training tasks (VOC, MAE, Pearson, regress
   tracking, outcome accuracy, false successes, EPIC, exploitation test).
5. With ``--mine_starts N``: adversarial mining (``robo reward mine``). From N start states
   per training task (seeds 200000.., apart from every evaluation seed) the exploitation
   search looks for what the general model over-scores; the top sequences the environment
   judges failed are recorded with the env's outcome label, and the model is fine-tuned
   (``robo reward train --init --outcomes``) on its training data plus these. Both models
   are calibrated and evaluated on the same held-out sets.
6. For each held-out task (never trained on): adapt the final model from exactly one demo,
   evaluate.

``label_mae`` is the floor the step-wise labels set on progress MAE: the labels' own MAE
against privileged progress on the training demos (no model involved).

Writes ``<out>/grm_targets.json`` and prints a table. Every stage is cached in ``<out>``
(re-running skips what exists), so the script can be resumed.

    python bench/grm_targets.py --out runs/grm_targets [--tasks tabletop] [--steps 3000]

``--ensemble A,B`` scores an ensemble of earlier bench runs instead of training: the general
model is ``robo reward ensemble`` of ``A/general/model`` and ``B/general/model``, each one-shot
model the ensemble of the members' ``adapted/<task>`` (run with the members' data linked as
``<out>/data``); it is calibrated and evaluated like a trained model.

Rendering dominates the data stage; on several cores, collect first with ``--data_only`` in
parallel processes on disjoint ``--tasks`` lists (``--held_out ""`` in all but one), then run
the full command. ``--jobs J`` runs mining and evaluation as J one-thread processes at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from models.grm.config import GRMConfig  # noqa: E402
from robo.cli import main as robo  # noqa: E402
from robo.reward.ensemble import EnsembleConfig, write_ensemble  # noqa: E402
from robo.reward.registry import as_spec  # noqa: E402
from robo.store import EpisodeStore  # noqa: E402
from sim.metaworld_env import MT10_TASKS  # noqa: E402

TABLETOP = ["tabletop/reach-v0", "tabletop/push-v0", "tabletop/pick-place-v0", "tabletop/stack-v0"]
MT10 = [f"metaworld/{t}" for t in MT10_TASKS]
HELD_OUT = ["metaworld/door-close-v3", "metaworld/button-press-v3", "metaworld/faucet-open-v3"]
EVAL_POLICIES = ("noisy:0.3", "near-miss", "undo", "half", "random-freeze")
TRAIN_POLICIES = ("noisy:0.3", "near-miss", "half", "random-freeze")
# the outcome classification's hard cases: near-misses either side of success, and random
# motion that ends away from the start without progress
HARD_POLICIES = ("near-miss", "random-freeze")


def name(env_id: str) -> str:
    return env_id.replace("/", "_")


def run_all(commands: list[tuple[str, list[str]]], jobs: int, logs: Path) -> None:
    """Run ``robo`` commands: in this process one after another (``jobs`` 1), else as
    ``jobs`` concurrent one-thread subprocesses, each logging to ``logs/<name>.log``."""
    if jobs <= 1:
        for label, args in commands:
            if robo(args):
                raise SystemExit(f"{label} failed")
        return
    logs.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-c", "import sys; from robo.cli import main; sys.exit(main())"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def one(job: tuple[str, list[str]]) -> tuple[str, int]:
        label, args = job
        with open(logs / f"{label}.log", "w") as log:
            return label, subprocess.run([*exe, *args], stdout=log, stderr=log, env=env).returncode

    with ThreadPoolExecutor(jobs) as pool:
        failed = [label for label, code in pool.map(one, commands) if code]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (logs in {logs})")


def collect(env_id: str, out: Path, episodes: int, policy: str, seed: int, size: int) -> None:
    code = robo(
        [
            "collect",
            "--env",
            env_id,
            "--episodes",
            str(episodes),
            "--policy",
            policy,
            "--seed",
            str(seed),
            "--size",
            str(size),
            "--out",
            str(out),
        ]
    )
    if code:
        raise SystemExit(f"collect failed for {env_id} {policy}")


def build_data(env_id: str, root: Path, a) -> dict[str, Path]:
    """Training demos + training rollouts (seeds 0..), calibration rollouts (seeds 50000..)
    and an evaluation set (seeds 100000..)."""
    paths = {k: root / "data" / f"{name(env_id)}-{k}" for k in ("train", "calib", "eval")}
    if not paths["train"].exists():
        collect(env_id, paths["train"], a.demos, "expert", 0, a.size)
        for k, p in enumerate(TRAIN_POLICIES if a.train_rollouts else ()):
            collect(env_id, paths["train"], a.train_rollouts, p, 10_000 + 1000 * k, a.size)
        if a.recover_demos and env_id.startswith("tabletop/"):
            # Recovery demos (dropped and grasped again) teach the fall back a stage; Meta-World's
            # scripted policies rarely recover, so only our own tasks get them.
            collect(env_id, paths["train"], a.recover_demos, "recover", 20_000, a.size)
    # Topped up to a count per policy, continuing the policy's seeds: the hard rollouts (to
    # train_rollouts + hard_rollouts), demos that withdraw the arm after success (retreat)
    # and their matched failures, the same withdrawal from mid-task (give-up), undo
    # rollouts labelled by their outcome (other seeds than the evaluation's) and their
    # matched failures, the same retracing from mid-task (undo-early).
    top_up = {
        p: (a.train_rollouts + a.hard_rollouts, 10_000 + 1000 * TRAIN_POLICIES.index(p))
        for p in (HARD_POLICIES if a.hard_rollouts and a.train_rollouts else ())
    }
    top_up["retreat"] = (a.retreat_demos, 30_000)
    top_up["give-up"] = (a.giveup_rollouts, 40_000)
    top_up["undo"] = (a.undo_rollouts, 60_000)
    top_up["undo-early"] = (a.undo_early_rollouts, 70_000)
    st = EpisodeStore.open(str(paths["train"]))
    for p, (want, seed) in top_up.items():
        have = sum(st.episode_meta(i).policy == p for i in range(len(st)))
        if have < want:
            collect(env_id, paths["train"], want - have, p, seed + have, a.size)
    if a.calib_rollouts and not paths["calib"].exists():
        for k, p in enumerate(TRAIN_POLICIES):
            collect(env_id, paths["calib"], a.calib_rollouts, p, 50_000 + 1000 * k, a.size)
    if not paths["eval"].exists():
        collect(env_id, paths["eval"], a.eval_demos, "expert", 100_000, a.size)
        for k, p in enumerate(EVAL_POLICIES):
            collect(env_id, paths["eval"], a.eval_rollouts, p, 110_000 + 1000 * k, a.size)
    return paths


def eval_args(model: Path, data: Path, reference: str, out: Path, a, seen=True) -> list[str]:
    return [
        "reward",
        "eval",
        "--model",
        as_spec(str(model)),
        "--data",
        str(data),
        "--reference",
        reference,
        "--out",
        str(out),
        "--seen_in_training",
        str(seen).lower(),
        "--calibrate",
        "false",
        "--exploit_sequences",
        str(a.exploit_sequences),
        "--exploit_starts",
        "1",
        *(["--threads", "1"] if a.jobs > 1 else []),
    ]


def evaluate_all(jobs: list[tuple[str, Path, Path, str, Path, bool]], a, logs: Path) -> dict:
    """``(label, model, data, reference, out, seen)`` evaluations, cached by their
    ``summary.json``; returns label -> summary."""
    todo = [
        (label, eval_args(m, d, ref, out, a, seen))
        for label, m, d, ref, out, seen in jobs
        if not (out / "summary.json").exists()
    ]
    run_all(todo, a.jobs, logs)
    return {label: json.loads((out / "summary.json").read_text()) for label, *_, out, _ in jobs}


def mine_all(model: Path, data: dict[str, dict[str, Path]], root: Path, a) -> list[str]:
    """Adversarial rollouts of every training task into ``data/<task>-mined`` (a store is
    complete once its ``mined.json`` summary exists); returns the stores holding any."""
    todo = []
    for t, d in data.items():
        store = root / "data" / f"{name(t)}-mined"
        if (store / "mined.json").exists():
            continue
        shutil.rmtree(store, ignore_errors=True)  # an interrupted run's partial store
        todo.append(
            (
                f"mine-{name(t)}",
                [
                    "reward",
                    "mine",
                    "--model",
                    as_spec(str(model)),
                    "--reference",
                    f"{d['train']}:0",
                    "--out",
                    str(store),
                    "--starts",
                    str(a.mine_starts),
                    "--sequences",
                    str(a.mine_sequences),
                    "--seed",
                    "200000",
                    "--summary",
                    str(store / "mined.json"),
                    *(["--threads", "1"] if a.jobs > 1 else []),
                ],
            )
        )
    run_all(todo, a.jobs, root / "logs")
    stores = [root / "data" / f"{name(t)}-mined" for t in data]
    return [str(p) for p in stores if len(EpisodeStore.open(str(p)))]


def calibrate(model: Path, data: list[dict[str, Path]]) -> None:
    """Choose delta and tau on the training tasks' calibration rollouts, pooled (on their
    training rollouts where no calibration set was collected)."""
    from robo.evaluation import choose_thresholds

    finals, outcomes, sources = calibration_finals(model, data)
    th = choose_thresholds(finals, outcomes, delta=None)
    what = " and ".join({"calib": "calibration", "train": "training"}[k] for k in sorted(sources))
    (model / "thresholds.json").write_text(
        json.dumps(
            {
                "delta": th.delta,
                "tau": th.tau,
                "source": f"{len(finals)} {what} rollouts of {len(data)} training tasks",
            }
        )
    )


def calibration_finals(
    model: Path, data: list[dict[str, Path]]
) -> tuple[list[float], list[str], set[str]]:
    """The model's final progress and the true outcome of every non-expert calibration
    rollout of the training tasks (training rollouts where no calibration set exists)."""
    from robo.evaluation import score_store
    from robo.reward.registry import load_progress_model

    pm = load_progress_model(as_spec(str(model)))
    finals, outcomes, sources = [], [], set()
    for d in data:
        key = "calib" if d["calib"].exists() else "train"
        sources.add(key)
        store = EpisodeStore.open(str(d[key]))
        idx = [i for i in range(len(store)) if store.episode_meta(i).policy != "expert"]
        reference = EpisodeStore.open(str(d["train"])).episode(0)
        scores = score_store(pm, store, reference, indices=idx)
        finals += [float(sc.progress[-1]) for sc in scores]
        outcomes += [store.episode_meta(i).outcome for i in idx]
    return finals, outcomes, sources


def label_floor(store: Path, spacing: str = "time") -> float:
    """MAE of the step-wise training labels against privileged progress on the store's
    demonstrations: what a model that learnt its labels perfectly would score on experts.
    Labels spread a stage's frames evenly in time; privileged progress measures distance
    within the stage, so tasks whose expert closes most of the distance early sit high
    with ``time`` spacing (the model's ``label_spacing``)."""
    import numpy as np

    from robo.reward.data import demo_progress, is_training_demo

    st = EpisodeStore.open(str(store))
    demos = [i for i in range(len(st)) if is_training_demo(st.episode_meta(i), cloning=True)]
    stages = max(int(st.episode(i).stage.max()) for i in demos[:5]) + 1
    errors = []
    for i in demos:
        ep = st.episode(i)
        errors.append(np.abs(demo_progress(ep, stages, spacing) - ep.privileged_progress).mean())
    return float(np.mean(errors))


def row(task: str, s: dict, seen: bool, label_mae: float | None = None, model="general") -> dict:
    return {
        "model": model,
        "task": task,
        "seen": seen,
        "episodes": s.get("episodes"),
        "voc": s.get("voc"),
        "mae": s.get("progress_mae"),
        "pearson": s.get("progress_pearson"),
        "regress": s.get("regress_tracking"),
        "outcome_acc": s.get("outcome_accuracy"),
        "acc_no_undo": s.get("outcome_accuracy_excluding_undo"),
        "false_succ": s.get("false_success_rate"),
        "acc_any_step": s.get("outcome_accuracy_any_step"),
        "fsr_any_step": s.get("false_success_rate_any_step"),
        "acc_privileged": s.get("outcome_accuracy_privileged"),
        "epic": s.get("epic_distance"),
        "exploit": (s.get("exploitation") or {}).get("exploit_rate"),
        "label_mae": label_mae,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="runs/grm_targets")
    ap.add_argument("--tasks", default="all", help="all | tabletop | comma-separated env ids")
    ap.add_argument("--held_out", default=",".join(HELD_OUT))
    ap.add_argument("--config", default="configs/grm/default.yaml")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--demos", type=int, default=30)
    ap.add_argument("--train_rollouts", type=int, default=4)
    ap.add_argument(
        "--hard_rollouts",
        type=int,
        default=10,
        help="extra near-miss and random-freeze training rollouts per training task",
    )
    ap.add_argument("--recover_demos", type=int, default=5, help="tabletop tasks only")
    ap.add_argument(
        "--retreat_demos",
        type=int,
        default=0,
        help="per training task: demos whose arm withdraws after success (policy retreat)",
    )
    ap.add_argument(
        "--giveup_rollouts",
        type=int,
        default=0,
        help="per training task: rollouts that withdraw the arm mid-task (policy give-up)",
    )
    ap.add_argument(
        "--undo_rollouts",
        type=int,
        default=0,
        help="per training task: undo rollouts (success, then undone) trained on by outcome",
    )
    ap.add_argument(
        "--undo_early_rollouts",
        type=int,
        default=0,
        help="per training task: rollouts that retrace the arm mid-task (policy undo-early)",
    )
    ap.add_argument(
        "--calib_rollouts",
        type=int,
        default=4,
        help="per policy and training task, for the outcome thresholds; 0: training rollouts",
    )
    ap.add_argument("--eval_demos", type=int, default=5)
    ap.add_argument("--eval_rollouts", type=int, default=4)
    ap.add_argument("--exploit_sequences", type=int, default=64)
    ap.add_argument("--adapt_steps", type=int, default=300)
    ap.add_argument(
        "--mine_starts",
        type=int,
        default=0,
        help="adversarial mining: start states searched per training task (0: no mining)",
    )
    ap.add_argument("--mine_sequences", type=int, default=64, help="action sequences per start")
    ap.add_argument("--mine_steps", type=int, default=3000, help="fine-tuning steps on the mined")
    ap.add_argument("--mine_lr", type=float, default=3e-4)
    ap.add_argument("--jobs", type=int, default=1, help="concurrent mining/evaluation processes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of training (0: config)")
    ap.add_argument(
        "--ensemble",
        default="",
        help="comma-separated earlier bench folders: score their models' ensemble, no training",
    )
    ap.add_argument("--ensemble_combine", default="mean", help="mean | min")
    ap.add_argument(
        "--data_only",
        action="store_true",
        help="collect the data of --tasks and --held_out, then stop (run several at once on "
        "disjoint task lists to collect in parallel)",
    )
    a = ap.parse_args()
    root = Path(a.out)
    tasks = {"all": TABLETOP + MT10, "tabletop": TABLETOP}.get(
        a.tasks, [t for t in a.tasks.split(",") if t]
    )
    t0 = time.time()
    data = {t: build_data(t, root, a) for t in tasks}
    if a.data_only:
        for t in [h for h in a.held_out.split(",") if h]:
            build_data(t, root, one_shot_args(a))
        print(f"data of {len(tasks)} tasks in {root / 'data'}; {time.time() - t0:.0f} s")
        return
    model = root / "general" / "model"
    members = [Path(m) for m in a.ensemble.split(",") if m]
    if members and not model.exists():
        ensemble_of([m / "general" / "model" for m in members], model, a.ensemble_combine)
    elif not model.exists():
        code = robo(
            [
                "reward",
                "train",
                "--data",
                ",".join(str(d["train"]) for d in data.values()),
                "--config",
                a.config,
                "--out",
                str(root / "general"),
                "--steps",
                str(a.steps),
                *(["--threads", str(a.threads)] if a.threads else []),
            ]
        )
        if code:
            raise SystemExit("training failed")
    if not (model / "thresholds.json").exists():
        calibrate(model, list(data.values()))  # before mining: its reports use delta
    models = [("general", model)]
    if a.mine_starts:
        mined = mine_all(model, data, root, a)
        tuned = root / "general-mined" / "model"
        if not tuned.exists():
            train_args = [
                "reward",
                "train",
                "--data",
                ",".join(str(d["train"]) for d in data.values()),
                "--outcomes",
                ",".join(mined),
                "--init",
                str(model),
                "--config",
                a.config,
                "--out",
                str(root / "general-mined"),
                "--steps",
                str(a.mine_steps),
                "--lr",
                str(a.mine_lr),
                *(["--threads", str(a.threads)] if a.threads else []),
            ]
            if robo(train_args):
                raise SystemExit("fine-tuning on the mined rollouts failed")
        models.append(("general+mined", tuned))
    for _, m in models:
        if not (m / "thresholds.json").exists():
            calibrate(m, list(data.values()))
    suffix = {"general": "", "general+mined": "-mined"}
    jobs = [
        (
            f"eval{suffix[k]}-{name(t)}",
            m,
            d["eval"],
            f"{d['train']}:0",
            root / f"eval{suffix[k]}" / name(t),
            True,
        )
        for k, m in models
        for t, d in data.items()
    ]
    final_key, final = models[-1]
    held_out = [h for h in a.held_out.split(",") if h]
    for t in held_out:
        paths = build_data(t, root, one_shot_args(a))
        adapted = root / f"adapted{suffix[final_key]}" / name(t)
        if members and not adapted.exists():
            ensemble_of([m / "adapted" / name(t) for m in members], adapted, a.ensemble_combine)
            (adapted / "thresholds.json").write_text((final / "thresholds.json").read_text())
        elif not adapted.exists():
            robo(
                [
                    "reward",
                    "adapt",
                    "--model",
                    str(final),
                    "--demo",
                    f"{paths['train']}:0",
                    "--out",
                    str(adapted),
                    "--steps",
                    str(a.adapt_steps),
                ]
            )
            (adapted / "thresholds.json").write_text((final / "thresholds.json").read_text())
        jobs.append(
            (
                f"eval-adapted{suffix[final_key]}-{name(t)}",
                adapted,
                paths["eval"],
                f"{paths['train']}:0",
                root / f"eval-adapted{suffix[final_key]}" / name(t),
                False,
            )
        )
    summaries = evaluate_all(jobs, a, root / "logs")
    rows = []
    for k, m in models:
        spacing = label_spacing(m)
        rows += [
            row(
                t,
                summaries[f"eval{suffix[k]}-{name(t)}"],
                True,
                label_floor(d["train"], spacing) if spacing else None,
                k,
            )
            for t, d in data.items()
        ]
    rows += [
        row(
            f"{t} (one-shot)",
            summaries[f"eval-adapted{suffix[final_key]}-{name(t)}"],
            False,
            None,
            final_key,
        )
        for t in held_out
    ]
    n = len(EpisodeStore.open(str(next(iter(data.values()))["eval"])))
    print(f"\n{len(tasks)} training tasks, {n} eval episodes each; {time.time() - t0:.0f} s")
    for k, _ in models:
        seen = [r for r in rows if r["seen"] and r["model"] == k]
        rows.append(mean_row(seen, "mean over training tasks", k))
    rows.append(
        mean_row([r for r in rows if r["seen"] is False], "mean over one-shot tasks", final_key)
    )
    report(
        "grm_targets",
        rows,
        [
            "model",
            "task",
            "seen",
            "episodes",
            "voc",
            "mae",
            "pearson",
            "regress",
            "outcome_acc",
            "acc_no_undo",
            "false_succ",
            "acc_any_step",
            "fsr_any_step",
            "acc_privileged",
            "epic",
            "exploit",
            "label_mae",
        ],
        str(root / "grm_targets.json"),
    )
    # Where the progress error comes from: MAE pooled over each rollout policy's frames.
    by_policy = [
        mae_by_policy([summaries[f"eval{suffix[k]}-{name(t)}"] for t in data], "training tasks", k)
        for k, _ in models
    ]
    by_policy.append(
        mae_by_policy(
            [summaries[f"eval-adapted{suffix[final_key]}-{name(t)}"] for t in held_out],
            "one-shot tasks",
            final_key,
        )
    )
    policies = sorted({c for r in by_policy for c in r} - {"model", "tasks", "all"})
    print()
    report(
        "grm_mae_by_policy",
        by_policy,
        ["model", "tasks", *policies, "all"],
        str(root / "grm_mae_by_policy.json"),
    )


def mae_by_policy(summaries: list[dict], tasks: str, model: str) -> dict:
    """Progress MAE pooled over the frames of each rollout policy (``noisy:0.3`` counts as
    ``noisy``), and over all frames, from eval summaries' per-episode figures."""
    err: dict[str, float] = {}
    frames: dict[str, int] = {}
    for s in summaries:
        for e in s.get("per_episode", []):
            if e.get("mae") is None:
                continue
            for p in (e["policy"].partition(":")[0], "all"):
                err[p] = err.get(p, 0.0) + e["mae"] * e["length"]
                frames[p] = frames.get(p, 0) + e["length"]
    return {"model": model, "tasks": tasks, **{p: err[p] / frames[p] for p in frames}}


def ensemble_of(models: list[Path], out: Path, combine: str) -> None:
    missing = [str(m) for m in models if not m.exists()]
    if missing:
        raise SystemExit(f"--ensemble: {', '.join(missing)} not found: run those benches first")
    write_ensemble(EnsembleConfig(",".join(str(m) for m in models), str(out), combine))


def label_spacing(model: Path) -> str | None:
    """The label spacing a trained model was trained with (None for an ensemble)."""
    config = model / "config.json"
    if not config.exists():
        return None
    return str(GRMConfig.from_dict(json.loads(config.read_text())["config"]).label_spacing)


def one_shot_args(a: argparse.Namespace) -> argparse.Namespace:
    """A held-out task's data: one demo to adapt from and its evaluation set; none of its
    rollouts is ever trained on."""
    one_shot = {
        "demos": 1,
        "train_rollouts": 0,
        "hard_rollouts": 0,
        "recover_demos": 0,
        "retreat_demos": 0,
        "giveup_rollouts": 0,
        "undo_rollouts": 0,
        "undo_early_rollouts": 0,
        "calib_rollouts": 0,
    }
    return argparse.Namespace(**{**vars(a), **one_shot})


def mean_row(rows: list[dict], label: str, model: str) -> dict:
    import numpy as np

    keys = (
        "voc",
        "mae",
        "pearson",
        "regress",
        "outcome_acc",
        "acc_no_undo",
        "false_succ",
        "acc_any_step",
        "fsr_any_step",
        "acc_privileged",
        "epic",
        "exploit",
        "label_mae",
    )
    out = {
        "model": model,
        "task": label,
        "seen": None,
        "episodes": sum(r["episodes"] or 0 for r in rows),
    }
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and r[k] == r[k]]
        out[k] = float(np.mean(vals)) if vals else None
    return out


if __name__ == "__main__":
    main()
