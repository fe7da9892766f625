"""LeRobot adapter: our safety runs before LeRobot's send_action; clear errors without hardware."""

import logging
from pathlib import Path

import numpy as np
import pytest

from hardware.lerobot_adapter import LeRobotCamera, LeRobotRobot
from hardware.robot import DeviceConnectionError, HardwareConfigError
from hardware.safety import SafetyConfig


class FakeLeRobot:
    """Duck-typed stand-in for a LeRobot follower arm (no lerobot needed)."""

    name = "fake_follower"
    id = "fake"

    def __init__(self):
        self.is_connected = False
        self.is_calibrated = True
        self.positions = {"shoulder.pos": 10.0, "gripper.pos": 50.0}
        self.received = []

    observation_features = {"shoulder.pos": float, "gripper.pos": float, "front": (4, 4, 3)}
    action_features = {"shoulder.pos": float, "gripper.pos": float}

    def connect(self, calibrate=True):
        self.is_connected = True

    def disconnect(self):
        self.is_connected = False

    def get_observation(self):
        return {**self.positions, "front": np.zeros((4, 4, 3), np.uint8)}

    def send_action(self, action):
        self.received.append(dict(action))
        return dict(action)


def test_send_action_goes_through_our_safety_first(caplog):
    inner = FakeLeRobot()
    robot = LeRobotRobot.from_lerobot(
        inner,
        control_hz=10,
        safety=SafetyConfig(joint_limits={"gripper.pos": (0.0, 100.0)}, max_relative_target=5.0),
    )
    assert robot.observation_features == inner.observation_features  # while disconnected
    with caplog.at_level(logging.WARNING), robot:
        sent = robot.send_action({"shoulder.pos": 30.0, "gripper.pos": 120.0})
        assert sent == {"shoulder.pos": 15.0, "gripper.pos": 55.0}  # 5 from the measured 10 / 50
        assert inner.received[-1] == sent
        assert robot.get_observation()["front"].shape == (4, 4, 3)
        nan = robot.send_action({"shoulder.pos": float("nan"), "gripper.pos": 0.0})
        assert nan == inner.positions  # rejected: holds the measured position
    assert "shoulder.pos clamped by max_relative_target: 30 -> 15" in caplog.text
    assert not inner.is_connected
    assert inner.received[-1] == inner.positions  # disconnect held position first


def test_uncalibrated_arm_is_refused_with_the_command_to_run():
    inner = FakeLeRobot()
    inner.is_calibrated = False
    robot = LeRobotRobot.from_lerobot(inner)
    with pytest.raises(DeviceConnectionError, match="not calibrated: run `lerobot-calibrate"):
        robot.connect()
    assert not inner.is_connected


def test_config_needs_a_lerobot_type():
    with pytest.raises(HardwareConfigError, match="LeRobot `type:`"):
        LeRobotRobot.config_class(robot={"port": "/dev/ttyACM0"})


@pytest.fixture
def so100_config(tmp_path):
    pytest.importorskip("serial", reason="LeRobot robots need pyserial")
    pytest.importorskip("scservo_sdk", reason="the SO-100 needs feetech-servo-sdk")
    from lerobot.robots.so_follower import SO100FollowerConfig

    return SO100FollowerConfig(
        port=str(tmp_path / "ttyACM9"), id="follower", calibration_dir=tmp_path
    )


def test_wraps_a_lerobot_config_with_features_while_disconnected(so100_config):
    robot = LeRobotRobot.from_lerobot(so100_config, safety=SafetyConfig(max_relative_target=10.0))
    assert robot.robot_type == "so100_follower" and not robot.is_connected
    motors = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    assert robot.action_features == {f"{m}.pos": float for m in motors}
    assert robot.observation_features == robot.action_features


def test_connect_on_a_missing_serial_port_is_one_clear_line(so100_config):
    so100_config.port = "/dev/ttyACM97"
    robot = LeRobotRobot.from_lerobot(so100_config)
    with pytest.raises(DeviceConnectionError) as err:
        robot.connect()
    msg = str(err.value)
    assert msg.startswith(
        "so100_follower port /dev/ttyACM97 not found: find the arm's port with `lerobot-find-port`"
    )
    assert "\n" not in msg and not robot.is_connected


def test_connect_on_a_port_that_is_no_serial_device(so100_config, tmp_path):
    (tmp_path / "ttyACM9").write_text("")  # exists, but is no serial device
    robot = LeRobotRobot.from_lerobot(so100_config)
    with pytest.raises(
        DeviceConnectionError, match=r"could not connect so100_follower on .*ttyACM9: "
    ) as err:
        robot.connect()
    assert "\n" not in str(err.value)


def test_unknown_lerobot_type_lists_the_choices():
    pytest.importorskip("serial", reason="LeRobot robots need pyserial")
    from hardware.registry import make_robot_from_config

    with pytest.raises(
        HardwareConfigError,
        match=r"unknown LeRobot robot type 'so100': use one of \[.*'so100_follower'",
    ):
        make_robot_from_config(
            {"type": "lerobot", "robot": {"type": "so100", "port": "/dev/ttyACM0"}}
        )


def test_lerobot_camera_on_a_missing_device():
    pytest.importorskip("lerobot.cameras.opencv")
    from hardware.registry import make_camera_from_config

    cam = make_camera_from_config(
        {"type": "lerobot", "camera": {"type": "opencv", "index_or_path": "/dev/video9"}}
    )
    assert isinstance(cam, LeRobotCamera)
    with pytest.raises(DeviceConnectionError, match="could not open") as err:
        cam.connect()
    assert "\n" not in str(err.value)


@pytest.mark.hardware
def test_so100_on_a_real_arm():
    """Needs an SO-100 on /dev/ttyACM0, calibrated as `follower`."""
    if not Path("/dev/ttyACM0").exists():
        pytest.skip("no SO-100 on /dev/ttyACM0")
    from lerobot.robots.so_follower import SO100FollowerConfig

    robot = LeRobotRobot.from_lerobot(
        SO100FollowerConfig(port="/dev/ttyACM0", id="follower"),
        safety=SafetyConfig(max_relative_target=5.0, watchdog_timeout_s=0.5),
    )
    with robot:
        obs = robot.get_observation()
        hold = {k: obs[k] for k in robot.action_features}
        assert robot.send_action(hold) == pytest.approx(hold, abs=1e-6)
