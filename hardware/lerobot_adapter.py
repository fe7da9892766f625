"""Any LeRobot robot or camera behind our contract (``type: lerobot``).

The LeRobot device is built by LeRobot itself (``lerobot.robots.make_robot_from_config``,
``lerobot.cameras.make_cameras_from_configs``) from its own config, given as a
LeRobot config instance or as the YAML mapping LeRobot's CLI takes::

    type: lerobot
    robot: {type: so100_follower, port: /dev/ttyACM0, id: follower}
    safety: {max_relative_target: 10.0, watchdog_timeout_s: 0.5}

Connect, disconnect, features and observations are forwarded; ``send_action``
goes through **our** safety layer first (LeRobot's own ``max_relative_target``,
if set, applies after it). lerobot is imported only when an adapter is built.

Calibration: LeRobot's calibration is interactive (``input()``), so ``connect()``
does not run it unless ``calibrate: true``; an uncalibrated arm is refused with
the ``lerobot-calibrate`` command to run.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardware.camera import Camera, CameraConfig, NoFrameError, StaleFrameError
from hardware.robot import (
    DeviceConnectionError,
    HardwareConfigError,
    HardwareError,
    Robot,
    RobotConfig,
)

logger = logging.getLogger(__name__)


class LeRobotMissingError(HardwareError, ImportError):
    """lerobot (or a package one of its drivers needs) is not installed."""


def _import_lerobot(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        hint = {
            "serial": "pip install pyserial",
            "scservo_sdk": "pip install 'feetech-servo-sdk>=1,<2' (lerobot[feetech])",
            "dynamixel_sdk": "pip install 'dynamixel-sdk>=3.7.31,<3.9' (lerobot[dynamixel])",
            "lerobot": "make install (installs lerobot without its pins)",
        }.get(str(missing).split(".")[0], f"pip install the package providing {missing!r}")
        raise LeRobotMissingError(f"the LeRobot adapter needs {missing!r}: {hint}") from None


def _register_lerobot_configs(package: str) -> None:
    """Import the config modules of every LeRobot robot/camera so draccus knows their ``type``."""
    pkg = _import_lerobot(package)
    for sub in pkgutil.iter_modules(pkg.__path__):
        if not sub.ispkg:
            continue
        for mod in pkgutil.iter_modules([str(Path(pkg.__path__[0]) / sub.name)]):
            if mod.name.startswith("config"):
                try:
                    importlib.import_module(f"{package}.{sub.name}.{mod.name}")
                except Exception:  # noqa: BLE001 - a device whose SDK is missing is simply not offered
                    logger.debug("skipping %s.%s", package, sub.name, exc_info=True)


def _decode_lerobot(base_module: str, base_name: str, data: Mapping[str, Any], what: str):
    import draccus

    base = getattr(_import_lerobot(base_module), base_name)
    if "type" not in data:
        raise HardwareConfigError(f"{what} needs a LeRobot `type:` (e.g. so100_follower, opencv)")
    _register_lerobot_configs(base_module)
    if "cameras" in data:
        _register_lerobot_configs("lerobot.cameras")
    known = sorted(base.get_known_choices())
    if data["type"] not in known:
        raise HardwareConfigError(
            f"unknown LeRobot {what} type {data['type']!r}: use one of {known}"
        )
    try:
        return draccus.decode(base, dict(data))
    except Exception as e:  # noqa: BLE001 - draccus/LeRobot validation: one line for the user
        chain = [e]
        while chain[-1].__cause__ is not None:
            chain.append(chain[-1].__cause__)
        line = next(
            (ln.strip() for ln in str(chain[-1]).splitlines() if ln.strip()), type(e).__name__
        )
        raise HardwareConfigError(f"{what} is not a valid LeRobot config: {line}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@dataclass(kw_only=True)
class LeRobotRobotConfig(RobotConfig):
    """A LeRobot robot behind our contract.

    Args:
        robot: LeRobot's robot config as a mapping with its ``type`` (as for
            ``lerobot-record --robot.type=...``).
        calibrate: let LeRobot run its interactive calibration at connect when needed.
    """

    robot: dict[str, Any] = field(default_factory=dict)
    calibrate: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.robot and "type" not in self.robot:
            raise HardwareConfigError("robot: needs a LeRobot `type:` such as so100_follower")


class LeRobotRobot(Robot):
    """Wraps a LeRobot robot (built from ``config.robot`` or given as ``robot=``)."""

    config_class = LeRobotRobotConfig
    name = "lerobot"

    def __init__(self, config: LeRobotRobotConfig, robot: Any = None):
        if robot is None:
            if not config.robot:
                raise HardwareConfigError("robot: give the LeRobot robot config (with its `type:`)")
            lr_config = _decode_lerobot("lerobot.robots", "RobotConfig", config.robot, "robot")
            robot = self._build(lr_config)
        self.inner = robot
        super().__init__(config)
        self.robot_type = getattr(getattr(robot, "config", None), "type", None) or getattr(
            robot, "name", "lerobot"
        )

    @classmethod
    def from_lerobot(cls, robot_or_config: Any, **fields: Any) -> LeRobotRobot:
        """Wrap a LeRobot robot instance or config; ``fields`` are our config fields (safety, id...)."""
        if hasattr(robot_or_config, "send_action"):
            robot = robot_or_config
            type_name = getattr(robot, "name", type(robot).__name__)
        else:
            robot = cls._build(robot_or_config)
            type_name = robot_or_config.type
        fields.setdefault("id", getattr(robot, "id", None) or "robot")
        return cls(LeRobotRobotConfig(robot={"type": type_name}, **fields), robot=robot)

    @staticmethod
    def _build(lr_config: Any):
        utils = _import_lerobot("lerobot.robots.utils")
        if getattr(lr_config, "calibration_dir", None) is not None:
            lr_config.calibration_dir = Path(lr_config.calibration_dir)
        try:
            return utils.make_robot_from_config(lr_config)
        except ImportError as e:
            raise _import_error(e) from None

    def __str__(self) -> str:
        return f"lerobot {getattr(self.inner, 'name', 'robot')} {getattr(self.inner, 'id', None) or self.id!r}"

    # ------------------------------------------------------------------ contract
    @property
    def observation_features(self) -> dict[str, Any]:
        return dict(self.inner.observation_features)

    @property
    def action_features(self) -> dict[str, Any]:
        return dict(self.inner.action_features)

    @property
    def is_connected(self) -> bool:
        return bool(self.inner.is_connected)

    @property
    def is_calibrated(self) -> bool:
        return bool(self.inner.is_calibrated)

    def _connect(self) -> None:
        port = getattr(getattr(self.inner, "config", None), "port", None)
        if isinstance(port, str) and port.startswith("/dev/") and not Path(port).exists():
            raise DeviceConnectionError(self._port_hint(port, "not found"))
        try:
            self.inner.connect(calibrate=self.config.calibrate)
        except HardwareError:
            raise
        except (ConnectionError, OSError, RuntimeError, TimeoutError) as e:
            self._close_quietly()
            where = f" on {port}" if port else ""
            raise DeviceConnectionError(
                f"could not connect {self.robot_type}{where}: {_one_line(e)}"
            ) from None
        if not self.inner.is_calibrated:
            self._close_quietly()
            raise DeviceConnectionError(
                f"{self} is not calibrated: run `lerobot-calibrate --robot.type={self.robot_type} "
                f"--robot.port={port} --robot.id={self.inner.id}` (or set calibrate: true)"
            )

    def _port_hint(self, port: str, what: str) -> str:
        return (
            f"{self.robot_type} port {port} {what}: find the arm's port with `lerobot-find-port` "
            f"(usually /dev/ttyACM0 or /dev/ttyUSB0), check the USB cable and power, and that you "
            f"may open it (dialout group)"
        )

    def _close_quietly(self) -> None:
        try:
            if self.inner.is_connected:
                self.inner.disconnect()
            elif getattr(self.inner, "bus", None) is not None and self.inner.bus.is_connected:
                self.inner.bus.disconnect(False)
        except Exception:  # noqa: BLE001 - already failing; the original error is the one to show
            logger.debug("closing %s after a failed connect", self, exc_info=True)

    def _disconnect(self) -> None:
        self.inner.disconnect()

    def _get_observation(self) -> dict[str, Any]:
        return dict(self.inner.get_observation())

    def present_positions(self) -> dict[str, float] | None:
        bus = getattr(self.inner, "bus", None)
        if bus is not None and hasattr(bus, "sync_read"):
            return {f"{m}.pos": float(v) for m, v in bus.sync_read("Present_Position").items()}
        obs = self.inner.get_observation()
        return {k: float(obs[k]) for k in self.joint_keys if k in obs}

    def _send_action(self, action: dict[str, float]) -> dict[str, float]:
        sent = self.inner.send_action(dict(action))
        return {k: float(np.asarray(v)) for k, v in sent.items()}

    def _hold_action(self) -> dict[str, float]:
        present = self.present_positions() or {}
        # Non-position actions (a mobile base's velocities) hold by commanding zero.
        return {k: float(present[k]) if k in present else 0.0 for k in self.action_features}

    def _torque_off(self) -> bool:
        bus = getattr(self.inner, "bus", None)
        if bus is None or not hasattr(bus, "disable_torque"):
            return False
        bus.disable_torque()
        return True


def _import_error(e: ImportError) -> LeRobotMissingError:
    try:
        _import_lerobot(getattr(e, "name", None) or "lerobot")
    except LeRobotMissingError as err:
        return err
    return LeRobotMissingError(f"the LeRobot adapter could not import a driver: {_one_line(e)}")


@dataclass(kw_only=True)
class LeRobotCameraConfig(CameraConfig):
    """A LeRobot camera (``camera:`` is LeRobot's camera config with its ``type``)."""

    camera: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        if self.camera and "type" not in self.camera:
            raise HardwareConfigError("camera: needs a LeRobot `type:` such as opencv")


class LeRobotCamera(Camera):
    """Wraps a LeRobot camera (built from ``config.camera`` or given as ``camera=``)."""

    config_class = LeRobotCameraConfig
    name = "lerobot"

    def __init__(self, config: LeRobotCameraConfig, camera: Any = None):
        super().__init__(config)
        if camera is None:
            if not config.camera:
                raise HardwareConfigError(
                    "camera: give the LeRobot camera config (with its `type:`)"
                )
            lr_config = _decode_lerobot("lerobot.cameras", "CameraConfig", config.camera, "camera")
            camera = self._build(lr_config)
        self.inner = camera
        self.fps = getattr(camera, "fps", None)
        self.width = getattr(camera, "width", None)
        self.height = getattr(camera, "height", None)

    @classmethod
    def from_lerobot(cls, camera_or_config: Any) -> LeRobotCamera:
        """Wrap a LeRobot camera instance or config."""
        if hasattr(camera_or_config, "async_read"):
            return cls(LeRobotCameraConfig(), camera=camera_or_config)
        return cls(LeRobotCameraConfig(), camera=cls._build(camera_or_config))

    @staticmethod
    def _build(lr_config: Any):
        utils = _import_lerobot("lerobot.cameras.utils")
        try:
            return utils.make_cameras_from_configs({"camera": lr_config})["camera"]
        except ImportError as e:
            raise _import_error(e) from None

    def __str__(self) -> str:
        return f"lerobot camera {self.inner}"

    @property
    def is_connected(self) -> bool:
        return bool(self.inner.is_connected)

    def _connect(self, warmup: bool) -> None:
        try:
            self.inner.connect(warmup)
        except HardwareError:
            raise
        except (ConnectionError, OSError, RuntimeError, TimeoutError) as e:
            raise DeviceConnectionError(f"could not open {self.inner}: {_one_line(e)}") from None

    def _disconnect(self) -> None:
        self.inner.disconnect()

    def _read(self) -> np.ndarray:
        return self.inner.read()

    def _async_read(self, timeout_ms: float) -> np.ndarray:
        try:
            return self.inner.async_read(timeout_ms=timeout_ms)
        except TimeoutError as e:
            raise NoFrameError(f"{self}: {_one_line(e)}") from None

    def _read_latest(self, max_age_ms: float) -> np.ndarray:
        try:
            return self.inner.read_latest(max_age_ms=max_age_ms)
        except TimeoutError as e:
            raise StaleFrameError(f"{self}: {_one_line(e)}") from None
