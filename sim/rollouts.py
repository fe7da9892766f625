"""Rollout policies (expert and non-expert) and a rollout runner for any task of :mod:`sim`.

Reward models must be judged on what RL produces, not only on clean demos, so besides
the expert there are policies that fail in realistic ways. Each is built on the task's
scripted expert and the Gymnasium API only, so they work for the tabletop suite and
Meta-World alike:

==================  ==========================================================================
``expert``          the scripted expert, ending a few steps after success
``noisy:<sigma>``   the expert with Gaussian action noise of std ``sigma``
``near-miss``       the expert until a critical moment late in the task (mid-transport),
                    then the grasp slips / the tool is knocked aside, and the arm freezes
``undo``            the expert until success, then its motion replayed in reverse
                    (picking then carrying back, opening then closing)
``half``            the expert until about half of the task is done, then frozen
``recover[:<n>]``   the expert with ``n`` (default 1) scripted slips mid-task (the gripper
                    opens, the tool is knocked aside), each followed by the expert's own
                    recovery: it grasps again and finishes. A demonstration for RL that
                    covers the states a learning policy fails in; the slip steps are
                    listed in ``extra["perturbed"]`` so that behaviour cloning skips them
``random-freeze``   temporally smoothed random actions for a while, then frozen
``retreat``         the expert until success, then it lets go, lifts and returns the arm
                    towards where it started, for as long as the task stays solved: a
                    demonstration that "done" is a state of the objects, not of the arm
``give-up``         the expert until 30-80% of the task is done, then the same withdrawal:
                    the matched failure of ``retreat`` (the arm home says nothing of success)
``undo-early``      the expert until 30-80% of the task is done, then its motion replayed in
                    reverse: the matched failure of ``undo`` (the arm retraces its path
                    before the task is done, so a retraced arm says nothing of success)
==================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.base import SimError

POLICY_NAMES = (
    "expert",
    "noisy:<sigma>",
    "near-miss",
    "undo",
    "half",
    "random-freeze",
    "recover[:<n>]",
    "retreat",
    "give-up",
    "undo-early",
)


def outcome_of(success: np.ndarray, progress: np.ndarray, partial_threshold: float = 0.3) -> str:
    """Outcome per EVALUATION.md: success at any step, else partial if final progress >= 0.3."""
    if bool(np.any(success)):
        return "success"
    return "partial" if float(progress[-1]) >= partial_threshold else "failure"


class RolloutPolicy:
    """Base class: ``reset`` per episode, ``act`` per step, ``done`` when it wants to stop."""

    name = "policy"

    def __init__(self, env, rng: np.random.Generator):
        self.env = env
        self.rng = rng
        self.done = False
        self._grip = -1.0
        self._freeze_left = 0
        self.extra: dict[str, Any] = {}

    def reset(self) -> None:
        self.done = False
        self._grip = -1.0
        self.extra = {}

    def act(self, obs, info: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def _freeze(self) -> np.ndarray:
        """Hold still (gripper as it was) and finish after the freeze budget."""
        self._freeze_left -= 1
        if self._freeze_left <= 0:
            self.done = True
        return np.array([0.0, 0.0, 0.0, self._grip], np.float32)

    def _remember(self, action: np.ndarray) -> np.ndarray:
        self._grip = float(action[3])
        return np.asarray(action, np.float32)


class ExpertRollout(RolloutPolicy):
    """The scripted expert; stops ``linger`` steps after the first success."""

    name = "expert"

    def __init__(self, env, rng, linger: int = 3):
        super().__init__(env, rng)
        self.expert = env.unwrapped.expert()
        self.linger = linger

    def reset(self) -> None:
        super().reset()
        self.expert.reset()
        self._since_success = -1

    def act(self, obs, info):
        if info.get("success") or self._since_success >= 0:
            self._since_success += 1
            if self._since_success >= self.linger:
                self.done = True
        return self._remember(self.expert.act(obs, info))

    @property
    def stage(self) -> int:
        return int(self.expert.stage)


class NoisyRollout(ExpertRollout):
    """The expert with i.i.d. Gaussian action noise (gripper included)."""

    def __init__(self, env, rng, sigma: float):
        super().__init__(env, rng)
        if not 0.0 <= sigma <= 2.0:
            raise SimError(f"noise sigma {sigma} must lie in [0, 2]: use e.g. noisy:0.1")
        self.sigma = sigma
        self.name = f"noisy:{sigma:g}"

    def act(self, obs, info):
        a = super().act(obs, info)
        return np.clip(a + self.rng.normal(0.0, self.sigma, a.shape), -1, 1).astype(np.float32)


class NearMissRollout(ExpertRollout):
    """The expert until a critical moment, then a slip: the gripper opens, the tool is knocked aside.

    The moment is in the second-to-last stage (mid-transport for pick-and-place, mid-push,
    mid-opening), at a random fraction of that stage's progress.
    """

    name = "near-miss"

    def reset(self) -> None:
        super().reset()
        n = self.env.unwrapped.num_stages
        self.trigger_stage = n - 2 if n >= 3 else n - 1
        self.trigger_at = (self.trigger_stage + self.rng.uniform(0.3, 0.75)) / n
        self.slip_left: int | None = None  # None until the slip starts
        angle = self.rng.uniform(0, 2 * np.pi)
        self.slip_dir = np.array([np.cos(angle), np.sin(angle), 0.3])
        self._freeze_left = 12

    def act(self, obs, info):
        if self.slip_left is None:
            late = (
                info["stage"] >= self.trigger_stage
                and info["privileged_progress"] >= self.trigger_at
            )
            if not late:
                return super().act(obs, info)
            self.slip_left = 6
        if self.slip_left > 0:
            self.slip_left -= 1
            return self._remember(np.append(0.8 * self.slip_dir, -1.0))
        return self._freeze()


class RecoverRollout(ExpertRollout):
    """The expert, knocked off its task ``n_slips`` times mid-task, recovering each time.

    Each slip is triggered, like the near-miss slip, at a random point of a random stage
    between the second and the second-to-last (for pick-and-place: while lifting or carrying
    the cube); for 3-6 steps the gripper opens and the tool is pushed aside, then the expert
    is reset and takes over from wherever the object fell. The slip steps' indices go into
    ``extra["perturbed"]``: the transitions are real, but their actions are not the expert's.
    """

    def __init__(self, env, rng, n_slips: int = 1):
        super().__init__(env, rng)
        if not 1 <= n_slips <= 5:
            raise SimError(
                f"recover:{n_slips}: the number of slips must lie in 1..5, e.g. recover:1"
            )
        self.n_slips = int(n_slips)
        self.name = "recover" if n_slips == 1 else f"recover:{n_slips}"

    def reset(self) -> None:
        super().reset()
        self.slips_left = self.n_slips
        self.slip_left = 0
        self.t = 0
        self.extra = {"perturbed": []}
        self._arm()

    def _arm(self) -> None:
        """Choose where the next slip happens."""
        n = self.env.unwrapped.num_stages
        lo, hi = (1, n - 2) if n >= 3 else (n - 1, n - 1)
        self.trigger_stage = int(self.rng.integers(lo, hi + 1))
        self.trigger_at = (self.trigger_stage + self.rng.uniform(0.2, 0.8)) / n
        angle = self.rng.uniform(0, 2 * np.pi)
        self.slip_dir = np.array([np.cos(angle), np.sin(angle), 0.5])
        self.slip_steps = int(self.rng.integers(3, 7))

    def act(self, obs, info):
        t, self.t = self.t, self.t + 1
        if self.slip_left == 0 and self.slips_left > 0 and not info.get("success"):
            if (
                info["stage"] >= self.trigger_stage
                and info["privileged_progress"] >= self.trigger_at
            ):
                self.slips_left -= 1
                self.slip_left = self.slip_steps
        if self.slip_left > 0:
            self.slip_left -= 1
            self.extra["perturbed"].append(t)
            if self.slip_left == 0:
                self.expert.reset()  # take over from the new state
                if self.slips_left > 0:
                    self._arm()
            return self._remember(np.append(0.8 * self.slip_dir, -1.0))
        return super().act(obs, info)


class UndoRollout(ExpertRollout):
    """The expert to success, then its own motion replayed backwards (progress undone)."""

    name = "undo"

    def reset(self) -> None:
        super().reset()
        self.history: list[np.ndarray] = []
        self.replay: list[np.ndarray] | None = None

    def _reverse(self) -> None:
        """Replay the motion so far backwards; each step keeps its own gripper command, so
        a placed object is picked up again where it was released and carried back."""
        self.replay = [np.append(-a[:3], a[3]) for a in reversed(self.history)]

    def act(self, obs, info):
        if self.replay is None:
            if info.get("success"):
                self._reverse()
            else:
                a = self.expert.act(obs, info)
                self.history.append(np.asarray(a, np.float32))
                return self._remember(a)
        if not self.replay:
            self.done = True
            return np.array([0, 0, 0, self._grip], np.float32)
        return self._remember(self.replay.pop(0))


class UndoEarlyRollout(UndoRollout):
    """The expert until 30-80% of the task is done, then its own motion replayed backwards:
    a failure whose arm retraces the path an ``undo`` retraces after success, so that the
    arm's way back says nothing of the outcome (the matched negative of ``undo`` when
    undone successes are trained on as demonstrations). An object that slides on after the
    hand turns back (Meta-World's drawer and windows) can still end the task solved; the
    rollout's outcome says so."""

    name = "undo-early"

    def reset(self) -> None:
        super().reset()
        self.stop_at = self.rng.uniform(0.3, 0.8)

    def act(self, obs, info):
        if self.replay is None and (
            info.get("success") or info["privileged_progress"] >= self.stop_at
        ):
            self._reverse()
        return super().act(obs, info)


class RetreatRollout(ExpertRollout):
    """The expert to success, then the arm withdraws while the task stays solved.

    After the first success the gripper opens (if it was closed) for a few steps, the hand
    rises about 8 cm and then heads for where it started (plus a few centimetres of random
    offset, so no two retreats are alike). It stops at home, after ``budget`` retreat steps,
    or as soon as the environment no longer reports success (the frame where it was lost is
    recorded; :func:`robo.reward.data.demo_end` trims it from training labels).
    """

    name = "retreat"
    gain = 50.0  # action per metre of error (saturates at 2 cm; both suites move <= 1-2 cm/step)

    def __init__(self, env, rng, budget: int = 80):
        super().__init__(env, rng)
        self.budget = budget

    def reset(self) -> None:
        super().reset()
        self.home: np.ndarray | None = None
        self.waypoints: list[np.ndarray] | None = None
        self.release_left = 0
        self.retreat_steps = 0

    def _move(self, hand: np.ndarray, target: np.ndarray, grip: float) -> np.ndarray:
        delta = np.clip((target - hand) * self.gain, -1.0, 1.0)
        return self._remember(np.append(delta, grip).astype(np.float32))

    def _withdrawing(self, info) -> bool:
        """Whether the withdrawal starts (or has started) at this step."""
        return bool(info.get("success"))

    def _keeps_going(self, info) -> bool:
        """Whether the withdrawal may go on from this step."""
        return bool(info.get("success"))

    def act(self, obs, info):
        hand = np.asarray(obs[:3], np.float64)
        if self.home is None:
            self.home = hand + np.append(self.rng.normal(0.0, 0.03, 2), 0.0)
        if self.waypoints is None:
            if not self._withdrawing(info):
                return self._remember(self.expert.act(obs, info))
            self.waypoints = [hand + np.array([0.0, 0.0, 0.08]), self.home]
            self.release_left = 6 if self._grip > 0 else 0
        elif not self._keeps_going(info) or self.retreat_steps >= self.budget:
            self.done = True
            return np.array([0, 0, 0, self._grip], np.float32)
        self.retreat_steps += 1
        if self.release_left > 0:
            self.release_left -= 1
            return self._move(hand, hand, -1.0)
        while len(self.waypoints) > 1 and np.linalg.norm(self.waypoints[0] - hand) < 0.015:
            self.waypoints.pop(0)
        if np.linalg.norm(self.waypoints[0] - hand) < 0.015:
            self.done = True
            return np.array([0, 0, 0, -1.0], np.float32)
        return self._move(hand, self.waypoints[0], -1.0)


class GiveUpRollout(RetreatRollout):
    """The expert until 30-80% of the task is done, then the same withdrawal as ``retreat``
    (let go, lift, go home): a failure whose arm ends where a retreat's does, so that
    "the arm went home" says nothing of the outcome (the matched negative of ``retreat``)."""

    name = "give-up"

    def reset(self) -> None:
        super().reset()
        self.stop_at = self.rng.uniform(0.3, 0.8)

    def _withdrawing(self, info) -> bool:
        return bool(info.get("success")) or info["privileged_progress"] >= self.stop_at

    def _keeps_going(self, info) -> bool:
        return True


class HalfRollout(ExpertRollout):
    """The expert until about half the task is done, then frozen."""

    name = "half"

    def reset(self) -> None:
        super().reset()
        self.stop_at = self.rng.uniform(0.4, 0.6)
        self.stopped = False
        self._freeze_left = 20

    def act(self, obs, info):
        if self.stopped or info["privileged_progress"] >= self.stop_at:
            self.stopped = True
            return self._freeze()
        return super().act(obs, info)


class RandomFreezeRollout(RolloutPolicy):
    """Temporally smoothed random actions for 10-40 steps, then frozen for 20."""

    name = "random-freeze"

    def reset(self) -> None:
        super().reset()
        self.random_left = int(self.rng.integers(10, 41))
        self._freeze_left = 20
        self._a = np.zeros(4)

    def act(self, obs, info):
        if self.random_left <= 0:
            return self._freeze()
        self.random_left -= 1
        self._a = 0.8 * self._a + 0.2 * self.rng.normal(0, 1.5, 4)
        return self._remember(np.clip(self._a, -1, 1))


class ActionSequenceRollout(RolloutPolicy):
    """Plays a given action sequence ``(T, A)`` and stops at its end (not a ``make_policy``
    spec: it needs the actions). ``name`` labels the recorded episodes, e.g. the
    ``adversarial`` sequences that ``robo reward mine`` found."""

    def __init__(self, env, rng, actions: np.ndarray, name: str = "sequence"):
        super().__init__(env, rng)
        self.actions = np.asarray(actions, np.float32)
        if self.actions.ndim != 2 or self.actions.shape[1] != env.action_space.shape[0]:
            raise SimError(
                f"an action sequence must be (steps, {env.action_space.shape[0]}), "
                f"got {self.actions.shape}"
            )
        self.name = name

    def reset(self) -> None:
        super().reset()
        self.t = 0

    def act(self, obs, info):
        if self.t >= len(self.actions):
            self.done = True
            return np.zeros(self.actions.shape[1], np.float32)
        self.t += 1
        return self.actions[self.t - 1]


_PARAMETRISED = {  # spec prefix: (class, parser, default, what the parameter is, usage)
    "recover": (RecoverRollout, int, 1, "slip count", "recover:<n>, e.g. recover:2"),
    "noisy": (NoisyRollout, float, 0.1, "noise level", "noisy:<sigma>, e.g. noisy:0.2"),
}


def make_policy(spec: str, env, rng: np.random.Generator) -> RolloutPolicy:
    """Build a rollout policy from its spec (see module docstring)."""
    spec = spec.strip()
    for prefix, (cls, parse, default, what, usage) in _PARAMETRISED.items():
        if not spec.startswith(prefix):
            continue
        _, _, arg = spec.partition(":")
        try:
            return cls(env, rng, parse(arg) if arg else default)
        except ValueError as e:
            if isinstance(e, SimError):
                raise
            raise SimError(f"bad {what} in policy {spec!r}: use {usage}") from None
    table = {
        "expert": ExpertRollout,
        "near-miss": NearMissRollout,
        "undo": UndoRollout,
        "half": HalfRollout,
        "random-freeze": RandomFreezeRollout,
        "retreat": RetreatRollout,
        "give-up": GiveUpRollout,
        "undo-early": UndoEarlyRollout,
    }
    if spec not in table:
        raise SimError(f"unknown policy {spec!r}: choose from {', '.join(POLICY_NAMES)}")
    return table[spec](env, rng)


@dataclass
class Rollout:
    """One recorded episode. Row t: observation o_t, its info, the action taken at o_t
    (zeros on the last row) and the reward received on arriving at o_t (0 on row 0)."""

    frames: np.ndarray | None
    states: np.ndarray
    obs: np.ndarray
    actions: np.ndarray
    env_reward: np.ndarray
    success: np.ndarray
    stage: np.ndarray
    privileged_progress: np.ndarray
    seed: int
    policy: str
    outcome: str
    task: str
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.success)


def run_rollout(
    env, policy: RolloutPolicy, seed: int, render: bool = True, max_steps: int = 1000
) -> Rollout:
    """Run one episode of ``policy`` in ``env`` (a ``gym.make``'d task) from ``seed``."""
    u = env.unwrapped
    obs, info = env.reset(seed=seed)
    policy.reset()
    rows: dict[str, list] = {
        k: [] for k in ("frames", "states", "obs", "actions", "rew", "succ", "stage", "prog")
    }

    def record(o, r, inf):
        if render:
            rows["frames"].append(u.render_views())
        rows["states"].append(u.flat_state())
        rows["obs"].append(np.asarray(o, np.float32))
        rows["rew"].append(r)
        rows["succ"].append(bool(inf["success"]))
        rows["stage"].append(int(inf["stage"]))
        rows["prog"].append(float(inf["privileged_progress"]))

    record(obs, 0.0, info)
    for _ in range(max_steps):
        action = np.asarray(policy.act(obs, info), np.float32)
        if policy.done:
            break
        rows["actions"].append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        record(obs, float(reward), info)
        if terminated or truncated:
            break
    rows["actions"].append(np.zeros(env.action_space.shape, np.float32))
    success, progress = np.array(rows["succ"]), np.array(rows["prog"], np.float32)
    return Rollout(
        frames=np.stack(rows["frames"]) if render else None,
        states=np.stack(rows["states"]),
        obs=np.stack(rows["obs"]),
        actions=np.stack(rows["actions"]),
        env_reward=np.array(rows["rew"], np.float32),
        success=success,
        stage=np.array(rows["stage"], np.int16),
        privileged_progress=progress,
        seed=int(seed),
        policy=policy.name,
        outcome=outcome_of(success, progress),
        task=u.task_text,
        extra=dict(policy.extra),
    )
