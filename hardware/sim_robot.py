"""The MuJoCo tabletop arm behind the robot contract (``type: sim``).

:class:`SimRobot` builds ``sim.make("tabletop/<task>-v0")`` at ``connect()`` and
drives its physics itself: each ``send_action`` sets the actuator targets and
steps a fixed number of substeps (``1 / control_hz`` of simulated time), so a
control loop written for a real arm runs unchanged (``realtime: true`` also
paces it to the wall clock).

Observation (LeRobot style, flat): ``j1.pos`` .. ``j6.pos`` (rad),
``gripper.pos`` (opening, 0 closed .. 1 open), the tool pose ``ee.x/y/z`` (m,
world frame) and ``ee.qw/qx/qy/qz``, and one ``uint8 (H, W, 3)`` image per
configured camera.

Actions (``action_space``):

* ``joint``: ``j1.pos`` .. ``j6.pos`` (rad) and ``gripper.pos`` (0..1) targets;
* ``cartesian``: ``dx, dy, dz`` in [-1, 1] (times ``cartesian_step_m`` metres of
  tool motion, the Meta-World convention of the sim tasks) and ``grip`` in
  [-1, 1] (-1 open, +1 closed), solved by the sim's damped-least-squares IK.
  The workspace box clamps the tool target; the joint limits then apply to the
  IK solution (the returned action is the Cartesian one that was sent).

:class:`SimCamera` renders one named camera of the same simulation (or of its
own scene when used alone); frames are rendered on demand from the current
physics state, so they are never stale.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import sim  # before any mujoco import: it selects the headless GL backend (EGL/OSMesa)
from hardware.camera import Camera, CameraConfig
from hardware.robot import HardwareConfigError, Robot, RobotConfig
from hardware.safety import Choice

ARM = ("j1", "j2", "j3", "j4", "j5", "j6")
EE_KEYS = ("ee.x", "ee.y", "ee.z", "ee.qw", "ee.qx", "ee.qy", "ee.qz")
CART_KEYS = ("dx", "dy", "dz", "grip")
SIM_CAMERAS = ("front", "side", "wrist", "top")


class SimTask(Choice):
    REACH = "reach"
    PUSH = "push"
    PICK_PLACE = "pick-place"
    STACK = "stack"


class ActionSpace(Choice):
    JOINT = "joint"
    CARTESIAN = "cartesian"


TIMESTEP = 0.002  # the scene's physics step (sim/tabletop/scene.py)
WINDUP_M = 0.04  # the Cartesian target stays this close to the tool (as the sim env)


@dataclass(kw_only=True)
class SimCameraConfig(CameraConfig):
    """A camera of the tabletop scene.

    Args:
        camera: scene camera (front, side, wrist, top); inside a robot's ``cameras:``
            it defaults to the entry's name.
        task: scene of a standalone camera (ignored when the robot owns it).
        seed: scene seed of a standalone camera.
    """

    camera: str | None = None
    width: int | None = 96
    height: int | None = 96
    task: SimTask = SimTask.REACH
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.camera is not None and self.camera not in SIM_CAMERAS:
            raise HardwareConfigError(
                f"sim camera {self.camera!r} does not exist: use one of {list(SIM_CAMERAS)}"
            )
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is None or not 8 <= v <= 1024:
                raise HardwareConfigError(f"sim camera {name}={v!r}: use 8..1024 pixels")
        self.task = SimTask.parse(self.task, "task")


@dataclass(kw_only=True)
class SimRobotConfig(RobotConfig):
    """The simulated tabletop arm.

    Args:
        task: tabletop scene (objects, goal) the arm works in.
        seed: scene seed used at ``connect()`` (``reset(seed)`` picks another).
        action_space: ``joint`` position targets or ``cartesian`` tool deltas.
        cartesian_step_m: metres of tool motion per unit Cartesian action.
        cameras: observation key -> camera config.
        realtime: sleep so that ``send_action`` runs at ``control_hz`` of wall time.
    """

    task: SimTask = SimTask.PICK_PLACE
    seed: int = 0
    action_space: ActionSpace = ActionSpace.JOINT
    cartesian_step_m: float = 0.02
    cameras: dict[str, SimCameraConfig] = field(default_factory=dict)
    realtime: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.task = SimTask.parse(self.task, "task")
        self.action_space = ActionSpace.parse(self.action_space, "action_space")
        if not 0 < self.cartesian_step_m <= 0.1:
            raise HardwareConfigError(
                f"cartesian_step_m={self.cartesian_step_m!r}: use (0, 0.1] metres per step"
            )
        if self.control_hz > 1 / TIMESTEP:
            raise HardwareConfigError(
                f"control_hz={self.control_hz} is faster than the sim's {1 / TIMESTEP:.0f} Hz physics"
            )
        for key, cam in self.cameras.items():
            name = cam.camera or key
            if name not in SIM_CAMERAS:
                raise HardwareConfigError(
                    f"cameras.{key}: no scene camera {name!r}; set `camera:` to one of {list(SIM_CAMERAS)}"
                )


class SimRobot(Robot):
    """The MuJoCo tabletop arm as a robot (see the module docstring)."""

    config_class = SimRobotConfig
    name = "sim"

    def __init__(self, config: SimRobotConfig):
        self.config = config
        self.env = None  # the gymnasium env, built at connect()
        self.substeps = max(1, round(1.0 / (config.control_hz * TIMESTEP)))
        self.cameras: dict[str, SimCamera] = {
            key: SimCamera(cam, robot=self, camera=cam.camera or key)
            for key, cam in config.cameras.items()
        }
        self._cart_target = np.zeros(3)
        self._next_tick: float | None = None
        super().__init__(config)

    # ------------------------------------------------------------------ features
    @property
    def observation_features(self) -> dict[str, Any]:
        feats: dict[str, Any] = {f"{j}.pos": float for j in ARM}
        feats["gripper.pos"] = float
        feats.update(dict.fromkeys(EE_KEYS, float))
        for key, cam in self.config.cameras.items():
            feats[key] = (cam.height, cam.width, 3)
        return feats

    @property
    def action_features(self) -> dict[str, type]:
        if self.config.action_space == "cartesian":
            return dict.fromkeys(CART_KEYS, float)
        return dict.fromkeys(self.joint_keys, float)

    @property
    def joint_keys(self) -> tuple[str, ...]:
        return (*(f"{j}.pos" for j in ARM), "gripper.pos")

    @property
    def is_connected(self) -> bool:
        return self.env is not None

    @property
    def unwrapped(self):
        """The tabletop env (model, data, controller) while connected."""
        return None if self.env is None else self.env.unwrapped

    # ------------------------------------------------------------------ lifecycle
    def _connect(self) -> None:
        import mujoco

        from sim.tabletop.scene import FINGER_OPEN

        self.env = sim.make(
            f"tabletop/{self.config.task}-v0",
            views=("front",),
            image_size=16,
            frame_skip=self.substeps,
            max_displacement=self.config.cartesian_step_m,
            terminate_on_success=False,
        )
        self._mj = mujoco
        self._finger_open = FINGER_OPEN
        u = self.env.unwrapped
        self._fk_data = mujoco.MjData(u.model)
        self._limits = {f"{j}.pos": tuple(float(v) for v in u.model.joint(j).range) for j in ARM}
        self._limits["gripper.pos"] = (0.0, 1.0)
        self.reset(self.config.seed)
        for cam in self.cameras.values():
            cam.connect()

    def _disconnect(self) -> None:
        for cam in self.cameras.values():
            if cam.is_connected:
                cam.disconnect()
        env, self.env = self.env, None
        env.close()

    def reset(self, seed: int | None = None) -> None:
        """Re-randomise the scene (sim only): the arm returns to its start pose."""
        with self._lock:
            self.env.reset(seed=seed)
            self._cart_target = self.unwrapped.tcp
            self.safety.begin()
            self._next_tick = None

    # ------------------------------------------------------------------ state
    def present_positions(self) -> dict[str, float]:
        u = self.unwrapped
        out = {f"{j}.pos": float(v) for j, v in zip(ARM, u.data.qpos[u.arm_qadr], strict=True)}
        out["gripper.pos"] = u.gripper_opening
        return out

    def hardware_limits(self) -> dict[str, tuple[float, float]]:
        return dict(self._limits)

    def forward_kinematics(self, joints: Mapping[str, float]) -> np.ndarray:
        """Tool position (world frame) for arm joint targets."""
        u, d = self.unwrapped, self._fk_data
        d.qpos[:] = u.data.qpos
        d.qpos[u.arm_qadr] = [joints[f"{j}.pos"] for j in ARM]
        self._mj.mj_kinematics(u.model, d)
        return d.site_xpos[u.tcp_site].copy()

    def _get_observation(self) -> dict[str, Any]:
        u = self.unwrapped
        obs: dict[str, Any] = self.present_positions()
        quat = np.zeros(4)
        self._mj.mju_mat2Quat(quat, u.data.site_xmat[u.tcp_site])
        for k, v in zip(EE_KEYS, (*u.tcp, *quat), strict=True):
            obs[k] = float(v)
        for key, cam in self.cameras.items():
            obs[key] = cam.read()
        return obs

    # ------------------------------------------------------------------ commands
    def _gripper_command(self) -> float:
        """Last commanded opening in [0, 1]."""
        return float(self.unwrapped.data.ctrl[6] / self._finger_open)

    def _hold_action(self) -> dict[str, float]:
        u = self.unwrapped
        if self.config.action_space == "cartesian":
            self._cart_target = u.tcp
            return {"dx": 0.0, "dy": 0.0, "dz": 0.0, "grip": 1.0 - 2.0 * self._gripper_command()}
        hold = {k: v for k, v in self.present_positions().items() if k != "gripper.pos"}
        hold["gripper.pos"] = self._gripper_command()
        return hold

    def _hold(self) -> None:
        """Hold the arm where it is (no physics step: time only advances in send_action)."""
        hold = self._held = self._hold_action()
        u = self.unwrapped
        u.data.ctrl[:6] = u.data.qpos[u.arm_qadr]
        if self.config.action_space == "joint":
            self.safety.remember(hold, self.joint_keys)
        else:
            self.safety.remember(
                self.present_positions() | {"gripper.pos": self._gripper_command()}, self.joint_keys
            )

    def _safe_action(self, action: dict[str, float]) -> dict[str, float] | None:
        if self.config.action_space == "joint":
            return super()._safe_action(action)
        out = {k: self.safety.clamp(k, action[k], -1.0, 1.0, "action bound") for k in CART_KEYS}
        step = self.config.cartesian_step_m
        ref = self._cart_target
        tcp = self.unwrapped.tcp
        wanted = ref + step * np.array([out["dx"], out["dy"], out["dz"]])
        raw = np.clip(wanted, tcp - WINDUP_M, tcp + WINDUP_M)  # no wind-up while blocked
        safe = self.safety.clamp_to_workspace(raw)
        for i, k in enumerate(CART_KEYS[:3]):
            if safe[i] != wanted[i]:  # only changed axes are recomputed (no round-off elsewhere)
                out[k] = float((safe[i] - ref[i]) / step)
        return out

    def _send_action(self, action: dict[str, float]) -> dict[str, float]:
        u = self.unwrapped
        if self.config.action_space == "cartesian":
            from sim.tabletop.env import DOWN

            step = self.config.cartesian_step_m
            target = self._cart_target + step * np.array([action["dx"], action["dy"], action["dz"]])
            ws = self.safety.config.workspace
            if ws is not None:  # round-off of the delta must not leave the box
                target = np.clip(target, ws.low, ws.high)
            self._cart_target = target
            q = u.controller.solve(u.data.qpos, target, DOWN)
            joints = {f"{j}.pos": float(v) for j, v in zip(ARM, q, strict=True)}
            joints["gripper.pos"] = (1.0 - action["grip"]) / 2.0
            joints = self.safety.filter_joint_targets(
                joints, present=self.present_positions(), hw_limits=self._limits
            )
            self.safety.remember(joints, self.joint_keys)
        else:
            joints = action
        u.data.ctrl[:6] = [joints[f"{j}.pos"] for j in ARM]
        u.data.ctrl[6:8] = self._finger_open * joints["gripper.pos"]
        self._mj.mj_step(u.model, u.data, nstep=self.substeps)
        if self.config.realtime:
            self._pace()
        return dict(action)

    def _pace(self) -> None:
        period = 1.0 / self.config.control_hz
        now = time.monotonic()
        if self._next_tick is None or now - self._next_tick > period:
            self._next_tick = now  # first call, or fell behind: do not burst to catch up
        self._next_tick += period
        time.sleep(max(0.0, self._next_tick - now))


class SimCamera(Camera):
    """One camera of the tabletop scene, rendered on demand (``type: sim``).

    Owned by a :class:`SimRobot` it shows the robot's simulation; alone it builds
    its own scene (``task``, ``seed``). Each thread that reads gets its own
    offscreen renderer, since OpenGL contexts are bound to a thread.
    """

    config_class = SimCameraConfig
    name = "sim"

    def __init__(
        self, config: SimCameraConfig, robot: SimRobot | None = None, camera: str | None = None
    ):
        super().__init__(config)
        self.robot = robot
        self.camera = camera or config.camera or "front"
        if self.camera not in SIM_CAMERAS:
            raise HardwareConfigError(f"sim camera {self.camera!r}: use one of {list(SIM_CAMERAS)}")
        self._env = None  # own scene when standalone
        self._renderers: dict[int, Any] = {}
        self._open = False
        self._own_lock = threading.RLock()

    def __str__(self) -> str:
        return f"sim camera {self.camera!r}"

    @property
    def _lock(self):
        """The robot's lock when owned (no render mid-step), else the camera's own."""
        return self._own_lock if self.robot is None else self.robot._lock

    @property
    def is_connected(self) -> bool:
        if self.robot is not None:
            return self._open and self.robot.is_connected
        return self._open

    def _connect(self, warmup: bool) -> None:
        if self.robot is None:
            self._env = sim.make(
                f"tabletop/{self.config.task}-v0", views=(self.camera,), image_size=16
            )
            self._env.reset(seed=self.config.seed)
        elif not self.robot.is_connected:
            from hardware.robot import DeviceNotConnectedError

            raise DeviceNotConnectedError(
                f"{self} belongs to {self.robot}: connect the robot first"
            )
        self._open = True

    def _disconnect(self) -> None:
        self._open = False
        for r in self._renderers.values():
            try:
                r.close()
            except Exception:  # noqa: BLE001 - a context of another thread may refuse; it is freed at exit
                pass
        self._renderers = {}
        if self._env is not None:
            self._env.close()
            self._env = None

    def _render(self) -> np.ndarray:
        import mujoco

        u = (self._env if self.robot is None else self.robot.env).unwrapped
        with self._lock:
            r = self._renderers.get(threading.get_ident())
            if r is None:
                r = mujoco.Renderer(u.model, height=self.config.height, width=self.config.width)
                flags = r.scene.flags
                flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
                flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
                self._renderers[threading.get_ident()] = r
            r.update_scene(u.data, camera=self.camera)
            return r.render().copy()

    def _read(self) -> np.ndarray:
        return self._render()

    def _async_read(self, timeout_ms: float) -> np.ndarray:
        return self._render()

    def _read_latest(self, max_age_ms: float) -> np.ndarray:
        return self._render()
