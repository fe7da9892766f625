"""`robo reward eval`: score a reward source on held-out episodes (figures of EVALUATION.md).

    robo reward eval --model grm:runs/grm/model --data data/pp-eval --reference data/pick-place:0
    robo reward eval --model runs/grm/model --data data/pp-train-rollouts --calibrate true

Outcome thresholds (delta, tau) are chosen on training-task rollouts only: ``--calibrate
true`` picks tau on the given data and stores it as ``thresholds.json`` in the model
folder; later evaluations of that model use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robo.errors import RoboError
from robo.store import EpisodeStore


@dataclass
class EvalConfig:
    """Settings of a reward-model evaluation."""

    # reward source: grm:<dir> (a bare folder means grm:<dir>).
    model: str = ""
    # episode store to evaluate on (expert and non-expert rollouts).
    data: str = ""
    # reference demo for the task context, <store>:<episode>; default: the first expert episode of --data.
    reference: str = ""
    # report folder; default runs/eval/<data name>.
    out: str = ""
    # choose tau on this data (training tasks only!) and save it with the model.
    calibrate: bool = False
    # success margin delta (success when progress >= 1 - delta).
    delta: float = 0.05
    # with --calibrate: also choose delta (else keep --delta) on the training tasks' rollouts.
    search_delta: bool = True
    # exploitation test: number of searched action sequences per start state (0: skip).
    exploit_sequences: int = 0
    # exploitation test: start states (seeds of the store's expert episodes).
    exploit_starts: int = 2
    exploit_method: str = "random"
    video_episodes: int = 1
    batch_episodes: int = 8
    # the store's task was seen in training (recorded in the summary).
    seen_in_training: bool = True
    # torch threads (0: leave torch's default).
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.model or not self.data:
            raise RoboError(
                "--model (e.g. grm:runs/grm/model) and --data (an episode store) are required"
            )
        if not 0.0 <= self.delta < 1.0:
            raise RoboError(f"--delta {self.delta} must lie in [0, 1)")
        if self.exploit_method not in ("random", "cem"):
            raise RoboError(f"--exploit_method {self.exploit_method}: use random or cem")
        if self.threads < 0:
            raise RoboError(f"--threads {self.threads} must be >= 0 (0: torch's default)")

    @property
    def spec(self) -> str:
        from robo.reward.registry import as_spec

        return as_spec(self.model)

    @property
    def model_dir(self) -> Path | None:
        from robo.reward.registry import model_dir

        return model_dir(self.spec)


def reference_episode(cfg: EvalConfig, store: EpisodeStore):
    """The demo whose first and last frames form the task context."""
    if cfg.reference:
        url, _, idx = cfg.reference.rpartition(":")
        if not url:
            raise RoboError(f"--reference {cfg.reference}: write it as <store>:<episode>")
        return EpisodeStore.open(url).episode(int(idx))
    for i in range(len(store)):
        if store.episode_meta(i).policy == "expert":
            return store.episode(i)
    raise RoboError(
        f"{cfg.data} has no expert episode to take the reference from: pass --reference <store>:<episode>"
    )


def _thresholds(cfg: EvalConfig, model, store, reference):
    from robo.evaluation import Thresholds, choose_thresholds, score_store

    saved = cfg.model_dir / "thresholds.json" if cfg.model_dir else None
    if cfg.calibrate:
        scores = score_store(model, store, reference, batch_episodes=cfg.batch_episodes)
        finals = [float(s.progress[-1]) for s in scores]
        outcomes = [store.episode_meta(i).outcome for i in range(len(store))]
        th = choose_thresholds(finals, outcomes, delta=None if cfg.search_delta else cfg.delta)
        th = Thresholds(th.delta, th.tau, f"calibrated on {cfg.data}")
        if saved is not None:
            saved.write_text(
                json.dumps({"delta": th.delta, "tau": th.tau, "source": th.source}, indent=2)
            )
            print(f"saved thresholds delta={th.delta:.3f} tau={th.tau:.3f} to {saved}")
        return th
    return saved_thresholds(cfg.model_dir) or Thresholds(cfg.delta, 0.3, "default")


def saved_thresholds(model_dir: Path | None):
    """The thresholds a calibration saved in the model folder, or None."""
    from robo.evaluation import Thresholds

    saved = model_dir / "thresholds.json" if model_dir else None
    if saved is None or not saved.is_file():
        return None
    d = json.loads(saved.read_text())
    return Thresholds(d["delta"], d["tau"], d.get("source", str(saved)))


def run_eval(cfg: EvalConfig) -> dict:
    from robo.evaluation import evaluate, exploitation_test
    from robo.reward.registry import load_progress_model

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    model = load_progress_model(cfg.spec)
    store = EpisodeStore.open(cfg.data)
    if len(store) == 0:
        raise RoboError(f"{cfg.data} has no complete episodes to evaluate")
    reference = reference_episode(cfg, store)
    out = Path(cfg.out or f"runs/eval/{Path(cfg.data.rstrip('/')).name}")
    thresholds = _thresholds(cfg, model, store, reference)
    summary = evaluate(
        model,
        store,
        reference,
        thresholds,
        out_dir=out,
        video_episodes=cfg.video_episodes,
        batch_episodes=cfg.batch_episodes,
        seen_in_training=cfg.seen_in_training,
    )
    if cfg.exploit_sequences > 0:
        summary["exploitation"] = _exploitation(
            cfg, model, store, reference, thresholds, exploitation_test
        )
    summary["model"] = cfg.spec
    (out / "summary.json").write_text(json.dumps(_clean(summary), indent=2, default=str))
    _print(summary)
    print(f"report: {out}/ (summary.json, plots/, videos/)")
    return summary


def _exploitation(cfg, model, store, reference, thresholds, exploitation_test) -> dict:
    seeds = [
        store.episode_meta(i).seed
        for i in range(len(store))
        if store.episode_meta(i).policy == "expert"
    ]
    runs = []
    for seed in seeds[: cfg.exploit_starts]:
        horizon = len(reference)
        runs.append(
            exploitation_test(
                model,
                store.env_id,
                seed,
                reference,
                horizon=horizon,
                n_sequences=cfg.exploit_sequences,
                method=cfg.exploit_method,
                delta=thresholds.delta,
                rng=seed,
            )
        )
    rates = [r["exploit_rate"] for r in runs]
    return {"exploit_rate": float(np.mean(rates)) if rates else float("nan"), "runs": runs}


def _clean(d):
    return json.loads(
        json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)).replace(
            "NaN", "null"
        )
    )


def _print(summary: dict) -> None:
    keys = [
        "episodes",
        "voc",
        "progress_mae",
        "progress_pearson",
        "regress_tracking",
        "outcome_accuracy",
        "outcome_accuracy_excluding_undo",
        "outcome_accuracy_any_step",
        "outcome_accuracy_privileged",
        "false_success_rate",
        "false_success_rate_any_step",
        "stage_accuracy",
        "epic_distance",
    ]
    for k in keys:
        v = summary.get(k)
        print(f"{k:>20}: {v:.3f}" if isinstance(v, float) else f"{k:>20}: {v}")
    if "exploitation" in summary:
        line = f"{'exploit_rate':>20}: {summary['exploitation']['exploit_rate']:.3f}"
        reached = [  # a false success at 0.95 is a near-miss, at 0.2 a hack
            p
            for run in summary["exploitation"]["runs"]
            for p, ok, called in zip(
                run.get("top_privileged_progress") or [None] * len(run["top_env_success"]),
                run["top_env_success"],
                run["top_model_success"],
                strict=True,
            )
            if called and not ok and p is not None
        ]
        if reached:
            line += " (privileged progress of the false successes: "
            line += ", ".join(f"{p:.2f}" for p in reached) + ")"
        print(line)
