"""Safety layer between a policy and the motors: limits, workspace, watchdog, e-stop.

Every :class:`hardware.robot.Robot` owns a :class:`SafetyLayer` built from its
config's ``safety:`` section and runs each action through it. Joint targets are
clamped in this order, each clamp logged (joint, reason, requested, sent):

1. **position limits**: the config's ``joint_limits`` intersected with the
   device's own limits;
2. **max_relative_target**: at most this far from the *measured* position (as
   LeRobot's ``max_relative_target``);
3. **max_velocity**: at most ``max_velocity / control_hz`` from the previous
   *commanded* target (or the measured position for the first command);
4. the position limits again (a measured position can sit just outside them);
5. **workspace**: where the robot provides forward kinematics, a target whose
   end effector leaves the box is either pulled back along the joint-space
   segment from the measured position to the target until the end effector is
   on the box boundary (``on_violation: clamp``) or rejected, which holds
   position (``reject``). Cartesian targets are clamped to the box directly
   (:meth:`SafetyLayer.clamp_to_workspace`).

NaN/inf actions never reach this layer: the robot holds position and logs an
error. The watchdog (``watchdog_timeout_s``) holds position when no command
arrived within the deadline; it arms at the first command and re-arms after
each. The e-stop latches until :meth:`SafetyLayer.reset_estop`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

logger = logging.getLogger(__name__)


def _config_error(msg: str) -> Exception:
    from hardware.robot import HardwareConfigError  # robot.py imports this module

    return HardwareConfigError(msg)


class Choice(StrEnum):
    """Base of the string choices in hardware configs (draccus parses Enums, not ``Literal``)."""

    @classmethod
    def parse(cls, value, field_name: str):
        """The member for ``value`` or a one-line config error listing the choices."""
        try:
            return cls(value)
        except ValueError:
            choices = [m.value for m in cls]
            raise _config_error(
                f"{field_name}={value!r} is invalid: use one of {choices}"
            ) from None


class WorkspaceViolation(Choice):
    """What a joint target whose end effector leaves the workspace gets."""

    CLAMP = "clamp"
    REJECT = "reject"


@dataclass
class WorkspaceConfig:
    """An axis-aligned box (metres, robot base or world frame) for the end effector.

    Args:
        low: lower corner (x, y, z).
        high: upper corner (x, y, z).
        on_violation: for joint targets whose end effector leaves the box:
            ``clamp`` (scale the motion back to the boundary) or ``reject`` (hold).
    """

    low: tuple[float, float, float]
    high: tuple[float, float, float]
    on_violation: WorkspaceViolation = WorkspaceViolation.CLAMP

    def __post_init__(self):
        self.low = tuple(float(v) for v in self.low)
        self.high = tuple(float(v) for v in self.high)
        if len(self.low) != 3 or len(self.high) != 3:
            raise _config_error("safety.workspace low/high need three values each: [x, y, z]")
        if any(lo >= hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise _config_error(
                f"safety.workspace is empty: low {list(self.low)} must be below high {list(self.high)}"
            )
        self.on_violation = WorkspaceViolation.parse(
            self.on_violation, "safety.workspace.on_violation"
        )


@dataclass
class SafetyConfig:
    """Limits applied to every action (all optional; unset means unlimited).

    Args:
        joint_limits: ``{"<joint>.pos": [low, high]}`` in the action's units.
        max_velocity: units per second, one number for all joints or a dict per joint.
        max_relative_target: the largest allowed distance between a target and the
            measured position, one number or a dict per joint (LeRobot's field).
        workspace: a box for the end effector.
        watchdog_timeout_s: hold position if no command arrives for this long.
    """

    joint_limits: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_velocity: float | dict[str, float] | None = None
    max_relative_target: float | dict[str, float] | None = None
    workspace: WorkspaceConfig | None = None
    watchdog_timeout_s: float | None = None

    def __post_init__(self):
        for key, lim in self.joint_limits.items():
            lo, hi = (float(v) for v in lim)
            if not lo < hi:
                raise _config_error(
                    f"safety.joint_limits[{key!r}]={list(lim)}: low must be below high"
                )
            self.joint_limits[key] = (lo, hi)
        for name in ("max_velocity", "max_relative_target"):
            value = getattr(self, name)
            values = value.values() if isinstance(value, dict) else [value]
            for v in values:
                if v is not None and not (float(v) > 0 and math.isfinite(float(v))):
                    raise _config_error(f"safety.{name}={value!r}: use positive numbers")
        if self.watchdog_timeout_s is not None and not self.watchdog_timeout_s > 0:
            raise _config_error(
                f"safety.watchdog_timeout_s={self.watchdog_timeout_s!r}: use a positive number of seconds"
            )

    def keys(self) -> set[str]:
        """Joint keys the config names."""
        out = set(self.joint_limits)
        for value in (self.max_velocity, self.max_relative_target):
            if isinstance(value, dict):
                out |= set(value)
        return out


@dataclass(frozen=True)
class ClampEvent:
    """One clamp applied to one action component."""

    key: str
    reason: str
    requested: float
    sent: float


class Watchdog:
    """Calls ``on_timeout`` once per silence longer than ``timeout_s`` (a daemon thread).

    It arms at the first :meth:`kick`, so a freshly connected robot is not held
    before anyone commanded it.
    """

    def __init__(self, timeout_s: float, on_timeout: Callable[[], None], name: str = "watchdog"):
        self.timeout_s = float(timeout_s)
        self.on_timeout = on_timeout
        self.trips = 0
        self._last: float | None = None
        self._fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def kick(self) -> None:
        self._last = time.monotonic()
        self._fired = False

    def _run(self) -> None:
        poll = min(0.02, self.timeout_s / 4)
        while not self._stop.wait(poll):
            last = self._last
            if last is None or self._fired or time.monotonic() - last < self.timeout_s:
                continue
            self._fired = True
            self.trips += 1
            logger.warning(
                "watchdog: no command for %.3f s (deadline %.3f s), holding position",
                time.monotonic() - last,
                self.timeout_s,
            )
            try:
                self.on_timeout()
            except Exception:  # noqa: BLE001 - keep watching; the failure is logged
                logger.exception("watchdog: holding position failed")


class SafetyLayer:
    """Stateful action filter of one robot (see the module docstring for the rules).

    Args:
        config: the limits.
        period_s: nominal control period (``1 / control_hz``) for the velocity limit.
        name: used in log lines.
    """

    def __init__(self, config: SafetyConfig, period_s: float, name: str = "robot"):
        self.config = config
        self.period_s = float(period_s)
        self.name = name
        self.events: list[ClampEvent] = []  # clamps since the last new_action()
        self.last_target: dict[str, float] = {}
        self._estop = threading.Event()
        self._watchdog: Watchdog | None = None

    # ------------------------------------------------------------------ set-up
    def validate_keys(self, known: Iterable[str]) -> None:
        """Raise a config error if the safety config names joints the robot does not have."""
        known = set(known)
        unknown = sorted(self.config.keys() - known)
        if unknown:
            raise _config_error(
                f"safety config of {self.name} names unknown joints {unknown}: "
                f"use keys from {sorted(known)}"
            )

    def begin(self) -> None:
        """Forget the previous session's targets (called at connect)."""
        self.last_target = {}
        self.events = []

    def new_action(self) -> None:
        """Start recording the clamps of a new action in :attr:`events`."""
        self.events = []

    # ------------------------------------------------------------------ e-stop
    @property
    def estopped(self) -> bool:
        return self._estop.is_set()

    def trigger_estop(self) -> None:
        self._estop.set()

    def reset_estop(self) -> None:
        self._estop.clear()
        self.last_target = {}

    # ------------------------------------------------------------------ watchdog
    def start_watchdog(self, on_timeout: Callable[[], None]) -> None:
        self.stop_watchdog()
        self._watchdog = Watchdog(
            self.config.watchdog_timeout_s, on_timeout, f"{self.name}-watchdog"
        )
        self._watchdog.start()

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()

    def kick_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.kick()

    @property
    def watchdog_trips(self) -> int:
        return 0 if self._watchdog is None else self._watchdog.trips

    # ------------------------------------------------------------------ clamps
    def clamp(self, key: str, value: float, lo: float, hi: float, reason: str) -> float:
        """Clamp one value into ``[lo, hi]``, logging and recording a change."""
        out = min(max(value, lo), hi)
        if out != value:
            self.events.append(ClampEvent(key, reason, value, out))
            logger.warning(
                "%s safety: %s clamped by %s: %.6g -> %.6g (%+.6g)",
                self.name,
                key,
                reason,
                value,
                out,
                out - value,
            )
        return out

    def remember(self, sent: Mapping[str, float], joint_keys: Iterable[str]) -> None:
        """Record commanded joint targets (the reference of the velocity limit)."""
        for k in joint_keys:
            if k in sent:
                self.last_target[k] = float(sent[k])

    def filter_joint_targets(
        self,
        targets: Mapping[str, float],
        present: Mapping[str, float] | None = None,
        hw_limits: Mapping[str, tuple[float, float]] | None = None,
        fk: Callable[[Mapping[str, float]], np.ndarray | None] | None = None,
        keys: Iterable[str] | None = None,
    ) -> dict[str, float] | None:
        """Clamp joint position targets; ``None`` means "rejected, hold position".

        Args:
            targets: finite targets keyed ``<joint>.pos`` (other keys pass through).
            present: measured positions (needed for ``max_relative_target`` and
                the workspace clamp; without them those checks are skipped with a
                logged warning).
            hw_limits: the device's own position limits.
            fk: forward kinematics, joint targets -> end-effector (x, y, z).
            keys: which keys are joints (default: those ending in ``.pos``).
        """
        cfg = self.config
        hw_limits = hw_limits or {}
        if keys is None:
            keys = [k for k in targets if k.endswith(".pos")]
        else:
            keys = [k for k in keys if k in targets]
        out = dict(targets)
        for k in keys:
            lo, hi = self._limits(k, hw_limits)
            v = self.clamp(k, out[k], lo, hi, "position limit")
            cap = _per_key(cfg.max_relative_target, k)
            if cap is not None:
                if present is not None and k in present:
                    v = self.clamp(k, v, present[k] - cap, present[k] + cap, "max_relative_target")
                else:
                    logger.warning(
                        "%s safety: no measured position of %s, max_relative_target skipped",
                        self.name,
                        k,
                    )
            vmax = _per_key(cfg.max_velocity, k)
            ref = self.last_target.get(k, None if present is None else present.get(k))
            if vmax is not None and ref is not None:
                step = vmax * self.period_s
                v = self.clamp(k, v, ref - step, ref + step, "max_velocity")
            out[k] = self.clamp(k, v, lo, hi, "position limit")
        if fk is not None and cfg.workspace is not None:
            return self._workspace_joint(out, present, fk, keys)
        return out

    def clamp_to_workspace(self, point, keys=("x", "y", "z")) -> np.ndarray:
        """Clamp an end-effector position into the workspace box (logged per axis)."""
        p = np.asarray(point, dtype=np.float64).copy()
        ws = self.config.workspace
        if ws is None:
            return p
        for i, k in enumerate(keys):
            p[i] = self.clamp(k, float(p[i]), ws.low[i], ws.high[i], "workspace")
        return p

    def in_workspace(self, point, tol: float = 0.0) -> bool:
        ws = self.config.workspace
        if ws is None:
            return True
        p = np.asarray(point, dtype=np.float64)
        return bool(np.all(p >= np.array(ws.low) - tol) and np.all(p <= np.array(ws.high) + tol))

    # ------------------------------------------------------------------ internals
    def _limits(
        self, key: str, hw_limits: Mapping[str, tuple[float, float]]
    ) -> tuple[float, float]:
        lo, hi = -math.inf, math.inf
        for lim in (self.config.joint_limits.get(key), hw_limits.get(key)):
            if lim is not None:
                lo, hi = max(lo, lim[0]), min(hi, lim[1])
        return lo, hi

    def _workspace_joint(self, out, present, fk, keys) -> dict[str, float] | None:
        ws = self.config.workspace
        tip = fk(out)
        if tip is None or self.in_workspace(tip):
            return out
        tip = np.asarray(tip)
        start = None
        if present is not None and all(k in present for k in keys):
            start = {**out, **{k: float(present[k]) for k in keys}}
        if ws.on_violation == "reject" or start is None or not self.in_workspace(fk(start)):
            logger.error(
                "%s safety: end effector target %s leaves the workspace %s..%s; rejected, holding position",
                self.name,
                np.round(tip, 4).tolist(),
                list(ws.low),
                list(ws.high),
            )
            self.events.append(
                ClampEvent("workspace", "workspace reject", float("nan"), float("nan"))
            )
            return None
        lo_t, hi_t = 0.0, 1.0  # fk(start) is inside, fk(out) is outside
        for _ in range(30):
            mid = 0.5 * (lo_t + hi_t)
            if self.in_workspace(fk(_lerp(start, out, keys, mid))):
                lo_t = mid
            else:
                hi_t = mid
        safe = _lerp(start, out, keys, lo_t)
        for k in keys:
            if safe[k] != out[k]:
                self.events.append(ClampEvent(k, "workspace", out[k], safe[k]))
        logger.warning(
            "%s safety: end effector target %s leaves the workspace %s..%s; motion scaled to %.3f",
            self.name,
            np.round(tip, 4).tolist(),
            list(ws.low),
            list(ws.high),
            lo_t,
        )
        return safe


def _lerp(a: Mapping[str, float], b: Mapping[str, float], keys, t: float) -> dict[str, float]:
    out = dict(b)
    for k in keys:
        out[k] = a[k] + t * (b[k] - a[k])
    return out


def _per_key(value: float | dict[str, float] | None, key: str) -> float | None:
    if isinstance(value, dict):
        v = value.get(key)
        return None if v is None else float(v)
    return None if value is None else float(value)
