"""`robo robot run|record`: drive a robot at a fixed rate, label and record episodes.

    robo robot run --robot configs/robots/sim_tabletop.yaml --policy sb3:runs/rl/.../final_policy.zip \
                   --reward grm:runs/grm/model --reference data/pick-place:0 --out data/robot-runs
    robo robot record --robot configs/robots/sim_tabletop.yaml --policy expert --out data/robot-demos

Keys while an episode runs (type the letter, then Enter): ``s`` success, ``f`` failure,
``e`` end without label, ``p`` pause / resume, ``q`` quit. Labelled episodes are stored
with their outcome, so they can refine the reward model (``robo rl train --refine``).
"""

from __future__ import annotations

import queue
import sys
import threading
from dataclasses import dataclass

import numpy as np

from robo.errors import RoboError

KEYS = {"s": "success", "f": "failure", "e": "end", "p": "pause", "q": "quit"}


@dataclass
class RobotRunConfig:
    """Settings of a session on a robot."""

    # robot config (YAML in configs/robots/).
    robot: str = ""
    # hold | expert (simulated arm, cartesian) | sb3:<checkpoint.zip>.
    policy: str = "hold"
    # reward source (grm:<dir>, vlm:..., perceptual:...) or none.
    reward: str = "none"
    # reference demo for the reward's task context: <store>:<episode>.
    reference: str = ""
    episodes: int = 1
    max_steps: int = 300
    # control rate (0: the robot config's control_hz).
    rate_hz: float = 0.0
    # episode store to record to ("" : do not record).
    out: str = ""
    # read operator keys from the terminal.
    keyboard: bool = True
    # name stored as the episodes' policy (e.g. expert for recorded demonstrations).
    label_policy: str = ""

    def __post_init__(self) -> None:
        if not self.robot:
            raise RoboError(
                "--robot is required: a robot config such as configs/robots/sim_tabletop.yaml"
            )
        if self.episodes < 1 or self.max_steps < 1:
            raise RoboError("--episodes and --max_steps must be positive")


def _keyboard(events: queue.Queue, stop: threading.Event) -> None:
    """Operator keys from stdin (a daemon thread; the loop never blocks on input)."""
    for line in sys.stdin:
        if stop.is_set():
            return
        key = line.strip().lower()[:1]
        if key in KEYS:
            events.put(KEYS[key])


def _context(cfg: RobotRunConfig, reward):
    from models.base import TaskContext
    from robo.store import EpisodeStore

    if not cfg.reference or reward is None:
        return TaskContext()
    url, _, idx = cfg.reference.rpartition(":")
    store = EpisodeStore.open(url)
    ep = store.episode(int(idx))
    vidx = [store.views.index(v) for v in reward.views]
    return TaskContext(ep.task, ep.frames[0][vidx], ep.frames[ep.goal_index][vidx])


def _image_keys(robot) -> list[str]:
    return [
        k for k, v in robot.observation_features.items() if isinstance(v, tuple) and len(v) == 3
    ]


def _episode(result, robot, cfg: RobotRunConfig, index: int, sim_success: bool | None):
    from robo.store import Episode

    keys = _image_keys(robot)
    obs = result.rows["obs"]
    frames = np.stack([np.stack([o[k] for k in keys]) for o in obs]).astype(np.uint8)
    scalar = [k for k, v in robot.observation_features.items() if v is float]
    states = np.array([[float(o[k]) for k in scalar] for o in obs], np.float32)
    akeys = list(robot.action_features)
    actions = np.zeros((len(obs), len(akeys)), np.float32)
    for t, sent in enumerate(result.rows["sent"]):
        actions[t] = [sent.get(k, 0.0) for k in akeys]
    label = result.label or (
        {True: "success", False: "failure"}.get(sim_success) if sim_success is not None else None
    )
    rewards = np.zeros(len(obs), np.float32)
    rewards[1 : 1 + len(result.rewards)] = result.rewards
    success = np.zeros(len(obs), bool)
    success[-1] = label == "success"
    return Episode(
        frames=frames,
        states=states,
        actions=actions,
        env_reward=rewards,
        success=success,
        stage=np.full(len(obs), -1, np.int16),
        privileged_progress=np.full(len(obs), np.nan, np.float32),
        task="",
        env_id=_env_id(robot),
        seed=index,
        policy=cfg.label_policy or cfg.policy.split(":")[0],
        outcome=label if label in ("success", "failure") else "partial",
        extra={
            "operator_label": result.label,
            "progress": result.progress,
            "timing": result.timing,
            "model_success": result.model_success,
        },
    )


def _env_id(robot) -> str:
    env = getattr(robot, "unwrapped", None)
    return getattr(env, "ENV_ID", None) or f"robot/{robot.config.id}"


def run(cfg: RobotRunConfig) -> list[dict]:
    from hardware.registry import make_robot_from_config
    from robo.collect import open_or_create
    from robo.control import ControlLoop, make_policy
    from robo.rl.train import load_reward

    reward = None if cfg.reward == "none" else load_reward(cfg.reward)
    robot = make_robot_from_config(cfg.robot)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    if cfg.keyboard and sys.stdin is not None and sys.stdin.isatty():
        threading.Thread(target=_keyboard, args=(events, stop), daemon=True).start()
        print("keys: s success, f failure, e end, p pause, q quit (then Enter)")
    summaries = []
    with robot:  # always a safe disconnect, also on exceptions and Ctrl-C
        loop = ControlLoop(
            robot,
            make_policy(cfg.policy, robot),
            cfg.rate_hz or robot.config.control_hz,
            reward,
            _context(cfg, reward),
        )
        store = None
        for k in range(cfg.episodes):
            if hasattr(robot, "reset") and k:
                robot.reset(seed=k)
            result = loop.run_episode(events, cfg.max_steps)
            env = getattr(robot, "unwrapped", None)
            sim_success = (
                bool(env._success()) if env is not None and hasattr(env, "_success") else None
            )
            if cfg.out:
                ep = _episode(result, robot, cfg, k, sim_success)
                if store is None:
                    store = open_or_create(
                        cfg.out,
                        ep.env_id,
                        _image_keys(robot),
                        ep.frames.shape[2],
                        ep.states.shape[1],
                        ep.actions.shape[1],
                    )
                store.append_episode(ep)
            summaries.append(
                {
                    "episode": k,
                    "steps": result.steps,
                    "label": result.label,
                    "sim_success": sim_success,
                    **result.timing,
                }
            )
            t = result.timing
            print(
                f"episode {k}: {result.steps} steps, label {result.label}, sim success {sim_success}, "
                f"jitter {t.get('jitter_ms', 0):.2f} ms, compute p99 {t.get('compute_p99_ms', 0):.1f} ms, "
                f"overruns {t.get('overruns', 0)}"
            )
            if result.quit:
                break
    stop.set()
    return summaries


@dataclass
class RobotRecordConfig(RobotRunConfig):
    """Settings of a demonstration-recording session."""

    # the demonstrator: expert (scripted, simulated arm) or sb3:<checkpoint.zip>.
    policy: str = "expert"
    # demonstrations are stored as policy "expert" so that training and adaptation use them.
    label_policy: str = "expert"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.out:
            raise RoboError("--out is required: the episode store to record demonstrations into")


def record(cfg: RobotRecordConfig) -> list[dict]:
    """Record demonstrations (scripted expert on the simulated arm, or a teleoperation policy)."""
    return run(cfg)
