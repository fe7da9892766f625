"""ROS 2: message conversions (no rclpy needed), and the driver against the sim node on loopback."""

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest

from hardware.registry import make_camera_from_config, make_robot_from_config
from hardware.robot import DeviceConnectionError
from hardware.ros2.driver import (
    ROS2Error,
    ROS2Robot,
    array_to_image_fields,
    image_to_array,
    joint_positions,
    split_duration,
    trajectory_fields,
    trajectory_target,
)

ROOT = Path(__file__).resolve().parents[2]
JOINTS = ["j1", "j2", "j3", "j4", "j5", "j6", "gripper"]


# ---------------------------------------------------------------------- conversions
def test_image_conversion_handles_encodings_and_row_padding():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    fields = array_to_image_fields(rgb)
    assert fields["encoding"] == "rgb8" and fields["step"] == 9
    np.testing.assert_array_equal(image_to_array(NS(**fields)), rgb)
    bgr = rgb[:, :, ::-1]
    padded = np.zeros((2, 12), np.uint8)  # 9 bytes of pixels + 3 of padding per row
    padded[:, :9] = bgr.reshape(2, 9)
    msg = NS(encoding="bgr8", height=2, width=3, step=12, data=padded.tobytes())
    np.testing.assert_array_equal(image_to_array(msg), rgb)
    mono = NS(encoding="mono8", height=1, width=2, step=2, data=bytes([7, 9]))
    np.testing.assert_array_equal(image_to_array(mono), [[[7, 7, 7], [9, 9, 9]]])
    rgba = NS(encoding="rgba8", height=1, width=1, step=4, data=bytes([1, 2, 3, 255]))
    np.testing.assert_array_equal(image_to_array(rgba), [[[1, 2, 3]]])


def test_image_conversion_errors():
    with pytest.raises(ROS2Error, match="encoding '16UC1' is not supported"):
        image_to_array(NS(encoding="16UC1", height=1, width=1, step=2, data=b"\0\0"))
    with pytest.raises(ROS2Error, match="truncated"):
        image_to_array(NS(encoding="rgb8", height=2, width=2, step=6, data=b"\0" * 6))
    with pytest.raises(ROS2Error, match=r"\(H, W, 3\)"):
        array_to_image_fields(np.zeros((2, 2), np.uint8))


def test_joint_states_are_picked_by_name():
    msg = NS(name=["other", "j2", "j1"], position=[9.0, 0.2, 0.1])
    assert joint_positions(msg, ["j1", "j2"]) == {"j1": 0.1, "j2": 0.2}
    with pytest.raises(ROS2Error, match=r"lacks joints \['j3'\].*fix joint_names"):
        joint_positions(msg, ["j1", "j3"])
    with pytest.raises(ROS2Error, match="2 names but 1 positions"):
        joint_positions(NS(name=["a", "b"], position=[1.0]), ["a"])


def test_trajectory_helpers():
    assert split_duration(0.04) == (0, 40_000_000)
    assert split_duration(2.5) == (2, 500_000_000)
    assert split_duration(0.9999999999) == (1, 0)
    f = trajectory_fields(["a", "b"], [1, 2], 0.04)
    assert f == {
        "joint_names": ["a", "b"],
        "positions": [1.0, 2.0],
        "time_from_start": (0, 40_000_000),
    }
    msg = NS(joint_names=["a", "b"], points=[NS(positions=[0.0, 0.0]), NS(positions=[1.0, 2.0])])
    assert trajectory_target(msg) == {"a": 1.0, "b": 2.0}  # the final point
    with pytest.raises(ROS2Error, match="no points"):
        trajectory_target(NS(joint_names=["a"], points=[]))


def test_stale_joint_states_are_refused():
    robot = make_robot_from_config(ROOT / "configs/robots/ros2_arm.yaml")
    robot._state = {f"{j}.pos": 0.0 for j in JOINTS}
    robot._state_time = time.monotonic() - 5.0
    with pytest.raises(DeviceConnectionError, match="no JointState on /joint_states for 5.0 s"):
        robot.present_positions()


def test_missing_rclpy_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "rclpy", None)  # import rclpy -> ImportError
    robot = make_robot_from_config(ROOT / "configs/robots/ros2_arm.yaml")
    with pytest.raises(ROS2Error, match=r"pip install -e '\.\[ros2\]'"):
        robot.connect()
    assert not robot.is_connected


# ---------------------------------------------------------------------- on loopback
@pytest.fixture(scope="module")
def ros_env(tmp_path_factory):
    """A private ROS domain on loopback for this test run."""
    pytest.importorskip("rclpy", reason="needs the ros2 extra")
    env = {
        "ROS_DOMAIN_ID": str(random.randint(1, 101)),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOG_DIR": str(tmp_path_factory.mktemp("roslog")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def sim_node(ros_env, tmp_path_factory):
    """The MuJoCo arm served by ``hardware.ros2.sim_node`` in its own process."""
    robot_yaml = tmp_path_factory.mktemp("node") / "sim.yaml"
    robot_yaml.write_text(
        "type: sim\ntask: reach\ncontrol_hz: 25\n"
        "cameras: {front: {width: 48, height: 48}, wrist: {width: 48, height: 48}}\n"
        "safety: {max_velocity: 3.0}\n"
    )
    log = open(tmp_path_factory.mktemp("nodelog") / "node.log", "w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hardware.ros2.sim_node",
            "--robot",
            str(robot_yaml),
            "--image_hz",
            "10",
        ],
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        robot = arm(connect_timeout_s=30.0)  # the node needs a few seconds to start
        robot.connect()
        robot.disconnect()
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        output = log.read()
        log.close()
        if proc.returncode not in (0, -15):
            print(output)


def arm(**overrides) -> ROS2Robot:
    cfg = {
        "type": "ros2",
        "joint_names": JOINTS,
        "control_hz": 25,
        "connect_timeout_s": 15.0,  # DDS discovery on a loaded machine can take seconds
        "message_timeout_s": 1.0,
        "cameras": {
            "front": {
                "topic": "/camera/front/image_raw",
                "width": 48,
                "height": 48,
                "connect_timeout_s": 15.0,
            }
        },
        "safety": {"max_velocity": 2.0, "watchdog_timeout_s": 0.5},
        **overrides,
    }
    return make_robot_from_config(cfg)


def drive(robot, key: str, delta: float, steps: int = 40) -> tuple[float, float]:
    start = robot.get_observation()[key]
    target = robot.present_positions()
    target[key] = start + delta
    for _ in range(steps):
        robot.send_action(target)
        time.sleep(1 / 25)
    return start, robot.get_observation()[key]


@pytest.mark.ros2
def test_joint_states_and_images_arrive(sim_node):
    with arm() as robot:
        obs = robot.get_observation()
        assert set(obs) == set(robot.observation_features)
        assert obs["gripper.pos"] == pytest.approx(1.0, abs=0.01)  # the sim starts open
        assert -2.9 < obs["j1.pos"] < 2.9
        frame = obs["front"]
        assert frame.dtype == np.uint8 and frame.shape == (48, 48, 3) and frame.std() > 1


@pytest.mark.ros2
def test_trajectory_commands_move_the_sim_arm(sim_node):
    with arm() as robot:
        start, end = drive(robot, "j1.pos", 0.3)
        assert end - start == pytest.approx(0.3, abs=0.03)


@pytest.mark.ros2
def test_forward_position_commands_move_the_sim_arm(sim_node):
    with arm(command_interface="forward_position") as robot:
        start, end = drive(robot, "j1.pos", -0.3)
        assert end - start == pytest.approx(-0.3, abs=0.03)


@pytest.mark.ros2
def test_standalone_image_topic_camera(sim_node):
    cam = make_camera_from_config(
        {
            "type": "ros2",
            "topic": "/camera/wrist/image_raw",
            "width": 24,
            "height": 24,
            "connect_timeout_s": 15.0,
        }
    )
    with cam:
        assert cam.async_read(timeout_ms=1000).shape == (24, 24, 3)  # resized from 48
        assert cam.read_latest(max_age_ms=500).shape == (24, 24, 3)
        assert cam.read().dtype == np.uint8


@pytest.mark.ros2
def test_no_messages_within_the_timeout_is_a_clear_error(sim_node):
    robot = arm(joint_state_topic="/no_such_arm/joint_states", connect_timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(
        DeviceConnectionError,
        match=r"no sensor_msgs/msg/JointState on /no_such_arm/joint_states within 0.5 s \(no publisher\)",
    ) as err:
        robot.connect()
    assert time.monotonic() - t0 < 5 and "\n" not in str(err.value) and not robot.is_connected


@pytest.mark.ros2
def test_topic_of_the_wrong_type_is_named(sim_node):
    # the error is raised as soon as discovery shows the type: the timeout is only a ceiling
    robot = arm(joint_state_topic="/camera/front/image_raw")
    with pytest.raises(
        ROS2Error,
        match=r"topic /camera/front/image_raw carries sensor_msgs/msg/Image, expected sensor_msgs/msg/JointState",
    ):
        robot.connect()
    cam = make_camera_from_config(
        {"type": "ros2", "topic": "/joint_states", "connect_timeout_s": 15.0}
    )
    with pytest.raises(
        ROS2Error, match="carries sensor_msgs/msg/JointState, expected sensor_msgs/msg/Image"
    ):
        cam.connect()
