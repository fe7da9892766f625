"""`make demo`: the platform's main job, end to end on a multi-stage task.

For now: record expert demonstrations and non-expert rollouts of pick-and-place into
an episode store and write previews. Later stages (reward model, shaped RL) append
their steps here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import draccus

from robo.collect import CollectConfig, collect
from robo.preview import PreviewConfig, preview


@dataclass
class DemoConfig:
    """The main job's settings."""

    # env id of the multi-stage task to run on.
    env: str = "tabletop/pick-place-v0"
    # report folder.
    out: str = "runs/demo"
    # number of expert demonstrations.
    demos: int = 20
    # rollouts per non-expert policy.
    rollouts: int = 5
    # image size in pixels.
    size: int = 96


NON_EXPERT = ("noisy:0.3", "near-miss", "undo", "half", "random-freeze")


def run(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    demos = str(out / "demos")
    eval_store = str(out / "rollouts")
    collect(CollectConfig(env=cfg.env, episodes=cfg.demos, size=cfg.size, out=demos, seed=0))
    for k, policy in enumerate(NON_EXPERT):
        collect(CollectConfig(env=cfg.env, episodes=cfg.rollouts, size=cfg.size, policy=policy,
                              out=eval_store, seed=1000 + 100 * k))
    previews = [str(preview(PreviewConfig(data=demos, episode=0, out=str(out / "demo_ep0.mp4"))))]
    for i in range(0, cfg.rollouts * len(NON_EXPERT), cfg.rollouts):
        previews.append(str(preview(PreviewConfig(data=eval_store, episode=i, out=str(out / f"rollout_ep{i}.mp4")))))
    report = {"env": cfg.env, "demos": demos, "rollouts": eval_store, "previews": previews,
              "wall_time_s": round(time.time() - t0, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"\ndemo done in {report['wall_time_s']} s: report in {out}/ (report.json, *.mp4)")
    return report


def main() -> None:
    run(draccus.parse(DemoConfig))


if __name__ == "__main__":
    main()
