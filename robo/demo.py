"""`make demo`: the platform's main job, end to end on a multi-stage task.

1. Record expert demonstrations and non-expert rollouts of pick-and-place.
2. Train a small GRM on the demonstrations (and outcome-labelled training rollouts).
3. Evaluate it on held-out rollouts (VOC, MAE, outcomes, EPIC; plots and an MP4).
4. Train a policy from a behaviour-cloned start with pbrs(GRM) and with the sparse reward.
5. Write a report folder: plots, JSON, an MP4 of the final policy with its progress overlay.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import draccus
import numpy as np

from robo.collect import CollectConfig, collect
from robo.preview import PreviewConfig, preview


@dataclass
class DemoConfig:
    """The main job's settings (defaults: about 10 minutes on 2 CPU cores)."""

    # env id of the multi-stage task to run on.
    env: str = "tabletop/pick-place-v0"
    # report folder.
    out: str = "runs/demo"
    # number of expert demonstrations.
    demos: int = 20
    # training rollouts per non-expert policy (outcome labels only).
    train_rollouts: int = 2
    # held-out evaluation rollouts per non-expert policy.
    rollouts: int = 3
    # image size in pixels.
    size: int = 96
    # GRM config (its image size must match --size).
    grm_config: str = "configs/grm/default.yaml"
    # GRM training steps.
    grm_steps: int = 1200
    # exploitation-test sequences in the GRM evaluation.
    exploit_sequences: int = 16
    # RL environment steps per condition.
    rl_steps: int = 3000


NON_EXPERT = ("noisy:0.3", "near-miss", "undo", "half", "random-freeze")


def record(cfg: DemoConfig, out: Path) -> tuple[str, str]:
    demos, eval_store = str(out / "demos"), str(out / "rollouts")
    collect(CollectConfig(env=cfg.env, episodes=cfg.demos, size=cfg.size, out=demos, seed=0))
    for k, policy in enumerate(("noisy:0.3", "near-miss", "half", "random-freeze")):
        collect(
            CollectConfig(
                env=cfg.env,
                episodes=cfg.train_rollouts,
                size=cfg.size,
                policy=policy,
                out=demos,
                seed=500 + 100 * k,
            )
        )
    collect(
        CollectConfig(env=cfg.env, episodes=cfg.rollouts, size=cfg.size, out=eval_store, seed=5000)
    )
    for k, policy in enumerate(NON_EXPERT):
        collect(
            CollectConfig(
                env=cfg.env,
                episodes=cfg.rollouts,
                size=cfg.size,
                policy=policy,
                out=eval_store,
                seed=1000 + 100 * k,
            )
        )
    preview(PreviewConfig(data=demos, episode=0, out=str(out / "demo_ep0.mp4")))
    return demos, eval_store


def train_grm(cfg: DemoConfig, demos: str, out: Path) -> Path:
    from robo.reward.train import TrainConfig, train

    base = draccus.parse(TrainConfig, config_path=cfg.grm_config, args=["--data", demos])
    base.out, base.steps = str(out / "grm"), cfg.grm_steps
    return train(base)


def evaluate_grm(model_dir: Path, demos: str, eval_store: str, out: Path, exploit: int) -> dict:
    from robo.reward.evalcmd import EvalConfig, run_eval

    # thresholds are chosen on the training rollouts (in the demos store) only
    run_eval(
        EvalConfig(
            model=str(model_dir),
            data=demos,
            reference=f"{demos}:0",
            out=str(out / "eval_train"),
            calibrate=True,
            video_episodes=0,
        )
    )
    return run_eval(
        EvalConfig(
            model=str(model_dir),
            data=eval_store,
            reference=f"{demos}:0",
            out=str(out / "eval"),
            video_episodes=2,
            exploit_sequences=exploit,
            exploit_starts=1,
        )
    )


def train_policies(cfg: DemoConfig, model_dir: Path, demos: str, out: Path) -> dict:
    from robo.rl.compare import CompareConfig, Condition, compare
    from robo.rl.train import RLConfig
    from robo.shaping import ShapingConfig

    run = RLConfig(
        env=cfg.env,
        steps=cfg.rl_steps,
        demos=demos,
        eval_every=max(cfg.rl_steps // 3, 1),
        eval_episodes=10,
        bc_epochs=1500,
        critic_warmup=300,
        actor_delay=cfg.rl_steps // 3,
    )
    conditions = [
        Condition("sparse", "none", ShapingConfig(mode="sparse")),
        Condition("pbrs(grm)", f"grm:{model_dir}", ShapingConfig(mode="pbrs")),
    ]
    return compare(
        CompareConfig(run=run, conditions=conditions, seeds=[0], out=str(out / "rl"), workers=2)
    )


def policy_video(cfg: DemoConfig, model_dir: Path, demos: str, out: Path) -> Path:
    """The final pbrs(GRM) policy acting, views side by side, predicted progress drawn over them."""
    import sim
    from robo.preview import annotate, write_video
    from robo.reward.registry import load_progress_model
    from robo.rl.demosac import DemoSAC
    from robo.rl.train import RLConfig, demo_context

    pm = load_progress_model(f"grm:{model_dir}")
    ctx = demo_context(RLConfig(env=cfg.env, demos=demos), pm)
    policy = DemoSAC.load(out / "rl" / "pbrs(grm)" / "seed0" / "final_policy")
    env = sim.make(cfg.env, views=pm.views, image_size=pm.image_size[0])
    obs, info = env.reset(seed=4242)
    frames = env.unwrapped.render_views()
    phi = float(pm.reset([0], [ctx], frames[None]).progress[0])
    video = []
    for t in range(160):
        tiled = np.ascontiguousarray(
            np.kron(np.concatenate(list(frames), 1), np.ones((2, 2, 1), np.uint8))
        )
        video.append(
            annotate(tiled, [f"t={t} progress={phi:.2f}", "SUCCESS" if info.get("success") else ""])
        )
        obs, _, term, trunc, info = env.step(policy.predict(obs, deterministic=True)[0])
        frames = env.unwrapped.render_views()
        phi = float(pm.predict(frames[None], [0]).progress[0])
        if term or trunc:
            break
    env.close()
    return write_video(out / "policy_pbrs.mp4", np.stack(video), fps=20)


# what a demo run writes in its report folder (a re-run replaces these, and only these)
DEMO_OUTPUTS = (
    "demos",
    "rollouts",
    "grm",
    "eval",
    "eval_train",
    "rl",
    "report.json",
    "demo_ep0.mp4",
    "policy_pbrs.mp4",
)


def clear_previous(out: Path) -> None:
    """Remove an earlier demo's outputs (the stores are append-only: a re-run would add to them)."""
    import shutil

    old = [out / name for name in DEMO_OUTPUTS if (out / name).exists()]
    if old:
        print(f"replacing the previous demo report in {out}/")
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def run(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clear_previous(out)
    t0 = time.time()
    demos, eval_store = record(cfg, out)
    model_dir = train_grm(cfg, demos, out)
    grm_eval = evaluate_grm(model_dir, demos, eval_store, out, cfg.exploit_sequences)
    rl = train_policies(cfg, model_dir, demos, out)
    video = policy_video(cfg, model_dir, demos, out)
    keys = (
        "voc",
        "progress_mae",
        "progress_pearson",
        "outcome_accuracy",
        "false_success_rate",
        "epic_distance",
    )
    report = {
        "env": cfg.env,
        "demos": demos,
        "rollouts": eval_store,
        "grm": str(model_dir),
        "grm_eval": {k: grm_eval.get(k) for k in keys},
        "rl_final_success": {k: v["success_mean"][-1] for k, v in rl.items()},
        "policy_video": str(video),
        "wall_time_s": round(time.time() - t0, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(
        f"\ndemo done in {report['wall_time_s']} s: report in {out}/ "
        "(report.json, eval/ plots and videos, rl/curves.png, policy_pbrs.mp4)"
    )
    return report


def main() -> None:
    run(draccus.parse(DemoConfig))


if __name__ == "__main__":
    main()
