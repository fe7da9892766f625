"""A ROS 2 arm behind the robot contract (``type: ros2``), through rclpy.

* State: ``sensor_msgs/JointState`` on ``joint_state_topic``; the configured
  ``joint_names`` are picked out by name (other joints in the message are ignored).
* Commands: ``trajectory_msgs/JointTrajectory`` with one point reached after
  ``trajectory_duration_s`` (a ``joint_trajectory_controller``), or
  ``std_msgs/Float64MultiArray`` in ``joint_names`` order (a ros2_control
  ``forward_command_controller``), chosen by ``command_interface``.
* Cameras: ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8), subscribed
  best-effort so both sensor-data and reliable publishers match.

Keys follow LeRobot: ``<joint>.pos`` for observation and action, one image key
per camera. rclpy is imported only when a robot or camera connects, so the rest
of the platform never needs ROS 2. Each robot/camera runs its own rclpy context
(``domain_id`` or ``ROS_DOMAIN_ID``) and spins it in a background thread; no
signal handlers are installed (Ctrl-C stays a ``KeyboardInterrupt``).

The message conversion helpers at the top work on any object with the message
fields, so they are testable without ROS 2.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hardware.camera import BufferedCamera, CameraConfig, NoFrameError
from hardware.robot import (
    DeviceConnectionError,
    HardwareConfigError,
    HardwareError,
    Robot,
    RobotConfig,
)
from hardware.safety import Choice

logger = logging.getLogger(__name__)

JOINT_STATE = "sensor_msgs/msg/JointState"
IMAGE = "sensor_msgs/msg/Image"
TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
FLOAT_ARRAY = "std_msgs/msg/Float64MultiArray"
_CHANNELS = {
    "rgb8": 3,
    "bgr8": 3,
    "rgba8": 4,
    "bgra8": 4,
    "mono8": 1,
    "8UC1": 1,
    "8UC3": 3,
    "8UC4": 4,
}


class ROS2Error(HardwareError):
    """rclpy is missing, or a ROS 2 message or topic is not what the config expects."""


# ---------------------------------------------------------------------- conversions
def image_to_array(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` -> RGB ``uint8 (H, W, 3)`` (row padding in ``step`` removed)."""
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise ROS2Error(
            f"image encoding {enc!r} is not supported: publish one of {sorted(_CHANNELS)}"
        )
    ch, h, w = _CHANNELS[enc], int(msg.height), int(msg.width)
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    step = int(msg.step) or w * ch
    if buf.size < h * step or step < w * ch:
        raise ROS2Error(f"image message is truncated: {buf.size} bytes for {h} rows of {step}")
    img = buf[: h * step].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if ch == 1:
        return np.repeat(img, 3, axis=2)
    if enc.startswith("bgr") or enc in (
        "8UC3",
        "8UC4",
    ):  # OpenCV's order, the usual meaning of 8UC3
        img = img[:, :, [2, 1, 0]]
    return np.ascontiguousarray(img[:, :, :3])


def array_to_image_fields(frame: np.ndarray) -> dict[str, Any]:
    """RGB ``uint8 (H, W, 3)`` -> the fields of a ``sensor_msgs/Image`` (encoding rgb8)."""
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ROS2Error(f"expected an (H, W, 3) frame, got shape {frame.shape}")
    h, w, _ = frame.shape
    return {
        "height": h,
        "width": w,
        "encoding": "rgb8",
        "is_bigendian": 0,
        "step": 3 * w,
        "data": frame.tobytes(),
    }


def joint_positions(msg: Any, joint_names: Sequence[str]) -> dict[str, float]:
    """Positions of ``joint_names`` from a ``sensor_msgs/JointState`` (by name, any order)."""
    names = list(msg.name)
    pos = list(msg.position)
    if len(pos) != len(names):
        raise ROS2Error(f"JointState has {len(names)} names but {len(pos)} positions")
    index = {n: i for i, n in enumerate(names)}
    missing = [j for j in joint_names if j not in index]
    if missing:
        raise ROS2Error(
            f"JointState lacks joints {missing} (it has {names}): fix joint_names in the robot config"
        )
    return {j: float(pos[index[j]]) for j in joint_names}


def split_duration(seconds: float) -> tuple[int, int]:
    """Seconds -> ``(sec, nanosec)`` of a ``builtin_interfaces/Duration``."""
    if seconds < 0:
        raise ValueError(f"duration {seconds} is negative")
    sec = int(seconds)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return sec, nanosec


def trajectory_fields(
    joint_names: Sequence[str], positions: Sequence[float], duration_s: float
) -> dict[str, Any]:
    """The fields of a one-point ``JointTrajectory``: names, positions, time_from_start."""
    if len(joint_names) != len(positions):
        raise ROS2Error(f"{len(joint_names)} joint names but {len(positions)} positions")
    return {
        "joint_names": list(joint_names),
        "positions": [float(p) for p in positions],
        "time_from_start": split_duration(duration_s),
    }


def trajectory_target(msg: Any) -> dict[str, float]:
    """The final point of a ``JointTrajectory`` as ``{joint: position}``."""
    if not msg.points:
        raise ROS2Error("JointTrajectory has no points")
    point = msg.points[-1]
    if len(point.positions) != len(msg.joint_names):
        raise ROS2Error(
            f"JointTrajectory point has {len(point.positions)} positions for {len(msg.joint_names)} joints"
        )
    return {n: float(p) for n, p in zip(msg.joint_names, point.positions, strict=True)}


# ---------------------------------------------------------------------- rclpy plumbing
def _rclpy():
    try:
        import rclpy
    except ImportError:
        raise ROS2Error(
            "ROS 2 needs rclpy: pip install -e '.[ros2]' (rclpy wheels from PyPI) "
            "or source a ROS 2 installation"
        ) from None
    return rclpy


class RosSession:
    """An rclpy context with one node, spun by a background thread."""

    def __init__(self, node_name: str, domain_id: int | None = None):
        rclpy = _rclpy()
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(node_name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f"{node_name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - shutdown races end the loop; others are logged
                if self._stop.is_set() or not self.context.ok():
                    return
                logger.exception("ROS 2 callback failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        try:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            _rclpy().try_shutdown(context=self.context)

    def topic_types(self, topic: str, publishers: bool) -> list[str]:
        infos = (
            self.node.get_publishers_info_by_topic(topic)
            if publishers
            else self.node.get_subscriptions_info_by_topic(topic)
        )
        own = self.node.get_fully_qualified_name()
        return [
            i.topic_type for i in infos if f"{i.node_namespace.rstrip('/')}/{i.node_name}" != own
        ]


def _sensor_qos():
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT
    )


def _wait_for(
    session: RosSession, ready, topic: str, expected: str, timeout_s: float, what: str
) -> None:
    """Wait until ``ready()``; on timeout raise the clearest error we can (wrong type, no publisher)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        types = session.topic_types(topic, publishers=True)
        if types and expected not in types:
            raise ROS2Error(_wrong_type(topic, types, expected, what))
        time.sleep(0.02)
    types = session.topic_types(topic, publishers=True)
    if types and expected not in types:
        raise ROS2Error(_wrong_type(topic, types, expected, what))
    who = "a publisher exists but sent nothing" if types else "no publisher"
    raise DeviceConnectionError(
        f"no {expected} on {topic} within {timeout_s:g} s ({who}): is the robot driver running "
        f"(`ros2 topic list -t`), on the same ROS_DOMAIN_ID, and is {what} set right?"
    )


def _wrong_type(topic: str, types: list[str], expected: str, what: str) -> str:
    return (
        f"topic {topic} carries {sorted(set(types))[0]}, expected {expected}: "
        f"set {what} to a {expected.split('/')[-1]} topic (`ros2 topic list -t`)"
    )


# ---------------------------------------------------------------------- configs
class CommandInterface(Choice):
    """How joint targets reach the controller."""

    TRAJECTORY = "trajectory"  # trajectory_msgs/JointTrajectory (joint_trajectory_controller)
    FORWARD_POSITION = "forward_position"  # std_msgs/Float64MultiArray (forward_command_controller)


@dataclass(kw_only=True)
class ROS2CameraConfig(CameraConfig):
    """A ``sensor_msgs/Image`` topic.

    Args:
        topic: image topic.
        frame_id: if set, images with another ``header.frame_id`` are dropped (logged once).
        connect_timeout_s: how long ``connect()`` waits for the first image (DDS
            discovery of a new node can take a few seconds).
        node_name: node of a standalone camera.
        domain_id: ROS domain of a standalone camera (default: ``ROS_DOMAIN_ID``).
    """

    topic: str = "/camera/image_raw"
    frame_id: str | None = None
    connect_timeout_s: float = 5.0
    node_name: str = "robo_camera"
    domain_id: int | None = None

    def __post_init__(self):
        super().__post_init__()
        _check_topic(self.topic, "topic")
        _check_positive(self.connect_timeout_s, "connect_timeout_s")


@dataclass(kw_only=True)
class ROS2RobotConfig(RobotConfig):
    """An arm driven through ROS 2 topics.

    Args:
        joint_names: the commanded joints, in the controller's order.
        joint_state_topic: ``sensor_msgs/JointState`` topic.
        command_interface: ``trajectory`` or ``forward_position``.
        trajectory_topic: ``JointTrajectory`` command topic.
        forward_command_topic: ``Float64MultiArray`` command topic.
        trajectory_duration_s: ``time_from_start`` of the command point
            (``None``: one control period).
        base_frame: ``header.frame_id`` of the commands.
        cameras: observation key -> image topic config (width and height required).
        connect_timeout_s: how long ``connect()`` waits for the first joint state
            and image (DDS discovery of a new node can take a few seconds).
        message_timeout_s: the largest age of joint states and images accepted
            afterwards (older: the driver is taken for dead, a clear error).
        node_name: this driver's node name.
        domain_id: ROS domain (default: ``ROS_DOMAIN_ID``).
    """

    joint_names: tuple[str, ...] = ()
    joint_state_topic: str = "/joint_states"
    command_interface: CommandInterface = CommandInterface.TRAJECTORY
    trajectory_topic: str = "/arm_controller/joint_trajectory"
    forward_command_topic: str = "/forward_position_controller/commands"
    trajectory_duration_s: float | None = None
    base_frame: str = "base_link"
    cameras: dict[str, ROS2CameraConfig] = field(default_factory=dict)
    connect_timeout_s: float = 5.0
    message_timeout_s: float = 1.0
    node_name: str = "robo_hardware"
    domain_id: int | None = None

    def __post_init__(self):
        super().__post_init__()
        self.command_interface = CommandInterface.parse(self.command_interface, "command_interface")
        self.joint_names = tuple(self.joint_names)
        if not self.joint_names:
            raise HardwareConfigError(
                "joint_names is empty: list the arm's joints as the controller names them"
            )
        if len(set(self.joint_names)) != len(self.joint_names):
            raise HardwareConfigError(f"joint_names has duplicates: {list(self.joint_names)}")
        for name in ("joint_state_topic", "trajectory_topic", "forward_command_topic"):
            _check_topic(getattr(self, name), name)
        if self.trajectory_duration_s is not None and not self.trajectory_duration_s > 0:
            raise HardwareConfigError("trajectory_duration_s must be > 0 seconds (or null)")
        _check_positive(self.connect_timeout_s, "connect_timeout_s")
        _check_positive(self.message_timeout_s, "message_timeout_s")
        for key, cam in self.cameras.items():
            if cam.width is None or cam.height is None:
                raise HardwareConfigError(
                    f"cameras.{key}: set width and height (the observation features need them)"
                )


def _check_positive(value: float, name: str) -> None:
    if not (isinstance(value, int | float) and value > 0):
        raise HardwareConfigError(f"{name}={value!r}: use a number of seconds > 0")


def _check_topic(topic: str, name: str) -> None:
    if not isinstance(topic, str) or not topic.startswith("/") or " " in topic:
        raise HardwareConfigError(
            f"{name}={topic!r} is not an absolute ROS topic name such as /joint_states"
        )


# ---------------------------------------------------------------------- robot
class ROS2Robot(Robot):
    """See the module docstring."""

    config_class = ROS2RobotConfig
    name = "ros2"

    def __init__(self, config: ROS2RobotConfig):
        self.config = config
        self.session: RosSession | None = None
        self._state_lock = threading.Lock()
        self._state: dict[str, float] | None = None
        self._state_time = 0.0
        self._state_error: str | None = None
        self.cameras = {k: ROS2Camera(c, robot=self) for k, c in config.cameras.items()}
        super().__init__(config)

    def __str__(self) -> str:
        return f"ros2 robot {self.id!r}"

    @property
    def observation_features(self) -> dict[str, Any]:
        feats: dict[str, Any] = {f"{j}.pos": float for j in self.config.joint_names}
        for key, cam in self.config.cameras.items():
            feats[key] = (cam.height, cam.width, 3)
        return feats

    @property
    def action_features(self) -> dict[str, type]:
        return {f"{j}.pos": float for j in self.config.joint_names}

    @property
    def is_connected(self) -> bool:
        return self.session is not None

    def _connect(self) -> None:
        cfg = self.config
        self.session = RosSession(cfg.node_name, cfg.domain_id)
        try:
            self._subscribe_and_wait()
            for cam in self.cameras.values():
                cam.connect()
        except BaseException:
            self._close_session()
            raise

    def _subscribe_and_wait(self) -> None:
        from sensor_msgs.msg import JointState

        cfg, node = self.config, self.session.node
        self._state = None
        node.create_subscription(
            JointState, cfg.joint_state_topic, self._on_joint_state, _sensor_qos()
        )
        if cfg.command_interface == CommandInterface.TRAJECTORY:
            from trajectory_msgs.msg import JointTrajectory

            self._pub = node.create_publisher(JointTrajectory, cfg.trajectory_topic, 10)
            command_topic, command_type = cfg.trajectory_topic, TRAJECTORY
        else:
            from std_msgs.msg import Float64MultiArray

            self._pub = node.create_publisher(Float64MultiArray, cfg.forward_command_topic, 10)
            command_topic, command_type = cfg.forward_command_topic, FLOAT_ARRAY
        _wait_for(
            self.session,
            lambda: self._state is not None or self._state_error is not None,
            cfg.joint_state_topic,
            JOINT_STATE,
            cfg.connect_timeout_s,
            "joint_state_topic",
        )
        if self._state_error is not None:
            raise ROS2Error(self._state_error)
        others = self.session.topic_types(command_topic, publishers=False)
        if others and command_type not in others:
            raise ROS2Error(
                f"the controller on {command_topic} takes {sorted(set(others))[0]}, not {command_type}: "
                f"set command_interface to match the controller"
            )
        if not others:
            logger.warning(
                "%s: nothing subscribes to %s yet: is the controller active?", self, command_topic
            )

    def _on_joint_state(self, msg) -> None:
        try:
            pos = joint_positions(msg, self.config.joint_names)
        except ROS2Error as e:
            self._state_error = str(e)
            return
        with self._state_lock:
            self._state = {f"{j}.pos": v for j, v in pos.items()}
            self._state_time = time.monotonic()
            self._state_error = None

    def _close_session(self) -> None:
        for cam in self.cameras.values():
            if cam.is_connected:
                cam.disconnect()
        session, self.session = self.session, None
        if session is not None:
            session.close()

    def _disconnect(self) -> None:
        self._close_session()

    def present_positions(self) -> dict[str, float]:
        with self._state_lock:
            state, stamp = self._state, self._state_time
        age = time.monotonic() - stamp
        if state is None or age > self.config.message_timeout_s:
            raise DeviceConnectionError(
                f"{self}: no JointState on {self.config.joint_state_topic} for {age:.1f} s "
                f"(limit {self.config.message_timeout_s:g} s): did the robot driver stop?"
            )
        return dict(state)

    def _get_observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = self.present_positions()
        for key, cam in self.cameras.items():
            obs[key] = cam.read_latest(max_age_ms=self.config.message_timeout_s * 1000)
        return obs

    def _hold_action(self) -> dict[str, float]:
        return self.present_positions()

    def _send_action(self, action: dict[str, float]) -> dict[str, float]:
        cfg = self.config
        positions = [action[f"{j}.pos"] for j in cfg.joint_names]
        if cfg.command_interface == CommandInterface.TRAJECTORY:
            from builtin_interfaces.msg import Duration
            from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

            f = trajectory_fields(
                cfg.joint_names, positions, cfg.trajectory_duration_s or 1.0 / cfg.control_hz
            )
            msg = JointTrajectory()
            msg.header.frame_id = cfg.base_frame
            msg.joint_names = f["joint_names"]
            sec, nanosec = f["time_from_start"]
            msg.points = [
                JointTrajectoryPoint(
                    positions=f["positions"], time_from_start=Duration(sec=sec, nanosec=nanosec)
                )
            ]
        else:
            from std_msgs.msg import Float64MultiArray

            msg = Float64MultiArray(data=[float(p) for p in positions])
        self._pub.publish(msg)
        return dict(action)


# ---------------------------------------------------------------------- camera
class ROS2Camera(BufferedCamera):
    """A ``sensor_msgs/Image`` topic as a camera (its own node, or its robot's)."""

    config_class = ROS2CameraConfig
    name = "ros2"

    def __init__(self, config: ROS2CameraConfig, robot: ROS2Robot | None = None):
        super().__init__(config)
        self.robot = robot
        self._session: RosSession | None = None
        self._sub = None
        self._warned: set[str] = set()

    def __str__(self) -> str:
        return f"ros2 camera {self.config.topic}"

    @property
    def is_connected(self) -> bool:
        return self._sub is not None

    def _connect(self, warmup: bool) -> None:
        from sensor_msgs.msg import Image

        cfg = self.config
        if self.robot is not None:
            if self.robot.session is None:
                raise DeviceConnectionError(
                    f"{self} belongs to {self.robot}: connect the robot first"
                )
            session = self.robot.session
        else:
            session = self._session = RosSession(cfg.node_name, cfg.domain_id)
        self.buffer.clear()
        try:
            self._sub = session.node.create_subscription(
                Image, cfg.topic, self._on_image, _sensor_qos()
            )
            if warmup:
                _wait_for(
                    session,
                    lambda: self.buffer.seq > 0,
                    cfg.topic,
                    IMAGE,
                    cfg.connect_timeout_s,
                    "the camera topic",
                )
        except BaseException:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        session = self._session or (self.robot.session if self.robot is not None else None)
        if self._sub is not None and session is not None:
            session.node.destroy_subscription(self._sub)
        self._sub = None
        if self._session is not None:
            self._session.close()
            self._session = None

    def _on_image(self, msg) -> None:
        cfg = self.config
        if cfg.frame_id is not None and msg.header.frame_id != cfg.frame_id:
            self._warn_once(
                "frame",
                "%s: dropping images of frame %r (expected %r)",
                self,
                msg.header.frame_id,
                cfg.frame_id,
            )
            return
        try:
            frame = image_to_array(msg)
        except ROS2Error as e:
            self._warn_once("encoding", "%s: %s", self, e)
            return
        if (
            cfg.width is not None
            and cfg.height is not None
            and frame.shape[:2] != (cfg.height, cfg.width)
        ):
            import cv2

            self._warn_once(
                "size",
                "%s: images are %dx%d, resizing to %dx%d",
                self,
                frame.shape[1],
                frame.shape[0],
                cfg.width,
                cfg.height,
            )
            frame = cv2.resize(frame, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
        self.buffer.put(frame)

    def _warn_once(self, key: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(*args)

    def _read(self) -> np.ndarray:
        try:
            return super()._read()
        except NoFrameError:
            raise NoFrameError(
                f"{self}: no new image within the timeout: is the camera node still publishing?"
            ) from None
