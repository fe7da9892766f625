"""The one registry of robot and camera drivers: the ``type:`` in YAML picks the class.

Driver classes are named by import path, so importing this module loads no
driver (and neither lerobot nor rclpy)::

    from hardware.registry import make_robot_from_config
    robot = make_robot_from_config("configs/robots/sim_tabletop.yaml")

A YAML config is a mapping with ``type:`` and the fields of the driver's config
dataclass; nested camera configs carry their own ``type:`` (a robot's
``cameras:`` may omit it when the driver only takes one camera kind). YAML is
read with PyYAML and decoded into the dataclasses with draccus (LeRobot's
config library), so nested dataclasses, tuples, choices (enums) and unions are
checked, and each dataclass validates itself in ``__post_init__``.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from hardware.camera import Camera, CameraConfig
from hardware.robot import HardwareConfigError, HardwareError, Robot, RobotConfig
from hardware.safety import Choice

ROBOTS: dict[str, str] = {
    "sim": "hardware.sim_robot:SimRobot",
    "lerobot": "hardware.lerobot_adapter:LeRobotRobot",
    "ros2": "hardware.ros2.driver:ROS2Robot",
}
CAMERAS: dict[str, str] = {
    "sim": "hardware.sim_robot:SimCamera",
    "opencv": "hardware.opencv_camera:OpenCVCamera",
    "lerobot": "hardware.lerobot_adapter:LeRobotCamera",
    "ros2": "hardware.ros2.driver:ROS2Camera",
}


def _load_class(kind: str, table: dict[str, str], type_name: Any):
    if type_name not in table:
        raise HardwareConfigError(f"unknown {kind} type {type_name!r}: use one of {sorted(table)}")
    module, _, cls = table[type_name].partition(":")
    return getattr(importlib.import_module(module), cls)


def robot_class(type_name: str) -> type[Robot]:
    """The driver class registered under ``type_name``."""
    return _load_class("robot", ROBOTS, type_name)


def camera_class(type_name: str) -> type[Camera]:
    """The camera class registered under ``type_name``."""
    return _load_class("camera", CAMERAS, type_name)


def type_of(config: RobotConfig | CameraConfig) -> str:
    """The registry name of a config instance."""
    table = CAMERAS if isinstance(config, CameraConfig) else ROBOTS
    for name, ref in table.items():
        module, _, cls = ref.partition(":")
        mod = sys.modules.get(module)  # a config instance's driver module is loaded
        if mod is not None and getattr(mod, cls).config_class is type(config):
            return name
    raise HardwareConfigError(f"{type(config).__name__} is not a registered driver config")


# ---------------------------------------------------------------------- decoding
def _read(source: str | Path | dict) -> tuple[dict, str]:
    if isinstance(source, dict):
        return dict(source), "config"
    path = Path(source)
    if not path.is_file():
        raise HardwareConfigError(
            f"config file {path} not found: check the path (examples in configs/robots/)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise HardwareConfigError(f"{path} is not valid YAML: {_first_line(e)}") from None
    if not isinstance(data, dict):
        raise HardwareConfigError(f"{path} must hold a mapping with a `type:` key")
    return data, str(path)


def _decode(config_cls: type, data: dict, where: str):
    import draccus
    from draccus.utils import DecodingError, ParsingError

    _register_camera_decoder()
    try:
        return draccus.decode(config_cls, data)
    except HardwareError:
        raise
    except (DecodingError, ParsingError, TypeError, ValueError) as e:
        raise _one_line(e, where) from None


def _one_line(e: BaseException, where: str) -> HardwareConfigError:
    chain = [e]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    for err in chain:
        if isinstance(err, HardwareError):
            return HardwareConfigError(f"{where}: {_first_line(err)}")
    for err in chain:
        m = re.match(r"`([\w.]+)`: (.*)", _first_line(err))
        if m:
            return HardwareConfigError(f"{where}: field `{m[1]}`: {m[2]}")
    return HardwareConfigError(f"{where}: {_first_line(chain[-1])}")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


_CAMERA_DECODER = False


def _register_camera_decoder() -> None:
    """Let draccus decode any ``CameraConfig`` field through this registry's ``type:``."""
    global _CAMERA_DECODER
    if _CAMERA_DECODER:
        return
    from draccus.parsers.decoding import decode, decode_dataclass
    from draccus.utils import DecodingError

    def decode_camera(cls, raw, path=()):
        if is_dataclass(raw):
            return raw
        if not isinstance(raw, dict):
            raise DecodingError(path, f"a camera config must be a mapping, got {raw!r}")
        raw = dict(raw)
        type_name = raw.pop("type", None)
        if type_name is None:
            if cls is CameraConfig:
                raise DecodingError(path, f"camera config needs `type:` (one of {sorted(CAMERAS)})")
            concrete = cls
        else:
            concrete = camera_class(type_name).config_class
            if not issubclass(concrete, cls):
                raise DecodingError(
                    path,
                    f"camera type {type_name!r} is not allowed here: expected a {cls.__name__}",
                )
        return decode_dataclass(concrete, raw, path)

    def decode_choice(cls, raw, path=()):
        return cls.parse(raw, ".".join(path) or cls.__name__)

    decode.register(CameraConfig, decode_camera, include_subclasses=True)
    decode.register(Choice, decode_choice, include_subclasses=True)
    _CAMERA_DECODER = True


def load_robot_config(source: str | Path | dict) -> RobotConfig:
    """Read a robot YAML (or dict) into its driver's config dataclass."""
    data, where = _read(source)
    cls = robot_class(data.pop("type", None))
    return _decode(cls.config_class, data, where)


def load_camera_config(source: str | Path | dict) -> CameraConfig:
    """Read a camera YAML (or dict) into its driver's config dataclass."""
    data, where = _read(source)
    cls = camera_class(data.pop("type", None))
    return _decode(cls.config_class, data, where)


def make_robot_from_config(source: str | Path | dict | RobotConfig) -> Robot:
    """Build a (disconnected) robot from a YAML path, a dict with ``type:``, or a config instance."""
    if isinstance(source, RobotConfig):
        return robot_class(type_of(source))(source)
    data, where = _read(source)
    cls = robot_class(data.pop("type", None))
    return cls(_decode(cls.config_class, data, where))


def make_camera_from_config(source: str | Path | dict | CameraConfig) -> Camera:
    """Build a (disconnected) camera from a YAML path, a dict with ``type:``, or a config instance."""
    if isinstance(source, CameraConfig):
        return camera_class(type_of(source))(source)
    data, where = _read(source)
    cls = camera_class(data.pop("type", None))
    return cls(_decode(cls.config_class, data, where))


def config_to_dict(config) -> dict:
    """A plain dict of a config dataclass (for logs and provenance)."""
    out = {}
    for f in fields(config):
        v = getattr(config, f.name)
        out[f.name] = config_to_dict(v) if is_dataclass(v) else v
    return out
