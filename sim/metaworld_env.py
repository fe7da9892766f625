"""Meta-World v3 tasks behind the :mod:`sim.base` contract.

Any of metaworld 3.1.1's 50 v3 tasks, by name, as a ``gymnasium.Env`` with the same
extras as the own tabletop suite (named upright camera views, stages, privileged
progress, a scripted expert)::

    import sim
    env = sim.make("metaworld/pick-place-v3", views=("front", "side", "wrist"), image_size=96)

What the adapter adds on top of metaworld:

* **Seeding.** ``reset(seed=s)`` is deterministic: the seed drives metaworld's own
  layout sampling (``_last_rand_vec`` with ``seeded_rand_vec``), so object and goal
  positions follow from the seed alone. ``Randomization(object_pose=False)`` keeps one
  fixed layout; ``colors`` / ``lighting`` jitter geom and material colours and the
  lights, from independent streams of the same seed.
* **Fresh reset observations.** Several tasks (dial-turn, drawer-open, faucet-open,
  lever-pull, window-open/close) move bodies in ``reset_model`` without a forward
  pass, so metaworld's reset observation reports stale object positions. The adapter
  runs ``mj_forward`` and rebuilds the observation, which then matches the state.
* **Cameras.** Meta-World's fixed ``corner*`` cameras are defined upside down for
  ``mujoco.Renderer``; frames are rotated by 180 degrees so every view is upright.
  Aliases: ``front`` = ``corner``, ``side`` = ``corner3``, ``wrist`` = ``gripperPOV``.
* **Stages and privileged progress** from simulator state (see :class:`MetaWorldEnv`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.policies import ENV_POLICY_MAP
from metaworld.policies.policy import Policy
from metaworld.sawyer_xyz_env import SawyerXYZEnv

from sim.base import (
    Randomization,
    SimError,
    make_renderer,
    tile_views,
    validate_image_size,
    validate_views,
)

__all__ = [
    "CAMERA_ALIASES",
    "CAMERA_NAMES",
    "METAWORLD_TASKS",
    "MT10_TASKS",
    "MetaWorldEnv",
    "MetaWorldExpert",
    "MetaWorldTask",
]

# ---------------------------------------------------------------------------- cameras

#: Meta-World's own cameras, in model order.
CAMERA_NAMES: tuple[str, ...] = (
    "topview",
    "corner",
    "corner2",
    "corner3",
    "corner4",
    "behindGripper",
    "gripperPOV",
)
#: Suite-wide view names mapped onto Meta-World cameras.
CAMERA_ALIASES: dict[str, str] = {"front": "corner", "side": "corner3", "wrist": "gripperPOV"}
# These fixed cameras have their image "up" axis pointing at the floor.
_ROTATE_180 = frozenset({"corner", "corner2", "corner3", "corner4"})

# ---------------------------------------------------------------------------- progress legs

DistFn = Callable[[SawyerXYZEnv], float]
PointFn = Callable[[SawyerXYZEnv], np.ndarray]
Vec = tuple[float, float, float]

#: A reach leg is done when the gripper is this close (m) to its aim point.
NEAR_RADIUS = 0.04
#: Weight of the height error in reach progress (horizontal error counts fully).
REACH_Z_WEIGHT = 0.5
#: A later stage is entered once this fraction of its distance has been covered.
MOVED_FRACTION = 0.05
#: Smallest normalisation span (m or rad), so a leg that starts almost done stays finite.
MIN_SPAN = 0.01
#: The layout used for every episode when object poses are not randomised.
FIXED_LAYOUT_SEED = 0


@dataclass(frozen=True)
class _Leg:
    """One stage: a distance from simulator state that shrinks to ``radius`` when done.

    ``done`` (default ``dist <= radius``) decides when the next stage may begin.
    """

    name: str
    dist: DistFn
    radius: float
    done: Callable[[SawyerXYZEnv], bool] | None = None

    def is_done(self, env: SawyerXYZEnv, dist: float) -> bool:
        return bool(self.done(env)) if self.done is not None else dist <= self.radius


def _obj(env: SawyerXYZEnv) -> np.ndarray:
    return np.asarray(env._get_pos_objects()[:3], dtype=np.float64)


def _second_obj(env: SawyerXYZEnv) -> np.ndarray:
    return np.asarray(env._get_pos_objects()[3:6], dtype=np.float64)


def _tcp(env: SawyerXYZEnv) -> np.ndarray:
    return np.asarray(env.tcp_center, dtype=np.float64).copy()


def _site(name: str) -> PointFn:
    return lambda env: env.data.site(name).xpos.copy()


def _target(env: SawyerXYZEnv) -> np.ndarray:
    assert env._target_pos is not None
    return np.asarray(env._target_pos, dtype=np.float64)


def _reach(name: str, offset: Vec = (0.0, 0.0, 0.0), point: PointFn = _obj) -> _Leg:
    """Gripper (finger centre) to ``point + offset``, where the expert makes contact.

    Progress counts horizontal distance fully and height at ``REACH_Z_WEIGHT``: the
    experts lift over obstacles before descending, which a plain Euclidean distance
    would score as moving away. The leg is done within ``NEAR_RADIUS`` (Euclidean).
    """
    off = np.asarray(offset)

    def error(env: SawyerXYZEnv) -> np.ndarray:
        return _tcp(env) - (point(env) + off)

    def dist(env: SawyerXYZEnv) -> float:
        e = error(env)
        return float(np.linalg.norm(e[:2]) + REACH_Z_WEIGHT * abs(e[2]))

    return _Leg(name, dist, NEAR_RADIUS, lambda env: np.linalg.norm(error(env)) <= NEAR_RADIUS)


def _to_goal(
    name: str,
    radius: float,
    scale: Vec = (1.0, 1.0, 1.0),
    offset: Vec = (0.0, 0.0, 0.0),
    point: PointFn = _obj,
    goal: PointFn = _target,
) -> _Leg:
    """Weighted distance of ``point + offset`` to the goal, metaworld's success quantity."""
    w, off = np.asarray(scale), np.asarray(offset)
    return _Leg(name, lambda env: float(np.linalg.norm((point(env) + off - goal(env)) * w)), radius)


def _lever_error(env: SawyerXYZEnv) -> float:
    return abs(-float(env.data.joint("LeverAxis").qpos[0]) - np.pi / 2.0)


def _nail_left(env: SawyerXYZEnv) -> float:
    return max(0.0, 0.09 - float(env.data.joint("NailSlideJoint").qpos[0]))


def _nut_below_goal(env: SawyerXYZEnv) -> float:
    return max(0.0, float(_target(env)[2] - _obj(env)[2]))


def _hoop(env: SawyerXYZEnv) -> np.ndarray:
    return _target(env) * np.array([1.0, 1.0, 0.0]) + np.array([0.0, 0.0, 0.3])


def _hammer_head(env: SawyerXYZEnv) -> np.ndarray:
    return _obj(env) + np.array([0.16, 0.06, 0.0])


X, Y, Z, XY = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)

# ---------------------------------------------------------------------------- task table


@dataclass(frozen=True)
class MetaWorldTask:
    """A Meta-World v3 task: metaworld classes, instruction and progress stages."""

    name: str
    env_cls: type[SawyerXYZEnv]
    policy_cls: type[Policy]
    text: str
    legs: tuple[_Leg, ...]

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(leg.name for leg in self.legs)


def _push(
    noun: str, verb: str, radius: float, reach_offset: Vec = (0.0, 0.0, 0.0), **goal
) -> tuple[_Leg, ...]:
    """The generic two stages: reach the object, then move it (or its part) to the goal."""
    return (_reach(f"reach the {noun}", reach_offset), _to_goal(f"{verb}", radius, **goal))


_SPECS: dict[str, tuple[str, tuple[_Leg, ...]]] = {
    "assembly-v3": (
        "pick up the nut and put it onto the peg",
        (
            _reach("reach the nut handle"),
            _to_goal("bring the nut over the peg", 0.02, scale=XY, point=_site("RoundNut")),
        ),
    ),
    "basketball-v3": (
        "pick up the basketball and dunk it into the hoop",
        _push(
            "basketball", "carry the ball into the hoop", 0.08, scale=(1.0, 1.0, 2.0), goal=_hoop
        ),
    ),
    "bin-picking-v3": (
        "pick the cube out of one bin and place it into the other bin",
        _push("cube", "move the cube into the other bin", 0.05),
    ),
    "box-close-v3": (
        "grasp the lid and put it on the box",
        _push("lid", "put the lid on the box", 0.08, reach_offset=(0.0, 0.0, 0.025)),
    ),
    "button-press-topdown-v3": (
        "press the button from the top",
        _push("button", "press the button down", 0.024),
    ),
    "button-press-topdown-wall-v3": (
        "press the button behind the wall from the top",
        _push("button", "press the button down", 0.024, reach_offset=(0.0, -0.05, -0.02)),
    ),
    "button-press-v3": (
        "press the button from the front",
        _push("button", "press the button in", 0.02, reach_offset=(0.0, -0.02, -0.11), scale=Y),
    ),
    "button-press-wall-v3": (
        "press the button behind the wall from the front",
        _push("button", "press the button in", 0.03, reach_offset=(0.0, -0.02, -0.01), scale=Y),
    ),
    "coffee-button-v3": (
        "push the button on the coffee machine",
        _push("button", "press the button in", 0.02, reach_offset=(0.0, -0.04, -0.115), scale=Y),
    ),
    "coffee-pull-v3": (
        "pull the mug out from under the coffee machine",
        _push("mug", "pull the mug to the goal", 0.07),
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine",
        _push("mug", "push the mug to the goal", 0.07),
    ),
    "dial-turn-v3": (
        "turn the dial",
        _push("dial", "turn the dial to the goal", 0.07, reach_offset=(0.03, 0.03, 0.05)),
    ),
    "disassemble-v3": (
        "pick the nut up off the peg",
        (_reach("reach the nut handle"), _Leg("lift the nut off the peg", _nut_below_goal, 0.0)),
    ),
    "door-close-v3": (
        "push the door closed",
        _push("door", "swing the door closed", 0.08, reach_offset=(0.03, 0.12, 0.055)),
    ),
    "door-lock-v3": (
        "lock the door by turning the lock down",
        _push("lock", "turn the lock down", 0.02, reach_offset=(-0.02, -0.02, -0.02), scale=Z),
    ),
    "door-open-v3": (
        "open the door by pulling its handle",
        _push(
            "door handle", "swing the door open", 0.08, reach_offset=(0.0, 0.015, -0.05), scale=X
        ),
    ),
    "door-unlock-v3": (
        "unlock the door by turning the lock up",
        _push("lock", "turn the lock up", 0.02, reach_offset=(-0.01, -0.01, -0.07), scale=X),
    ),
    "drawer-close-v3": (
        "push the drawer closed",
        _push("drawer", "push the drawer closed", 0.065, reach_offset=(0.0, 0.0, -0.08)),
    ),
    "drawer-open-v3": (
        "pull the drawer open",
        _push("drawer handle", "pull the drawer open", 0.03, reach_offset=(0.0, -0.045, -0.07)),
    ),
    "faucet-close-v3": (
        "turn the faucet handle to close the faucet",
        _push("faucet handle", "turn the faucet closed", 0.07, reach_offset=(0.0, 0.045, -0.02)),
    ),
    "faucet-open-v3": (
        "turn the faucet handle to open the faucet",
        _push(
            "faucet handle",
            "turn the faucet open",
            0.07,
            reach_offset=(0.0, 0.045, -0.02),
            offset=(-0.04, 0.0, 0.03),
        ),
    ),
    "hammer-v3": (
        "pick up the hammer and drive the nail in",
        (
            _reach("reach the hammer handle", (-0.04, 0.0, -0.055)),
            _to_goal(
                "bring the hammer head to the nail",
                0.03,
                point=_hammer_head,
                goal=_site("nailHead"),
            ),
            _Leg("drive the nail in", _nail_left, 0.0),
        ),
    ),
    "hand-insert-v3": (
        "push the puck into the hole",
        _push("puck", "move the puck into the hole", 0.05),
    ),
    "handle-press-side-v3": (
        "press the handle down from the side",
        _push("handle", "press the handle down", 0.02, reach_offset=(0.0, 0.01, -0.05), scale=Z),
    ),
    "handle-press-v3": (
        "press the handle down",
        _push("handle", "press the handle down", 0.02, reach_offset=(0.0, -0.03, -0.065), scale=Z),
    ),
    "handle-pull-side-v3": (
        "pull the handle up from the side",
        _push("handle", "pull the handle up", 0.08),
    ),
    "handle-pull-v3": (
        "pull the handle up",
        _push("handle", "pull the handle up", 0.05, reach_offset=(0.0, -0.03, -0.04), scale=Z),
    ),
    "lever-pull-v3": (
        "pull the lever up",
        (
            _reach("reach under the lever", (0.01, -0.05, -0.14)),
            _Leg("raise the lever", _lever_error, np.pi / 24.0),
        ),
    ),
    "peg-insert-side-v3": (
        "pick up the peg and insert it sideways into the hole",
        _push(
            "peg",
            "insert the peg into the hole",
            0.07,
            scale=(1.0, 2.0, 2.0),
            point=_site("pegHead"),
        ),
    ),
    "peg-unplug-side-v3": (
        "unplug the peg sideways",
        _push("peg", "pull the peg out", 0.07),
    ),
    "pick-out-of-hole-v3": (
        "pick the puck out of the hole",
        _push("puck", "lift the puck to the goal", 0.07),
    ),
    "pick-place-v3": (
        "pick the puck and place it at the goal",
        _push("puck", "carry the puck to the goal", 0.07),
    ),
    "pick-place-wall-v3": (
        "pick the puck and place it at the goal behind the wall",
        _push("puck", "carry the puck over the wall to the goal", 0.07),
    ),
    "plate-slide-back-side-v3": (
        "slide the plate sideways out of the cabinet",
        _push("plate", "slide the plate to the goal", 0.07, reach_offset=(0.05, 0.01, 0.015)),
    ),
    "plate-slide-back-v3": (
        "slide the plate back out of the cabinet",
        _push("plate", "slide the plate to the goal", 0.07, reach_offset=(0.02, -0.07, 0.01)),
    ),
    "plate-slide-side-v3": (
        "slide the plate sideways into the cabinet",
        _push("plate", "slide the plate into the cabinet", 0.07, reach_offset=(0.05, 0.0, -0.015)),
    ),
    "plate-slide-v3": (
        "slide the plate into the cabinet",
        _push("plate", "slide the plate into the cabinet", 0.07),
    ),
    "push-back-v3": (
        "push the puck back to the goal",
        _push("puck", "push the puck to the goal", 0.07),
    ),
    "push-v3": (
        "push the puck to the goal",
        _push("puck", "push the puck to the goal", 0.05),
    ),
    "push-wall-v3": (
        "push the puck around the wall to the goal",
        _push("puck", "push the puck to the goal", 0.07),
    ),
    "reach-v3": (
        "reach the goal position",
        (_to_goal("move the gripper to the goal", 0.05, point=_tcp),),
    ),
    "reach-wall-v3": (
        "reach the goal position over the wall",
        (_to_goal("move the gripper to the goal", 0.05, point=_tcp),),
    ),
    "shelf-place-v3": (
        "pick the puck and place it on the shelf",
        _push("puck", "carry the puck onto the shelf", 0.07),
    ),
    "soccer-v3": (
        "push the soccer ball into the goal",
        _push("ball", "push the ball into the goal", 0.07),
    ),
    "stick-pull-v3": (
        "grasp the stick and pull the thermos to the goal with it",
        (
            _reach("reach the stick"),
            _to_goal("hook the stick into the thermos", 0.05, goal=_second_obj),
            _to_goal("pull the thermos to the goal", 0.12, point=_second_obj),
        ),
    ),
    "stick-push-v3": (
        "grasp the stick and push the thermos to the goal with it",
        (
            _reach("reach the stick"),
            _to_goal("bring the stick to the thermos", 0.05, goal=_second_obj),
            _to_goal("push the thermos to the goal", 0.12, point=_second_obj),
        ),
    ),
    "sweep-into-v3": (
        "sweep the puck into the hole",
        _push("puck", "sweep the puck into the hole", 0.05, scale=XY),
    ),
    "sweep-v3": (
        "sweep the puck off the table",
        _push("puck", "sweep the puck off the edge", 0.05),
    ),
    "window-close-v3": (
        "slide the window closed",
        _push(
            "window handle",
            "slide the window closed",
            0.05,
            reach_offset=(0.0, -0.02, -0.14),
            scale=X,
        ),
    ),
    "window-open-v3": (
        "slide the window open",
        _push(
            "window handle",
            "slide the window open",
            0.05,
            reach_offset=(0.025, -0.02, -0.14),
            scale=X,
        ),
    ),
}

#: The 50 v3 tasks in metaworld's own order: name -> :class:`MetaWorldTask`.
METAWORLD_TASKS: OrderedDict[str, MetaWorldTask] = OrderedDict(
    (
        name,
        MetaWorldTask(name, env_cls, ENV_POLICY_MAP[name], _SPECS[name][0], _SPECS[name][1]),
    )
    for name, env_cls in ALL_V3_ENVIRONMENTS.items()
)

#: Meta-World's MT10 benchmark tasks.
MT10_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)

# ---------------------------------------------------------------------------- expert


class MetaWorldExpert:
    """Metaworld's scripted policy for a task, behind :class:`sim.base.ExpertPolicy`.

    The policies are stateless functions of the observation; ``stage`` follows the
    environment's own ``info["stage"]`` of the step the action answers.
    """

    def __init__(self, policy: Policy):
        self.policy = policy
        self.stage = 0

    def reset(self) -> None:
        """Start a new episode."""
        self.stage = 0

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """Return the scripted action for ``obs`` as ``float32`` in ``[-1, 1]``."""
        self.stage = int(info.get("stage", self.stage))
        with warnings.catch_warnings():
            # metaworld's move() warns whenever its P-controller saturates.
            warnings.simplefilter("ignore", UserWarning)
            action = self.policy.get_action(np.asarray(obs, dtype=np.float64))
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


# ---------------------------------------------------------------------------- environment

# Relative positions a policy sees (``sim.relative_obs``): pairs ``(a, b)`` of observation
# indices whose difference ``obs[a] - obs[b]`` follows the observation as extra features:
# first object - hand (39:42), second object - hand (42:45), goal - hand (45:48) and goal -
# first object (48:51). The hand always starts at the same place while the objects and goals
# move with the scene, so a policy cloned from a few demos must read "where the handle is
# from the hand", which the absolute positions give it only by extrapolation (drawer-open,
# one demo: the clone failed wherever the handle lay more than 10 cm from the demo's).
RELATIVE_OBS = tuple(
    (a + k, b + k) for a, b in ((4, 0), (11, 0), (36, 0), (36, 4)) for k in range(3)
)
# The part of that (observation, then the relative positions) a shift of the scene leaves
# unchanged: heights, the gripper opening, object orientations and the relative positions.
# Left out: absolute table positions and the previous frame's copy (18:36), from which a
# cloned policy reads its own velocity and continues whatever it was doing.
INVARIANT_OBS = (2, 3, 6, 7, 8, 9, 10, 13, 14, 15, 16, 17, *range(39, 51))


class MetaWorldEnv(gym.Env):
    """A Meta-World v3 task with the :mod:`sim.base` contract.

    Observations are metaworld's flat 39-d vector with the goal visible (as in the
    MT benchmarks): hand position, gripper opening, object poses, the previous frame's
    copy of those, and the goal. Actions are ``Box(-1, 1, (4,))``. The reward is
    metaworld's own (v2 reward functions, in ``[0, 10]``).

    Stages and privileged progress: each task is a short list of legs (see
    ``stage_names``), each a distance ``d_k`` computed from simulator state that shrinks
    to a radius ``r_k`` when the leg is done. Object tasks have two legs: the gripper to
    where the expert makes contact with the object (done within 4 cm), then metaworld's
    own success quantity with its success radius (the object's or handle's weighted
    distance to the goal, the lever angle, the nut height). Stick and hammer tasks have
    three legs (tool, tool to object, object to goal or nail depth); reach tasks one.
    Within leg ``k``, ``w_k = clip(1 - (d_k - r_k) / (d_k(0) - r_k), 0, 1)`` with
    ``d_k(0)`` taken at reset. The stage is the last leg ``k`` whose predecessor is done
    or that is already under way (``w_k >= 0.05``); it is recomputed from state at every
    step, so it falls back when an object is pushed away again.
    ``privileged_progress = (stage + w_stage) / num_stages``, and ``1.0`` on success
    (metaworld's own success flag).

    Args:
        task: a v3 task name, e.g. ``"pick-place-v3"`` (see :data:`METAWORLD_TASKS`).
        views: camera names rendered by :meth:`render_views`: Meta-World's cameras
            (:data:`CAMERA_NAMES`) or the aliases ``front``, ``side``, ``wrist``.
        image_size: square size in pixels, or ``(H, W)``.
        render_mode: ``None`` or ``"rgb_array"`` (views tiled side by side).
        randomization: domain randomisation switches; object poses are randomised by default.
        max_episode_steps: horizon (truncation); default metaworld's ``max_path_length`` (500).
        terminate_on_success: end the episode when the task is solved.

    Raises:
        SimError: for an unknown task, camera, image size or render mode.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}
    RELATIVE_OBS = RELATIVE_OBS
    INVARIANT_OBS = INVARIANT_OBS

    def __init__(
        self,
        task: str,
        views: Sequence[str] | str = ("front", "side", "wrist"),
        image_size: int | tuple[int, int] = 96,
        render_mode: str | None = None,
        randomization: Randomization | dict | None = None,
        max_episode_steps: int | None = None,
        terminate_on_success: bool = False,
    ):
        if task not in METAWORLD_TASKS:
            import difflib

            close = difflib.get_close_matches(str(task), list(METAWORLD_TASKS), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise SimError(
                f"unknown Meta-World task {task!r}.{hint} "
                "See sim.metaworld_env.METAWORLD_TASKS or run `robo envs` for the 50 names."
            )
        self.task_info = METAWORLD_TASKS[task]
        self.task = task
        env_id = f"metaworld/{task}"
        available = {**{a: a for a in CAMERA_ALIASES}, **{c: c for c in CAMERA_NAMES}}
        self.views = validate_views(views, available, env_id)
        self.image_size = validate_image_size(image_size)
        if render_mode not in (None, "rgb_array"):
            raise SimError(f"render_mode={render_mode!r} is not supported: use None or 'rgb_array'")
        if isinstance(randomization, dict):
            randomization = Randomization(**randomization)
        if max_episode_steps is not None and int(max_episode_steps) < 1:
            raise SimError(
                f"max_episode_steps={max_episode_steps} must be a positive number of steps"
            )
        self.render_mode = render_mode
        self.randomization = randomization or Randomization()
        self.terminate_on_success = bool(terminate_on_success)

        mw = self.task_info.env_cls()
        mw._partially_observable = False  # goal in the observation, as in MT benchmarks
        del mw.sawyer_observation_space  # cached for the old observability
        mw._set_task_called = True
        mw._freeze_rand_vec = False
        mw.seeded_rand_vec = True
        self.max_episode_steps = int(max_episode_steps or mw.max_path_length)
        mw.max_path_length = self.max_episode_steps
        self._mw = mw
        self.model: mujoco.MjModel = mw.model
        self.data: mujoco.MjData = mw.data

        self.model.vis.quality.offsamples = 0
        h, w = self.image_size
        self.model.vis.global_.offheight = max(int(self.model.vis.global_.offheight), h)
        self.model.vis.global_.offwidth = max(int(self.model.vis.global_.offwidth), w)
        self._cameras = tuple(CAMERA_ALIASES.get(v, v) for v in self.views)
        self._renderer: mujoco.Renderer | None = None
        self._defaults = (
            self.model.geom_rgba.copy(),
            self.model.mat_rgba.copy(),
            self.model.light_diffuse.copy(),
            self.model.light_pos.copy(),
        )

        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.observation_space = mw.sawyer_observation_space
        self.num_stages = len(self.task_info.legs)
        self.stage_names = self.task_info.stage_names
        self.task_text = self.task_info.text
        self._d0 = np.zeros(self.num_stages)
        self._t = 0
        self._needs_reset = True

    # ------------------------------------------------------------------ gym API
    @property
    def dt(self) -> float:
        """Seconds of simulated time per control step."""
        return float(self._mw.dt)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode.

        Args:
            seed: fixes the object and goal layout, colours and lighting of this episode
                (and seeds the generator of later unseeded resets).
            options: unused.

        Returns:
            The observation and an info dict with ``success``, ``stage`` and
            ``privileged_progress``.
        """
        super().reset(seed=seed)
        episode = np.random.SeedSequence(int(self.np_random.integers(2**63)))
        layout, colors, lights = episode.spawn(3)
        self._randomize_appearance(np.random.default_rng(colors), np.random.default_rng(lights))
        if not self.randomization.object_pose:
            layout = np.random.SeedSequence(FIXED_LAYOUT_SEED)
        self._mw.np_random = np.random.default_rng(layout)
        self._mw.reset()
        mujoco.mj_forward(self.model, self.data)
        obs = self._fresh_obs()
        self._t = 0
        self._needs_reset = False
        self._d0 = np.array([leg.dist(self._mw) for leg in self.task_info.legs])
        return obs, self._progress_info(success=False)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply an end-effector displacement and gripper command for one control step.

        Args:
            action: ``(dx, dy, dz, gripper)`` in ``[-1, 1]`` (clipped).

        Returns:
            ``(obs, reward, terminated, truncated, info)`` with metaworld's reward and info
            keys plus ``success`` (bool), ``stage`` and ``privileged_progress``.

        Raises:
            SimError: before ``reset()`` or after truncation, or for a malformed action.
        """
        if self._needs_reset:
            raise SimError(
                f"metaworld/{self.task}: no episode running (not started, or truncated at "
                f"{self.max_episode_steps} steps): call reset() before step()"
            )
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(-1), -1.0, 1.0)
        if action.shape != (4,):
            raise SimError(
                f"action has shape {action.shape}: expected 4 values (dx, dy, dz, gripper)"
            )
        obs, reward, _, _, mw_info = self._mw.step(action)
        self._t += 1
        success = bool(mw_info.get("success", False))
        info = {**mw_info, **self._progress_info(success)}
        terminated = success and self.terminate_on_success
        at_horizon = self._t >= self.max_episode_steps
        truncated = at_horizon and not terminated
        # metaworld refuses to step past its horizon; stepping on after success is fine.
        self._needs_reset = at_horizon
        return np.asarray(obs, dtype=np.float64), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """All views tiled side by side (``render_mode="rgb_array"``), else ``None``."""
        if self.render_mode == "rgb_array":
            return tile_views(self.render_views())
        return None

    def close(self) -> None:
        """Free the renderer and metaworld's own resources."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._mw.close()

    # ------------------------------------------------------------------ contract extras
    def render_views(self) -> np.ndarray:
        """Frames of all views, upright, as ``uint8 (V, H, W, 3)``."""
        if self._renderer is None:
            self._renderer = make_renderer(self.model, self.image_size, skybox=True)
        out = np.empty((len(self.views), *self.image_size, 3), np.uint8)
        for i, cam in enumerate(self._cameras):
            self._renderer.update_scene(self.data, camera=cam)
            frame = self._renderer.render()
            out[i] = frame[::-1, ::-1] if cam in _ROTATE_180 else frame
        return out

    def expert(self) -> MetaWorldExpert:
        """Metaworld's scripted policy for this task."""
        return MetaWorldExpert(self.task_info.policy_cls())

    def flat_state(self) -> np.ndarray:
        """``qpos`` and ``qvel`` as one ``float32`` vector."""
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float32)

    def stage_distances(self) -> np.ndarray:
        """Current distance of every leg to its goal (m, or rad for angles)."""
        return np.array([leg.dist(self._mw) for leg in self.task_info.legs])

    # ------------------------------------------------------------------ internals
    def _fresh_obs(self) -> np.ndarray:
        """Metaworld's reset observation, rebuilt after a forward pass and clipped like ``step``."""
        mw = self._mw
        curr = mw._get_curr_obs_combined_no_goal()
        mw._prev_obs = curr.copy()
        obs = np.hstack((curr, curr, mw._get_pos_goal()))
        space = self.observation_space
        return np.clip(obs, space.low, space.high).astype(np.float64)

    def _stage_and_within(self) -> tuple[int, float]:
        legs = self.task_info.legs
        d = self.stage_distances()
        radius = np.array([leg.radius for leg in legs])
        span = np.maximum(self._d0 - radius, MIN_SPAN)
        within = np.clip(1.0 - (d - radius) / span, 0.0, 1.0)
        stage = 0
        for k in range(1, len(legs)):
            if legs[k - 1].is_done(self._mw, d[k - 1]) or within[k] >= MOVED_FRACTION:
                stage = k
        return stage, float(within[stage])

    def _progress_info(self, success: bool) -> dict[str, Any]:
        if success:
            stage, within = self.num_stages - 1, 1.0
        else:
            stage, within = self._stage_and_within()
        progress = 1.0 if success else min((stage + within) / self.num_stages, 1.0)
        return {
            "success": bool(success),
            "stage": int(stage),
            "privileged_progress": float(progress),
        }

    def _randomize_appearance(
        self, color_rng: np.random.Generator, light_rng: np.random.Generator
    ) -> None:
        geom_rgba, mat_rgba, diffuse, light_pos = self._defaults
        m, r = self.model, self.randomization
        m.geom_rgba[:] = geom_rgba
        m.mat_rgba[:] = mat_rgba
        m.light_diffuse[:] = diffuse
        m.light_pos[:] = light_pos
        if r.colors:
            j = r.color_jitter
            m.geom_rgba[:, :3] = np.clip(
                geom_rgba[:, :3] + color_rng.uniform(-j, j, (m.ngeom, 3)), 0, 1
            )
            m.mat_rgba[:, :3] = np.clip(
                mat_rgba[:, :3] + color_rng.uniform(-j, j, (m.nmat, 3)), 0, 1
            )
        if r.lighting:
            j = r.light_jitter
            gain = 1.0 + light_rng.uniform(-j, j, (m.nlight, 1))
            m.light_diffuse[:] = np.clip(diffuse * gain, 0.0, 1.0)
            m.light_pos[:] = light_pos + light_rng.uniform(-j, j, light_pos.shape)
