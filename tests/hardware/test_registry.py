"""One registry: the YAML ``type:`` picks the driver; configs are typed and validated."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hardware.opencv_camera import OpenCVCamera, OpenCVCameraConfig
from hardware.registry import (
    CAMERAS,
    ROBOTS,
    load_robot_config,
    make_camera_from_config,
    make_robot_from_config,
)
from hardware.robot import HardwareConfigError
from hardware.ros2.driver import CommandInterface, ROS2Robot
from hardware.safety import WorkspaceViolation
from hardware.sim_robot import ActionSpace, SimCamera, SimRobot, SimRobotConfig, SimTask

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "robots"


def test_every_registered_name_resolves():
    from hardware.registry import camera_class, robot_class

    assert set(ROBOTS) == {"sim", "lerobot", "ros2"}
    assert set(CAMERAS) == {"sim", "opencv", "lerobot", "ros2"}
    for name in ("sim", "ros2"):
        assert robot_class(name).config_class is not None
    for name in ("sim", "opencv", "ros2"):
        assert camera_class(name).config_class is not None


def test_sim_yaml_builds_a_sim_robot_with_typed_nested_configs():
    robot = make_robot_from_config(CONFIGS / "sim_tabletop.yaml")
    assert isinstance(robot, SimRobot)
    cfg = robot.config
    assert cfg.task is SimTask.PICK_PLACE and cfg.action_space is ActionSpace.JOINT
    assert cfg.safety.workspace.on_violation is WorkspaceViolation.CLAMP
    assert cfg.safety.workspace.low == (-0.3, -0.35, 0.005)
    assert (
        isinstance(robot.cameras["wrist"], SimCamera) and robot.cameras["wrist"].camera == "wrist"
    )
    assert robot.observation_features["front"] == (96, 96, 3)
    with robot:  # the example config runs
        assert robot.send_action(robot.present_positions()).keys() == robot.action_features.keys()


def test_ros2_yaml_builds_without_rclpy():
    robot = make_robot_from_config(CONFIGS / "ros2_arm.yaml")
    assert isinstance(robot, ROS2Robot) and not robot.is_connected
    assert robot.config.command_interface is CommandInterface.TRAJECTORY
    assert list(robot.action_features) == [f"j{i}.pos" for i in range(1, 7)] + ["gripper.pos"]
    assert robot.observation_features["wrist"] == (96, 96, 3)
    assert robot.config.safety.joint_limits["j2.pos"] == (-1.5, 2.0)


def test_so100_yaml_builds_a_lerobot_robot(tmp_path):
    pytest.importorskip("serial", reason="LeRobot robots need pyserial")
    pytest.importorskip("scservo_sdk", reason="the SO-100 needs feetech-servo-sdk")
    from hardware.lerobot_adapter import LeRobotRobot

    data = yaml.safe_load((CONFIGS / "so100.yaml").read_text())
    data["robot"]["calibration_dir"] = str(tmp_path)  # keep LeRobot out of ~/.cache
    robot = make_robot_from_config(data)
    assert isinstance(robot, LeRobotRobot) and robot.robot_type == "so100_follower"
    assert "shoulder_pan.pos" in robot.action_features
    assert robot.observation_features["front"] == (480, 640, 3)


def test_camera_configs_build_each_driver(tmp_path):
    cam = make_camera_from_config(
        {"type": "opencv", "index_or_path": "/dev/video0", "backend": "v4l2"}
    )
    assert isinstance(cam, OpenCVCamera) and cam.config.backend == "v4l2"
    path = tmp_path / "cam.yaml"
    path.write_text("type: sim\ncamera: side\nwidth: 32\nheight: 32\n")
    assert isinstance(make_camera_from_config(path), SimCamera)
    assert isinstance(make_camera_from_config(OpenCVCameraConfig(index_or_path=1)), OpenCVCamera)


def test_config_instances_are_accepted():
    robot = make_robot_from_config(SimRobotConfig(task="push", action_space="cartesian"))
    assert isinstance(robot, SimRobot) and robot.config.task is SimTask.PUSH
    assert "dx" in robot.action_features


@pytest.mark.parametrize(
    "data, match",
    [
        ({"type": "kuka"}, r"unknown robot type 'kuka': use one of \['lerobot', 'ros2', 'sim'\]"),
        ({"task": "reach"}, "unknown robot type None"),
        ({"type": "sim", "tsk": "reach"}, "`tsk`"),
        ({"type": "sim", "task": "fold"}, r"task='fold' is invalid: use one of \['reach'"),
        ({"type": "sim", "control_hz": -5}, r"control_hz=-5(\.0)? is invalid"),
        ({"type": "sim", "safety": {"max_velocity": -1}}, "max_velocity"),
        (
            {"type": "sim", "cameras": {"front": {"type": "opencv", "index_or_path": 0}}},
            "not allowed here",
        ),
        ({"type": "ros2", "joint_names": []}, "joint_names is empty"),
        (
            {"type": "ros2", "joint_names": ["a"], "joint_state_topic": "joint_states"},
            "absolute ROS topic",
        ),
        (
            {"type": "ros2", "joint_names": ["a"], "command_interface": "effort"},
            "command_interface='effort'",
        ),
    ],
)
def test_bad_configs_give_one_line_errors(data, match):
    with pytest.raises(HardwareConfigError, match=match) as err:
        make_robot_from_config(data)
    assert "\n" not in str(err.value)


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(HardwareConfigError, match="not found: check the path"):
        load_robot_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: sim\n  task: [\n")
    with pytest.raises(HardwareConfigError, match="not valid YAML"):
        load_robot_config(bad)
    bad.write_text("- sim\n")
    with pytest.raises(HardwareConfigError, match="mapping with a `type:` key"):
        load_robot_config(bad)
    with pytest.raises(HardwareConfigError, match="unknown camera type 'webcam'"):
        make_camera_from_config({"type": "webcam"})


def test_core_imports_neither_lerobot_nor_rclpy():
    code = (
        "import sys, hardware, hardware.registry, hardware.ros2.driver, hardware.lerobot_adapter;"
        "print(sorted(m for m in ('rclpy', 'lerobot', 'mujoco', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_hardware_imports_only_sim_of_ours():
    ours = {"robo", "models", "calibration", "tests"}
    root = Path(__file__).resolve().parents[2] / "hardware"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] in ours]
            assert not bad, f"{path.name} imports {bad}"
