"""The fixed-rate control loop on any :class:`hardware.robot.Robot`: policy, reward, timing, recording.

Library code only: operator input arrives as :class:`Event` values on a queue that the
CLI (``robo robot run``) fills from the keyboard; nothing here reads stdin.

Each step: read the observation, compute the reward model's progress on the camera
frames (the shaped reward ``gamma * Phi(s') - Phi(s)`` and the model's success detection),
ask the policy for an action, send it (the robot's safety layer clamps it and returns
what was sent), wait for the next tick. Timing (period jitter, overruns) is measured
per episode. Episodes are recorded to an episode store with the operator's outcome
label, so labelled episodes can feed the reward-refinement loop.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from models.base import TaskContext


class Event(StrEnum):
    """Operator input during an episode."""

    success = "success"  # label the episode a success and end it
    failure = "failure"  # label the episode a failure and end it
    end = "end"  # end the episode without a label
    pause = "pause"  # toggle pause (the robot holds)
    quit = "quit"  # end the episode and stop the session


@dataclass
class EpisodeResult:
    steps: int
    label: str | None
    quit: bool
    timing: dict
    progress: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    model_success: bool = False
    rows: dict = field(default_factory=dict)


def timing_stats(periods: np.ndarray, compute: np.ndarray, dt: float) -> dict:
    """Jitter and overruns of a loop that should tick every ``dt`` seconds."""
    if len(periods) == 0:
        return {"rate_hz": 1 / dt, "steps": 0}
    return {
        "rate_hz": 1 / dt,
        "steps": int(len(periods) + 1),
        "period_mean_ms": 1e3 * float(periods.mean()),
        "jitter_ms": 1e3 * float(periods.std()),
        "period_p99_ms": 1e3 * float(np.percentile(periods, 99)),
        "compute_p50_ms": 1e3 * float(np.percentile(compute, 50)),
        "compute_p99_ms": 1e3 * float(np.percentile(compute, 99)),
        "overruns": int((compute > dt).sum()),
    }


class ControlLoop:
    """Run episodes of ``policy`` on ``robot`` at ``rate_hz``.

    Args:
        robot: a connected :class:`hardware.robot.Robot`.
        policy: ``f(observation dict) -> action dict`` (see :func:`make_policy`).
        reward: an optional progress model; its views are read from the observation keys
            named by ``view_keys`` (default: the model's view names).
        context: the task context of the reward model.
        gamma: discount of the shaped reward.
    """

    def __init__(
        self,
        robot,
        policy: Callable[[dict], dict],
        rate_hz: float,
        reward=None,
        context: TaskContext | None = None,
        view_keys: dict[str, str] | None = None,
        gamma: float = 0.99,
    ):
        self.robot, self.policy, self.dt = robot, policy, 1.0 / rate_hz
        self.reward, self.context, self.gamma = reward, context or TaskContext(), gamma
        self.view_keys = view_keys or ({v: v for v in reward.views} if reward is not None else {})

    def _frames(self, obs: dict) -> np.ndarray:
        return np.stack([np.asarray(obs[self.view_keys[v]], np.uint8) for v in self.reward.views])[
            None
        ]

    def run_episode(self, events: queue.Queue | None = None, max_steps: int = 500) -> EpisodeResult:
        """One episode; ends at ``max_steps`` or on an operator event."""
        events = events or queue.Queue()
        getattr(
            self.policy, "reset", lambda: None
        )()  # stateful policies (scripted experts) restart
        rows: dict[str, list] = {"obs": [], "sent": []}
        progress, rewards, model_success = [], [], False
        obs = self.robot.get_observation()
        phi = None
        if self.reward is not None:
            phi = float(self.reward.reset([0], [self.context], self._frames(obs)).progress[0])
            progress.append(phi)
        periods, compute = [], []
        label, quit_, paused = None, False, False
        next_tick = time.perf_counter()
        last_tick = next_tick
        for _ in range(max_steps):
            ev = _drain(events)
            if Event.pause in ev:
                paused = not paused
            if ev & {Event.success, Event.failure, Event.end, Event.quit}:
                label = next((e.value for e in (Event.success, Event.failure) if e in ev), None)
                quit_ = Event.quit in ev
                break
            t0 = time.perf_counter()
            action = (
                self.robot.send_action(self.robot._hold_action())
                if paused
                else self.robot.send_action(self.policy(obs))
            )
            rows["obs"].append(obs)
            rows["sent"].append(action)
            obs = self.robot.get_observation()
            if self.reward is not None:
                out = self.reward.predict(self._frames(obs), [0])
                phi_next = float(out.progress[0])
                rewards.append(self.gamma * phi_next - phi)
                model_success |= bool(
                    phi_next
                    >= 1 - getattr(getattr(self.reward, "cfg", None), "success_delta", 0.05)
                )
                phi = phi_next
                progress.append(phi)
            compute.append(time.perf_counter() - t0)
            next_tick += self.dt
            time.sleep(max(0.0, next_tick - time.perf_counter()))
            now = time.perf_counter()
            periods.append(now - last_tick)
            last_tick = now
            if now - next_tick > self.dt:  # fell behind by a whole tick: re-anchor, count it
                next_tick = now
        rows["obs"].append(obs)
        return EpisodeResult(
            len(rows["sent"]),
            label,
            quit_,
            timing_stats(np.array(periods), np.array(compute), self.dt),
            progress,
            rewards,
            model_success,
            rows,
        )


def _drain(events: queue.Queue) -> set[Event]:
    out = set()
    while True:
        try:
            out.add(Event(events.get_nowait()))
        except queue.Empty:
            return out


class _ExpertPolicy:
    """The simulated task's scripted expert as a robot policy (cartesian actions)."""

    def __init__(self, env):
        self.env, self.expert = env, env.expert()

    def reset(self) -> None:
        self.expert.reset()

    def __call__(self, obs: dict) -> dict:
        action = self.expert.act(self.env._obs(), {})
        return dict(zip(("dx", "dy", "dz", "grip"), map(float, action), strict=True))


def make_policy(spec: str, robot) -> Callable[[dict], dict]:
    """``hold`` | ``expert`` (simulated arm in cartesian mode) | ``sb3:<checkpoint.zip>``.

    SB3 policies trained in simulation see the task's state vector; on the simulated arm it
    is read from the simulation, on other robots from the observation's float values.
    """
    from robo.errors import RoboError

    if spec == "hold":
        return lambda obs: robot._hold_action()
    if spec == "expert":
        env = getattr(robot, "unwrapped", None)
        if (
            env is None
            or not hasattr(env, "expert")
            or set(robot.action_features) != {"dx", "dy", "dz", "grip"}
        ):
            raise RoboError("--policy expert needs the simulated arm with action_space: cartesian")
        return _ExpertPolicy(env)
    kind, _, path = spec.partition(":")
    if kind != "sb3" or not path:
        raise RoboError(f"--policy {spec!r}: use hold, expert or sb3:<checkpoint.zip>")
    from stable_baselines3 import PPO

    from robo.rl.demosac import DemoSAC

    try:
        model = DemoSAC.load(path)
    except Exception:  # noqa: BLE001 - try the other algorithm before giving up
        model = PPO.load(path)
    keys = list(robot.action_features)
    size = int(np.prod(model.action_space.shape))
    if size % len(keys):
        raise RoboError(
            f"{path}: its policy outputs {size} values per decision, the robot takes "
            f"{len(keys)} ({', '.join(keys)}): use a policy trained for this robot's action space"
        )
    return _SB3Policy(model, robot, keys, size // len(keys))


class _SB3Policy:
    """An SB3 policy on the robot; one trained on action chunks (``--action_chunk k``) has its
    ``k`` actions sent on the next ``k`` control ticks, open-loop, as in training."""

    def __init__(self, model, robot, keys: list[str], chunk: int):
        self.model, self.robot, self.keys, self.chunk = model, robot, keys, chunk
        self.pending: list[np.ndarray] = []

    def reset(self) -> None:
        self.pending = []

    def __call__(self, obs: dict[str, Any]) -> dict:
        if not self.pending:
            env = getattr(self.robot, "unwrapped", None)
            state = (
                env._obs()
                if env is not None and hasattr(env, "_obs")
                else np.array([v for v in obs.values() if np.isscalar(v)], np.float32)
            )
            action = self.model.predict(state, deterministic=True)[0]
            self.pending = list(np.asarray(action).reshape(self.chunk, len(self.keys)))
        return dict(zip(self.keys, map(float, self.pending.pop(0)), strict=True))
