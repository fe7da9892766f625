"""Base class of the tabletop tasks: physics, a Cartesian controller, cameras, randomisation."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from sim.base import (
    Randomization,
    SimError,
    make_renderer,
    tile_views,
    validate_image_size,
    validate_views,
)
from sim.tabletop.scene import CAMERA_NAMES, FINGER_OPEN, ObjectSpec, build_scene_xml

ARM_JOINTS = ("j1", "j2", "j3", "j4", "j5", "j6")
HOME_QPOS = np.array([0.0, 0.35, 1.9, 0.0, np.pi - 2.25, 0.0])
# Gripper pointing down, fingers closing along world y.
DOWN = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
WORKSPACE_LOW = np.array([-0.3, -0.35, 0.005])
WORKSPACE_HIGH = np.array([0.25, 0.35, 0.35])
# Observation vector: tool position (0:3) and velocity (3:6), finger opening (6), pose
# (position, quaternion) of up to two objects (7:14, 14:21), goal (21:24), then relative
# positions: first object - tool (the goal - tool without objects) (24:27) and goal - first
# object (27:30; zeros without objects).
OBS_DIM = 30
# The part of the observation that does not change when the whole scene (tool, objects and
# goal) is shifted across the table: heights, the finger opening, object orientations and
# the relative positions. Policies see only these by default (``robo rl train
# --policy_obs``): absolute table positions, which a few dozen demos cover sparsely, and the
# tool's velocity, from which a cloned policy learns to continue whatever it was doing (the
# copycat problem), both made cloned pick-and-place policies fail (40 demos: 0.47 success
# with the full observation, 0.71 without the velocity, 0.85 with this part).
INVARIANT_OBS = (2, 6, 9, 10, 11, 12, 13, 16, 17, 18, 19, 20, 23, 24, 25, 26, 27, 28, 29)
OBS_BOUND = 10.0  # positions in metres, velocities in m/s: far inside this


class CartesianController:
    """Damped-least-squares IK from a Cartesian tool target to arm joint position targets.

    Runs on a scratch ``MjData`` so the simulation state is never touched.
    """

    def __init__(self, model: mujoco.MjModel, site: str = "tcp", damping: float = 0.05):
        self.model = model
        self.scratch = mujoco.MjData(model)
        self.site = model.site(site).id
        self.qadr = np.array([model.joint(j).qposadr[0] for j in ARM_JOINTS])
        self.dadr = np.array([model.joint(j).dofadr[0] for j in ARM_JOINTS])
        self.lo = np.array([model.joint(j).range[0] for j in ARM_JOINTS])
        self.hi = np.array([model.joint(j).range[1] for j in ARM_JOINTS])
        self.damping = damping
        self._jp = np.zeros((3, model.nv))
        self._jr = np.zeros((3, model.nv))

    def solve(
        self, qpos: np.ndarray, target_pos: np.ndarray, target_rot: np.ndarray, iters: int = 8
    ):
        """Joint targets (6,) that put the tool site at ``target_pos`` with orientation ``target_rot``."""
        d = self.scratch
        d.qpos[:] = qpos
        q = qpos[self.qadr].copy()
        lam2 = self.damping**2
        for _ in range(iters):
            d.qpos[self.qadr] = q
            mujoco.mj_kinematics(self.model, d)
            mujoco.mj_comPos(self.model, d)
            pos = d.site_xpos[self.site]
            rot = d.site_xmat[self.site].reshape(3, 3)
            err_p = target_pos - pos
            err_r = 0.5 * sum(np.cross(rot[:, i], target_rot[:, i]) for i in range(3))
            err = np.concatenate([err_p, err_r])
            if np.linalg.norm(err) < 1e-5:
                break
            mujoco.mj_jacSite(self.model, d, self._jp, self._jr, self.site)
            jac = np.vstack([self._jp[:, self.dadr], self._jr[:, self.dadr]])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + lam2 * np.eye(6), err)
            q = np.clip(q + dq, self.lo, self.hi)
        return q


class TabletopEnv(gym.Env):
    """A tabletop manipulation task with the :mod:`sim.base` contract.

    Args:
        views: camera names rendered by :meth:`render_views` (front, side, wrist, top).
        image_size: square size in pixels (or ``(H, W)``).
        render_mode: ``None`` or ``"rgb_array"`` (views tiled side by side).
        randomization: domain randomisation switches; object poses are randomised by default.
        terminate_on_success: end the episode when the task is solved.
        terminate_on_object_lost: end the episode (terminated, ``info["object_lost"]``) when
            an object has fallen off the table (its centre more than ``LOST_DEPTH`` below the
            table top): the world has no floor, the object falls for the rest of the episode
            and the task can no longer be solved.
        frame_skip: physics steps (2 ms each) per control step.
        max_displacement: metres of tool motion per unit action per control step.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}
    INVARIANT_OBS = INVARIANT_OBS
    OBJECTS: tuple[ObjectSpec, ...] = ()
    STAGE_NAMES: tuple[str, ...] = ("reach",)
    TASK_TEXT = ""
    ENV_ID = "tabletop/?"
    # metres below the table top (z = 0) at which an object counts as fallen off the table
    LOST_DEPTH = 0.1

    def __init__(
        self,
        views=("front", "side", "wrist"),
        image_size: int | tuple[int, int] = 96,
        render_mode: str | None = None,
        randomization: Randomization | dict | None = None,
        terminate_on_success: bool = True,
        terminate_on_object_lost: bool = True,
        frame_skip: int = 20,
        max_displacement: float = 0.02,
    ):
        self.views = validate_views(views, CAMERA_NAMES, self.ENV_ID)
        self.image_size = validate_image_size(image_size)
        if render_mode not in (None, "rgb_array"):
            raise SimError(f"render_mode={render_mode!r} is not supported: use None or 'rgb_array'")
        if isinstance(randomization, dict):
            randomization = Randomization(**randomization)
        self.render_mode = render_mode
        self.randomization = randomization or Randomization()
        self.terminate_on_success = terminate_on_success
        self.terminate_on_object_lost = bool(terminate_on_object_lost)
        self.frame_skip = int(frame_skip)
        self.max_displacement = float(max_displacement)
        self.model = mujoco.MjModel.from_xml_string(build_scene_xml(self.OBJECTS))
        self.data = mujoco.MjData(self.model)
        self.controller = CartesianController(self.model)
        self._renderer: mujoco.Renderer | None = None
        self._defaults = (
            self.model.geom_rgba.copy(),
            self.model.light_diffuse.copy(),
            self.model.light_pos.copy(),
        )
        self._ids()
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.dt))}
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, (OBS_DIM,), np.float64)
        self.num_stages = len(self.STAGE_NAMES)
        self.stage_names = self.STAGE_NAMES
        self.task_text = self.TASK_TEXT
        self.goal = np.zeros(3)
        self._target = np.zeros(3)

    # ------------------------------------------------------------------ set-up
    def _ids(self) -> None:
        m = self.model
        self.tcp_site = m.site("tcp").id
        self.goal_site = m.site("goal").id
        self.arm_qadr = np.array([m.joint(j).qposadr[0] for j in ARM_JOINTS])
        self.finger_qadr = np.array(
            [m.joint(n).qposadr[0] for n in ("finger_left", "finger_right")]
        )
        self.finger_geoms = (m.geom("finger_left_geom").id, m.geom("finger_right_geom").id)
        self.obj_qadr = {o.name: m.joint(f"{o.name}_joint").qposadr[0] for o in self.OBJECTS}
        self.obj_geom = {o.name: m.geom(f"{o.name}_geom").id for o in self.OBJECTS}
        self.obj_body = {o.name: m.body(o.name).id for o in self.OBJECTS}

    @property
    def dt(self) -> float:
        return self.model.opt.timestep * self.frame_skip

    # ------------------------------------------------------------------ state helpers
    @property
    def tcp(self) -> np.ndarray:
        return self.data.site_xpos[self.tcp_site].copy()

    @property
    def gripper_opening(self) -> float:
        """Mean finger opening in [0, 1] (1 = fully open)."""
        return float(np.mean(self.data.qpos[self.finger_qadr]) / FINGER_OPEN)

    def obj_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.obj_body[name]].copy()

    def set_obj_pose(self, name: str, pos, yaw: float = 0.0) -> None:
        a = self.obj_qadr[name]
        self.data.qpos[a : a + 3] = pos
        self.data.qpos[a + 3 : a + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def touching(self, name: str) -> tuple[bool, bool]:
        """Whether the left and right finger touch object ``name``."""
        g = self.obj_geom[name]
        left = right = False
        for c in self.data.contact[: self.data.ncon]:
            pair = {c.geom1, c.geom2}
            if g in pair:
                left |= self.finger_geoms[0] in pair
                right |= self.finger_geoms[1] in pair
        return left, right

    def grasped(self, name: str) -> bool:
        left, right = self.touching(name)
        return left and right

    def flat_state(self) -> np.ndarray:
        """Simulator state ``[qpos, qvel]`` as float32."""
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float32)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._randomize_appearance()
        d.qpos[self.arm_qadr] = HOME_QPOS
        d.qpos[self.finger_qadr] = FINGER_OPEN
        self._place_objects(self.np_random)
        d.ctrl[:6] = HOME_QPOS
        d.ctrl[6:8] = FINGER_OPEN
        mujoco.mj_forward(m, d)
        # Start the tool at a randomised pose above the table.
        start = np.array([-0.12, 0.0, 0.2])
        if self.randomization.object_pose:
            start = start + self.np_random.uniform([-0.05, -0.08, -0.03], [0.05, 0.08, 0.03])
        q = self.controller.solve(d.qpos, start, DOWN, iters=60)
        d.qpos[self.arm_qadr] = q
        d.ctrl[:6] = q
        mujoco.mj_forward(m, d)
        for _ in range(30):  # let objects settle
            mujoco.mj_step(m, d)
        d.qvel[:] = 0.0
        mujoco.mj_forward(m, d)
        self._target = self.tcp
        self.model.site_pos[self.goal_site] = self.goal
        self._on_reset()
        return self._obs(), self._info()

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,):
            raise SimError(
                f"action has shape {action.shape}; {self.ENV_ID} expects (4,): dx, dy, dz, grip"
            )
        if not np.all(np.isfinite(action)):
            raise SimError(f"action {action} contains NaN or inf")
        action = np.clip(action, -1.0, 1.0)
        tcp = self.tcp
        target = self._target + action[:3] * self.max_displacement
        target = np.clip(target, tcp - 0.04, tcp + 0.04)  # no wind-up when blocked
        self._target = np.clip(target, WORKSPACE_LOW, WORKSPACE_HIGH)
        d = self.data
        d.ctrl[:6] = self.controller.solve(d.qpos, self._target, DOWN)
        d.ctrl[6:8] = FINGER_OPEN * (1.0 - action[3]) / 2.0
        mujoco.mj_step(self.model, d, nstep=self.frame_skip)
        info = self._info()
        reward = float(info["privileged_progress"] + info["success"])
        terminated = bool(
            (info["success"] and self.terminate_on_success)
            or (info["object_lost"] and self.terminate_on_object_lost)
        )
        if self.render_mode == "rgb_array":
            pass  # frames are produced on demand by render()
        return self._obs(), reward, terminated, False, info

    def render(self):
        if self.render_mode == "rgb_array":
            return tile_views(self.render_views())
        return None

    def render_views(self) -> np.ndarray:
        """Frames of all views as ``uint8 (V, H, W, 3)``."""
        if self._renderer is None:
            self._renderer = make_renderer(self.model, self.image_size)
        out = np.empty((len(self.views), *self.image_size, 3), np.uint8)
        for i, v in enumerate(self.views):
            self._renderer.update_scene(self.data, camera=v)
            out[i] = self._renderer.render()
        return out

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ internals
    def _randomize_appearance(self) -> None:
        rgba, diffuse, lpos = self._defaults
        m, r, rng = self.model, self.randomization, self.np_random
        m.geom_rgba[:] = rgba
        m.light_diffuse[:] = diffuse
        m.light_pos[:] = lpos
        if r.colors:
            jitter = rng.uniform(-r.color_jitter, r.color_jitter, (m.ngeom, 3))
            m.geom_rgba[:, :3] = np.clip(rgba[:, :3] + jitter, 0.0, 1.0)
        if r.lighting:
            m.light_diffuse[:] = np.clip(
                diffuse * (1.0 + rng.uniform(-r.light_jitter, r.light_jitter)), 0, 1
            )
            m.light_pos[:] = lpos + rng.uniform(-r.light_jitter, r.light_jitter, lpos.shape)

    def _obs(self) -> np.ndarray:
        obs = np.zeros(OBS_DIM)
        obs[0:3] = self.tcp
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(
            self.model, self.data, mujoco.mjtObj.mjOBJ_SITE, self.tcp_site, vel, 0
        )
        obs[3:6] = vel[3:]
        obs[6] = self.gripper_opening
        for k, o in enumerate(self.OBJECTS[:2]):
            a = self.obj_qadr[o.name]
            obs[7 + 7 * k : 14 + 7 * k] = self.data.qpos[a : a + 7]
        obs[21:24] = self.goal
        # What grasping and placing turn on, given directly: a policy network would otherwise
        # have to difference two absolute positions to a few millimetres.
        if self.OBJECTS:
            first = self.obj_pos(self.OBJECTS[0].name)
            obs[24:27] = first - obs[0:3]
            obs[27:30] = self.goal - first
        else:
            obs[24:27] = self.goal - obs[0:3]
        return obs

    def _info(self) -> dict[str, Any]:
        success = bool(self._success())
        stage, within = self._stage_progress()
        if success:
            stage, within = self.num_stages - 1, 1.0
        progress = (stage + float(np.clip(within, 0.0, 1.0))) / self.num_stages
        return {
            "success": success,
            "stage": int(stage),
            "privileged_progress": float(np.clip(progress, 0.0, 1.0)),
            "tcp": self.tcp,
            "object_lost": any(self.obj_pos(o.name)[2] < -self.LOST_DEPTH for o in self.OBJECTS),
        }

    @abstractmethod
    def _place_objects(self, rng: np.random.Generator) -> None:
        """Set object poses and ``self.goal`` for a new episode."""

    def _on_reset(self) -> None:  # noqa: B027 - optional hook
        """Record per-episode constants (initial distances) after the scene settled."""

    @abstractmethod
    def _success(self) -> bool: ...

    @abstractmethod
    def _stage_progress(self) -> tuple[int, float]:
        """Current stage and the normalised progress within it, from simulator state."""

    @abstractmethod
    def expert(self):
        """A scripted expert for this task."""
