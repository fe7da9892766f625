"""`robo rl compare`: reward conditions on the same seeds and budget, curves and a summary table.

    robo rl compare --config configs/rl/pick_place_cpu.yaml

Each condition (sparse, naive, pbrs per reward source, oracle ...) is trained with the
same seeds, budget and warm start; success-vs-episodes and success-vs-steps curves (mean
± std over seeds) go to ``<out>/curves.png`` and ``<out>/compare.json``, a table to stdout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from robo.errors import RoboError
from robo.rl.train import RLConfig, train
from robo.shaping import ShapingConfig


@dataclass
class Condition:
    """One reward condition."""

    # label in plots and tables, e.g. pbrs(grm).
    name: str = ""
    # reward source spec (grm:<dir>, vlm:<dir>, perceptual:<dir>) or none.
    reward: str = "none"
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    # close the reward-refinement loop in this condition (GRM rewards only).
    refine: bool = False
    # run settings of this condition only, over the shared ones, e.g. {residual_scale: 0.5}
    # or {ibrl: true}: compare learners as well as rewards. The budget, seeds, env and
    # evaluation stay shared (see FIXED_RUN_FIELDS).
    run: dict = field(default_factory=dict)


# Settings a condition may not override: they make its runs comparable with the others'
# (same env, budget in env steps, seeds and evaluation), or have fields of their own.
FIXED_RUN_FIELDS = frozenset(
    {
        "env",
        "steps",
        "seed",
        "out",
        "eval_every",
        "eval_episodes",
        "max_episode_steps",
        "action_chunk",
        "reward",
        "shaping",
        "refine",
    }
)


def condition_run(run: RLConfig, cond: Condition, **extra) -> RLConfig:
    """The shared run settings with the condition's reward, shaping, refinement and
    overrides (one-line errors for a setting that does not exist or must stay shared)."""
    known = {f.name for f in fields(RLConfig)}
    for key in cond.run:
        if key not in known:
            raise RoboError(
                f"condition {cond.name!r}: run has no setting {key!r} (see `robo rl train --help`)"
            )
        if key in FIXED_RUN_FIELDS:
            raise RoboError(
                f"condition {cond.name!r}: {key!r} is shared by all conditions; set it under "
                "`run:` at the top (reward, shaping and refine are condition fields)"
            )
    return replace(
        run, **cond.run, reward=cond.reward, shaping=cond.shaping, refine=cond.refine, **extra
    )


@dataclass
class CompareConfig:
    """A comparison of reward conditions."""

    # the shared run settings (env, algo, steps, demos, eval cadence ...); reward/shaping come per condition.
    run: RLConfig = field(default_factory=lambda: RLConfig(env="tabletop/pick-place-v0"))
    conditions: list[Condition] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out: str = "runs/compare"
    # runs trained at once, each in its own process (1: one after the other, in this process).
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.conditions:
            raise RoboError("no conditions to compare: list them under `conditions:` in the config")
        for c in self.conditions:
            condition_run(self.run, c).validate()
        if self.workers < 1:
            raise RoboError(f"workers={self.workers} must be at least 1")
        names = [c.name for c in self.conditions]
        if "" in names or len(set(names)) != len(names):
            raise RoboError(f"conditions need unique, non-empty names, got {names}")


def _train_quietly(run: RLConfig) -> dict:
    """A run in a worker process (no progress bar: several would interleave)."""
    return train(run, progress_bar=False)


def compare(cfg: CompareConfig) -> dict:
    out = Path(cfg.out)
    jobs = [
        (
            cond.name,
            condition_run(cfg.run, cond, seed=seed, out=str(out / cond.name / f"seed{seed}")),
        )
        for cond in cfg.conditions
        for seed in cfg.seeds
    ]
    if cfg.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool:
            summaries = list(pool.map(_train_quietly, [run for _, run in jobs]))
    else:
        summaries = [train(run) for _, run in jobs]
    results: dict[str, list[list[dict]]] = {c.name: [] for c in cfg.conditions}
    refinements: dict[str, list] = {c.name: [] for c in cfg.conditions}
    for (name, _), s in zip(jobs, summaries, strict=True):
        results[name].append(s["evaluations"])
        if s.get("refinement"):
            refinements[name].append(s.get("refinement_false_success") or {})
    summary = {name: _aggregate(runs, refinements[name]) for name, runs in results.items()}
    (out / "compare.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(
        json.dumps(
            {
                "seeds": cfg.seeds,
                "env": cfg.run.env,
                "steps": cfg.run.steps,
                "conditions": summary,
                "runs": results,
            },
            indent=2,
            default=str,
        )
    )
    plot_curves(summary, out / "curves.png", cfg.run.env)
    _table(summary)
    print(f"report: {out}/ (compare.json, curves.png)")
    return summary


def _aggregate(runs: list[list[dict]], refinements: list | None = None) -> dict:
    n = min(len(r) for r in runs)
    succ = np.array([[e["success_rate"] for e in r[:n]] for r in runs])
    extra = {}
    if refinements:  # false-success rate before the first refinement and pooled after it
        extra["false_success_before_refine"] = _nanmean([r.get("before") for r in refinements])
        extra["false_success_after_refine"] = _nanmean([r.get("after") for r in refinements])
        extra["missed_success_before_refine"] = _nanmean(
            [r.get("missed_before") for r in refinements]
        )
        extra["missed_success_after_refine"] = _nanmean(
            [r.get("missed_after") for r in refinements]
        )
        extra["refinements"] = float(np.mean([r.get("refinements", 0) for r in refinements]))
    return {
        **extra,
        "step": [runs[0][k]["step"] for k in range(n)],
        "train_episodes": np.mean([[e["train_episodes"] for e in r[:n]] for r in runs], 0).tolist(),
        "success_mean": succ.mean(0).tolist(),
        "success_std": succ.std(0).tolist(),
        "false_success_rate": _nanmean([r[n - 1]["false_success_rate"] for r in runs]),
        "missed_success_rate": _nanmean([r[n - 1].get("missed_success_rate") for r in runs]),
        "progress_mae": _nanmean([r[n - 1]["progress_mae"] for r in runs]),
    }


def _nanmean(values) -> float:
    """Mean over the runs that have the figure (NaN, quietly, when none has: no reward model)."""
    vals = [v for v in values if v is not None and v == v]
    return float(np.mean(vals)) if vals else float("nan")


def plot_curves(summary: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for name, s in summary.items():
        m, sd = np.array(s["success_mean"]), np.array(s["success_std"])
        for ax, x in zip(axes, (s["train_episodes"], s["step"]), strict=True):
            ax.plot(x, m, label=name)
            ax.fill_between(x, m - sd, m + sd, alpha=0.2)
    for ax, xl in zip(axes, ("training episodes", "environment steps"), strict=True):
        ax.set_xlabel(xl)
        ax.set_ylabel("success rate (20 deterministic episodes)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def success_at_episodes(s: dict, episodes: int = 150) -> float:
    """Mean success of the last evaluation taken within ``episodes`` training episodes."""
    idx = [k for k, e in enumerate(s["train_episodes"]) if e <= episodes]
    return s["success_mean"][idx[-1]] if idx else float("nan")


def _table(summary: dict) -> None:
    print(
        f"{'condition':<22}{'start':>7}{'final success':>16}{'best':>7}{'@150 ep':>9}"
        f"{'false succ':>12}{'MAE':>8}{'refine fsr before->after':>26}"
    )
    for name, s in summary.items():
        ref = (
            f"{s['false_success_before_refine']:.2f} -> {s['false_success_after_refine']:.2f}"
            if "false_success_before_refine" in s
            else ""
        )
        print(
            f"{name:<22}{s['success_mean'][0]:>7.2f}{s['success_mean'][-1]:>10.2f} ± {s['success_std'][-1]:.2f}"
            f"{max(s['success_mean']):>7.2f}{success_at_episodes(s):>9.2f}"
            f"{s['false_success_rate']:>12.2f}{s['progress_mae']:>8.3f}{ref:>26}"
        )
