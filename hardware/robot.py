"""The robot contract (LeRobot-compatible) with the safety layer built in.

Every driver subclasses :class:`Robot` and implements a few private hooks
(``_connect``, ``_disconnect``, ``_get_observation``, ``_send_action``,
``_hold_action``...). The public methods are template methods that add the
connection guards, the safety filter, the watchdog and the emergency stop, so
no driver can bypass them:

* ``send_action(action)`` checks the keys, rejects NaN/inf (holds position and
  logs an error), clamps to the configured limits (see :mod:`hardware.safety`),
  sends, and returns **the action actually sent**.
* ``emergency_stop()`` may be called from any thread; it latches and every later
  ``send_action`` holds position until ``reset_estop()``.
* ``disconnect()`` always leaves the arm safe: it holds position (or turns the
  torque off, ``disconnect_mode: torque_off``) before closing the link, even when
  the hold itself fails.

Safe shutdown on exceptions and Ctrl-C: use the robot as a context manager
(``with robot: ...``) or ``try: ... finally: robot.disconnect()``. Ctrl-C raises
``KeyboardInterrupt`` in the main thread, which unwinds through ``__exit__`` /
``finally`` like any exception, so the arm is held before the process exits::

    from hardware.registry import make_robot_from_config

    with make_robot_from_config("configs/robots/sim_tabletop.yaml") as robot:
        while True:
            obs = robot.get_observation()
            sent = robot.send_action(policy(obs))
"""

from __future__ import annotations

import abc
import functools
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from hardware.safety import Choice, SafetyConfig, SafetyLayer

logger = logging.getLogger(__name__)

Features = dict[str, Any]  # name -> ``float`` or a shape tuple such as ``(H, W, 3)``


class HardwareError(RuntimeError):
    """Base of the user-facing errors of :mod:`hardware` (one line that says what to do)."""


class DeviceNotConnectedError(HardwareError, ConnectionError):
    """A method that needs a live link was called before ``connect()`` or after ``disconnect()``."""


class DeviceAlreadyConnectedError(HardwareError, ConnectionError):
    """``connect()`` was called twice."""


class DeviceConnectionError(HardwareError, ConnectionError):
    """The device could not be opened or stopped answering (wrong port, index, topic...)."""


class HardwareConfigError(HardwareError, ValueError):
    """A robot or camera configuration is invalid."""


class ActionError(HardwareError, ValueError):
    """An action dict does not match ``action_features``."""


class DisconnectMode(Choice):
    HOLD = "hold"
    TORQUE_OFF = "torque_off"


def check_if_not_connected(method: Callable) -> Callable:
    """Guard: raise :class:`DeviceNotConnectedError` unless ``self.is_connected``."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self.is_connected:
            raise DeviceNotConnectedError(
                f"{self} is not connected: call connect() first "
                f"(or use it as a context manager: `with device: ...`)"
            )
        return method(self, *args, **kwargs)

    return wrapper


def check_if_already_connected(method: Callable) -> Callable:
    """Guard: raise :class:`DeviceAlreadyConnectedError` if ``self.is_connected``."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.is_connected:
            raise DeviceAlreadyConnectedError(
                f"{self} is already connected: call disconnect() before connecting again"
            )
        return method(self, *args, **kwargs)

    return wrapper


class DeviceLifecycle:
    """Context-manager support and a last-chance disconnect, shared by robots and cameras."""

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.is_connected:
            self.disconnect()

    def __del__(self):
        try:
            if self.is_connected:
                self.disconnect()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass


@dataclass(kw_only=True)
class RobotConfig:
    """Fields every robot config has.

    Args:
        id: name of this robot instance (logs, calibration files).
        control_hz: nominal rate of ``send_action`` calls; the velocity limit allows
            ``max_velocity / control_hz`` per call.
        safety: limits, workspace and watchdog (see :class:`hardware.safety.SafetyConfig`).
        disconnect_mode: what ``disconnect()`` does before closing the link: ``hold``
            position, or ``torque_off`` (falls back to hold where unsupported).
    """

    id: str = "robot"
    control_hz: float = 25.0
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    disconnect_mode: DisconnectMode = DisconnectMode.HOLD

    def __post_init__(self):
        if not (isinstance(self.control_hz, int | float) and 0 < self.control_hz <= 1000):
            raise HardwareConfigError(
                f"control_hz={self.control_hz!r} is invalid: use a rate in (0, 1000] Hz"
            )
        self.disconnect_mode = DisconnectMode.parse(self.disconnect_mode, "disconnect_mode")
        if isinstance(self.safety, dict):
            raise HardwareConfigError(
                "safety must be a SafetyConfig: load YAML through hardware.registry"
            )


class Robot(DeviceLifecycle, abc.ABC):
    """A robot arm behind the LeRobot device contract, with safety built in.

    Subclasses set ``config_class`` and ``name`` and implement the abstract hooks.
    ``observation_features`` and ``action_features`` must work while disconnected.

    Args:
        config: the driver's config dataclass.
    """

    config_class: ClassVar[type[RobotConfig]] = RobotConfig
    name: ClassVar[str] = "robot"

    def __init__(self, config: RobotConfig):
        self.config = config
        self.id = config.id
        self.robot_type = self.name
        self._lock = threading.RLock()
        self._held: dict[str, float] | None = None  # the hold action latched by the e-stop
        self.safety = SafetyLayer(
            config.safety, period_s=1.0 / config.control_hz, name=f"{self.name}:{self.id}"
        )
        self.safety.validate_keys(set(self.action_features) | set(self.joint_keys))

    def __str__(self) -> str:
        return f"{self.name} robot {self.id!r}"

    # ------------------------------------------------------------------ contract
    @property
    @abc.abstractmethod
    def observation_features(self) -> Features:
        """Keys of :meth:`get_observation`: ``float`` or a shape tuple (available while disconnected)."""

    @property
    @abc.abstractmethod
    def action_features(self) -> Features:
        """Keys of :meth:`send_action`, each ``float`` (available while disconnected)."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Whether the link is up."""

    @property
    def is_calibrated(self) -> bool:
        """LeRobot compatibility: drivers that need calibration override this."""
        return True

    def calibrate(self) -> None:  # noqa: B027 - optional hook
        """LeRobot compatibility: calibration lives in ``calibration/``; a no-op here."""

    def configure(self) -> None:  # noqa: B027 - optional hook
        """LeRobot compatibility: one-time device set-up; a no-op unless overridden."""

    @check_if_already_connected
    def connect(self, calibrate: bool = True) -> None:
        """Open the link; the watchdog (if configured) arms at the first command.

        Args:
            calibrate: LeRobot's signature; drivers that calibrate interactively use it.
        """
        self.safety.begin()
        self._held = None
        self._connect()
        if self.safety.config.watchdog_timeout_s is not None:
            self.safety.start_watchdog(self._watchdog_hold)
        logger.info("%s connected", self)

    def disconnect(self) -> None:
        """Leave the arm safe (hold or torque off), then close the link.

        The link is closed even if holding fails; the failure is logged.
        """
        if not self.is_connected:
            raise DeviceNotConnectedError(f"{self} is not connected: nothing to disconnect")
        self.safety.stop_watchdog()
        try:
            with self._lock:
                if self.config.disconnect_mode == "torque_off" and self._torque_off():
                    logger.info("%s: torque off before disconnect", self)
                else:
                    self._hold()
        except Exception:  # noqa: BLE001 - closing the link matters more than this error
            logger.exception("%s: could not hold position while disconnecting", self)
        finally:
            self._disconnect()
            logger.info("%s disconnected", self)

    @check_if_not_connected
    def get_observation(self) -> dict[str, Any]:
        """A flat dict with the keys of :attr:`observation_features`."""
        with self._lock:
            return self._get_observation()

    @check_if_not_connected
    def send_action(self, action: Mapping[str, Any]) -> dict[str, float]:
        """Send an action through the safety layer.

        Returns:
            The action actually sent (after clamping), or the hold action when the
            e-stop is latched or the action contained NaN/inf.

        Raises:
            ActionError: keys do not match :attr:`action_features` or values are not numbers.
        """
        values = self._coerce_action(action)
        with self._lock:
            self.safety.new_action()
            if self.safety.estopped:
                logger.warning("%s: e-stop latched, holding position (call reset_estop())", self)
                if self._held is None:  # latched while disconnected: latch the position now
                    self._held = self._hold_action()
                sent = self._send_action(self._held)
            elif not all(math.isfinite(v) for v in values.values()):
                bad = sorted(k for k, v in values.items() if not math.isfinite(v))
                logger.error("%s: action has NaN/inf in %s; rejected, holding position", self, bad)
                sent = self._send_action(self._hold_action())
            else:
                safe = self._safe_action(values)  # None: rejected (workspace), hold instead
                sent = self._send_action(safe if safe is not None else self._hold_action())
            self.safety.remember(sent, self.joint_keys)
            self.safety.kick_watchdog()
            return sent

    # ------------------------------------------------------------------ safety
    def emergency_stop(self) -> None:
        """Latch the e-stop and hold position now; safe to call from any thread."""
        self.safety.trigger_estop()
        if self.is_connected:
            with self._lock:
                try:
                    self._hold()
                except Exception:  # noqa: BLE001 - the latch stays set whatever happens
                    logger.exception("%s: hold after e-stop failed", self)
        logger.error("%s: EMERGENCY STOP latched", self)

    def reset_estop(self) -> None:
        """Release the e-stop latch; the next ``send_action`` moves again."""
        with self._lock:
            self.safety.reset_estop()
            self._held = None
        logger.warning("%s: e-stop reset", self)

    @property
    def joint_keys(self) -> tuple[str, ...]:
        """Action-style keys (``<joint>.pos``) of the position-controlled joints."""
        return tuple(k for k in self.action_features if k.endswith(".pos"))

    def present_positions(self) -> dict[str, float] | None:
        """Measured joint positions keyed like :attr:`joint_keys` (``None`` if unknown)."""
        return None

    def hardware_limits(self) -> dict[str, tuple[float, float]]:
        """Joint position limits the device itself has (intersected with the config's)."""
        return {}

    def forward_kinematics(self, joints: Mapping[str, float]) -> np.ndarray | None:
        """End-effector position (x, y, z) for joint targets, where the driver can compute it."""
        return None

    def _safe_action(self, action: dict[str, float]) -> dict[str, float] | None:
        """Clamp a finite action; ``None`` rejects it (the caller holds position).

        The default treats every key as a joint position target.
        """
        return self.safety.filter_joint_targets(
            action,
            present=self.present_positions(),
            hw_limits=self.hardware_limits(),
            fk=self.forward_kinematics if self.safety.config.workspace is not None else None,
        )

    def _coerce_action(self, action: Mapping[str, Any]) -> dict[str, float]:
        if not isinstance(action, Mapping):
            raise ActionError(
                f"{self}: action must be a dict with keys {list(self.action_features)}, "
                f"got {type(action).__name__}"
            )
        expected = list(self.action_features)
        missing = [k for k in expected if k not in action]
        unknown = [k for k in action if k not in self.action_features]
        if missing or unknown:
            raise ActionError(
                f"{self}: action keys do not match: missing {missing}, unknown {unknown}; "
                f"expected {expected}"
            )
        out = {}
        for k in expected:
            try:
                out[k] = float(np.asarray(action[k], dtype=np.float64).reshape(()))
            except (TypeError, ValueError):
                raise ActionError(f"{self}: action[{k!r}]={action[k]!r} is not a number") from None
        return out

    def _watchdog_hold(self) -> None:
        with self._lock:
            if self.is_connected:
                self._hold()

    def _hold(self) -> None:
        """Command the hold action now (watchdog, e-stop, disconnect).

        Drivers whose ``_send_action`` does more than command (the sim steps
        physics) override this to only set the hold target.
        """
        self._held = self._hold_action()
        self.safety.remember(self._send_action(self._held), self.joint_keys)

    def _torque_off(self) -> bool:
        """Turn the motors' torque off; return ``False`` where unsupported (then hold)."""
        return False

    # ------------------------------------------------------------------ driver hooks
    @abc.abstractmethod
    def _connect(self) -> None: ...

    @abc.abstractmethod
    def _disconnect(self) -> None: ...

    @abc.abstractmethod
    def _get_observation(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _send_action(self, action: dict[str, float]) -> dict[str, float]:
        """Command an already safe action; return what was sent."""

    @abc.abstractmethod
    def _hold_action(self) -> dict[str, float]:
        """The action (``action_features`` keys) that holds the present position."""
