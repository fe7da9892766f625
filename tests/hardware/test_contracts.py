"""Contract compliance of SimRobot and SimCamera (LeRobot-style device contract)."""

import numpy as np
import pytest

from hardware.camera import Camera
from hardware.registry import make_camera_from_config, make_robot_from_config
from hardware.robot import (
    ActionError,
    DeviceAlreadyConnectedError,
    DeviceNotConnectedError,
    Robot,
)
from hardware.sim_robot import SimCamera, SimCameraConfig, SimRobot

JOINTS = [f"j{i}.pos" for i in range(1, 7)] + ["gripper.pos"]
EE = ["ee.x", "ee.y", "ee.z", "ee.qw", "ee.qx", "ee.qy", "ee.qz"]


def make(action_space="joint", **kw) -> SimRobot:
    cfg = {
        "type": "sim",
        "task": "reach",
        "action_space": action_space,
        "cameras": {
            "front": {"width": 32, "height": 24},
            "hand": {"camera": "wrist", "width": 16, "height": 16},
        },
        **kw,
    }
    return make_robot_from_config(cfg)


def test_features_are_available_while_disconnected():
    robot = make()
    assert isinstance(robot, Robot) and not robot.is_connected
    assert robot.observation_features == {
        **dict.fromkeys(JOINTS, float),
        **dict.fromkeys(EE, float),
        "front": (24, 32, 3),
        "hand": (16, 16, 3),
    }
    assert robot.action_features == dict.fromkeys(JOINTS, float)
    assert make("cartesian").action_features == dict.fromkeys(["dx", "dy", "dz", "grip"], float)


def test_features_map_to_lerobot_dataset_features():
    utils = pytest.importorskip("lerobot.datasets.utils")
    feats = utils.hw_to_dataset_features(make().observation_features, "observation")
    assert feats["observation.state"]["names"] == JOINTS + EE
    assert feats["observation.images.front"]["shape"] == (24, 32, 3)


def test_guards_raise_one_line_errors_that_say_what_to_do():
    robot = make()
    for call in (robot.get_observation, lambda: robot.send_action({}), robot.disconnect):
        with pytest.raises(DeviceNotConnectedError) as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(DeviceNotConnectedError, match=r"call connect\(\) first"):
        robot.get_observation()
    robot.connect()
    try:
        with pytest.raises(DeviceAlreadyConnectedError, match=r"call disconnect\(\)"):
            robot.connect()
    finally:
        robot.disconnect()
    assert not robot.is_connected


def test_observation_matches_features_and_actions_step_physics():
    with make() as robot:
        obs = robot.get_observation()
        assert set(obs) == set(robot.observation_features)
        for key, feat in robot.observation_features.items():
            if feat is float:
                assert isinstance(obs[key], float)
            else:
                assert obs[key].dtype == np.uint8 and obs[key].shape == feat
        assert obs["gripper.pos"] == pytest.approx(1.0)
        np.testing.assert_allclose([obs[k] for k in EE[:3]], robot.unwrapped.tcp)
        t0 = robot.unwrapped.data.time
        target = {k: obs[k] for k in JOINTS}
        target["j1.pos"] += 0.2
        target["gripper.pos"] = 0.0
        sent = robot.send_action(target)
        assert sent == target  # nothing to clamp
        assert robot.unwrapped.data.time == pytest.approx(t0 + 1 / 25)  # one control period
        for _ in range(25):
            robot.send_action(target)
        after = robot.get_observation()
        assert after["j1.pos"] == pytest.approx(target["j1.pos"], abs=0.02)
        assert after["gripper.pos"] < 0.1


def test_cartesian_actions_move_the_tool():
    with make("cartesian") as robot:
        x0 = robot.get_observation()["ee.x"]
        for _ in range(10):
            sent = robot.send_action({"dx": 1.0, "dy": 0.0, "dz": 0.0, "grip": -1.0})
        assert sent == {"dx": 1.0, "dy": 0.0, "dz": 0.0, "grip": -1.0}
        assert robot.get_observation()["ee.x"] - x0 > 0.15  # 10 steps of 2 cm, some lag


def test_bad_actions_raise_action_errors():
    with make() as robot:
        good = robot.present_positions()
        with pytest.raises(ActionError, match=r"missing \['gripper.pos'\]"):
            robot.send_action({k: v for k, v in good.items() if k != "gripper.pos"})
        with pytest.raises(ActionError, match=r"unknown \['j7.pos'\]"):
            robot.send_action({**good, "j7.pos": 0.0})
        with pytest.raises(ActionError, match="is not a number"):
            robot.send_action({**good, "j1.pos": "fast"})
        with pytest.raises(ActionError, match="must be a dict"):
            robot.send_action([0.0] * 7)
        robot.send_action({k: np.float32(v) for k, v in good.items()})  # numpy scalars are fine


def test_context_manager_disconnects_even_on_exception():
    robot = make()
    with pytest.raises(KeyError):
        with robot:
            assert robot.is_connected and robot.cameras["front"].is_connected
            raise KeyError("boom")
    assert not robot.is_connected and not robot.cameras["front"].is_connected


def test_reset_reseeds_the_scene():
    with make() as robot:
        goal0 = robot.unwrapped.goal.copy()
        robot.reset(seed=5)
        assert not np.allclose(goal0, robot.unwrapped.goal)


def test_robot_cameras_show_the_robots_simulation():
    with make() as robot:
        cam = robot.cameras["hand"]
        assert isinstance(cam, Camera) and cam.camera == "wrist"
        frame = cam.read()
        np.testing.assert_array_equal(frame, robot.get_observation()["hand"])
        np.testing.assert_array_equal(cam.async_read(timeout_ms=100), frame)
        # rendered from the current state on demand: never stale
        np.testing.assert_array_equal(cam.read_latest(max_age_ms=1), frame)


def test_standalone_sim_camera_contract():
    cam = make_camera_from_config(
        {"type": "sim", "camera": "top", "task": "push", "width": 40, "height": 30}
    )
    assert isinstance(cam, SimCamera) and not cam.is_connected
    with pytest.raises(DeviceNotConnectedError, match="connect"):
        cam.read()
    with pytest.raises(KeyError):
        with cam:
            frame = cam.read()
            assert frame.dtype == np.uint8 and frame.shape == (30, 40, 3) and frame.std() > 0
            with pytest.raises(DeviceAlreadyConnectedError):
                cam.connect()
            raise KeyError("boom")
    assert not cam.is_connected


def test_sim_camera_config_validation():
    with pytest.raises(Exception, match="does not exist"):
        SimCameraConfig(camera="ceiling")
    with pytest.raises(Exception, match="8..1024"):
        SimCameraConfig(width=2000)
    with pytest.raises(Exception, match="no scene camera 'hand'"):
        make_robot_from_config({"type": "sim", "cameras": {"hand": {}}})
