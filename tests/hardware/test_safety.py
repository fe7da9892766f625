"""Safety layer: exact clamps, workspace, NaN, watchdog, e-stop, safe disconnect."""

import logging
import math
import threading
import time

import numpy as np
import pytest

from hardware.registry import make_robot_from_config
from hardware.robot import HardwareConfigError
from hardware.safety import SafetyConfig, SafetyLayer, Watchdog, WorkspaceConfig
from hardware.sim_robot import SimRobot, SimRobotConfig

ARM_KEYS = [f"j{i}.pos" for i in range(1, 7)]


def layer(**kw) -> SafetyLayer:
    return SafetyLayer(SafetyConfig(**kw), period_s=0.1, name="test")


# ---------------------------------------------------------------------- pure clamps
def test_position_limit_clamps_exactly_and_logs(caplog):
    s = layer(joint_limits={"a.pos": (-1.0, 1.0)})
    with caplog.at_level(logging.WARNING, logger="hardware.safety"):
        out = s.filter_joint_targets({"a.pos": 1.7, "b.pos": -3.0})
    assert out == {"a.pos": 1.0, "b.pos": -3.0}  # b has no limit
    assert [(e.key, e.reason, e.requested, e.sent) for e in s.events] == [
        ("a.pos", "position limit", 1.7, 1.0)
    ]
    assert "a.pos clamped by position limit: 1.7 -> 1 (-0.7)" in caplog.text


def test_hardware_limits_intersect_config_limits():
    s = layer(joint_limits={"a.pos": (-1.0, 1.0)})
    out = s.filter_joint_targets({"a.pos": -0.9}, hw_limits={"a.pos": (-0.5, 2.0)})
    assert out["a.pos"] == -0.5


def test_max_relative_target_is_relative_to_the_measured_position():
    s = layer(max_relative_target=0.25)
    out = s.filter_joint_targets(
        {"a.pos": 0.6, "b.pos": -0.6}, present={"a.pos": 0.1, "b.pos": 0.0}
    )
    assert out == {"a.pos": 0.35, "b.pos": -0.25}
    per_joint = layer(max_relative_target={"a.pos": 0.05})
    out = per_joint.filter_joint_targets(
        {"a.pos": 0.6, "b.pos": 0.6}, present={"a.pos": 0.5, "b.pos": 0.0}
    )
    assert out == {"a.pos": 0.55, "b.pos": 0.6}


def test_max_velocity_limits_the_step_from_the_last_command():
    s = layer(max_velocity=2.0)  # 2 rad/s at 10 Hz: 0.2 per command
    first = s.filter_joint_targets({"a.pos": 1.0}, present={"a.pos": 0.0})
    assert first["a.pos"] == pytest.approx(0.2, abs=1e-15)
    s.remember(first, ["a.pos"])
    second = s.filter_joint_targets({"a.pos": 1.0}, present={"a.pos": 0.05})  # the arm lags
    assert second["a.pos"] == pytest.approx(0.4, abs=1e-15)
    assert s.events[-1].reason == "max_velocity"


def test_clamps_apply_in_order_and_never_exceed_limits():
    s = layer(joint_limits={"a.pos": (-1.0, 1.0)}, max_relative_target=0.5, max_velocity=10.0)
    # limit 1.0 first, then 0.5 from the measured 1.05 (outside the limit), then the limit again
    out = s.filter_joint_targets({"a.pos": 3.0}, present={"a.pos": 1.05})
    assert out["a.pos"] == 1.0
    out = s.filter_joint_targets({"a.pos": 3.0}, present={"a.pos": 0.2})
    assert out["a.pos"] == pytest.approx(0.7)


def test_workspace_clamps_cartesian_points_per_axis():
    s = layer(workspace=WorkspaceConfig(low=(-0.3, -0.35, 0.005), high=(0.25, 0.35, 0.35)))
    out = s.clamp_to_workspace([0.3, 0.1, -0.1])
    np.testing.assert_array_equal(out, [0.25, 0.1, 0.005])
    assert [(e.key, e.sent) for e in s.events] == [("x", 0.25), ("z", 0.005)]


def test_workspace_with_forward_kinematics_clamps_or_rejects_joint_targets():
    def fk(q):
        return np.array([q["a.pos"], 0.0, 0.0])

    box = {"low": (-0.5, -1.0, -1.0), "high": (0.5, 1.0, 1.0)}
    clamp = layer(workspace=WorkspaceConfig(**box))
    out = clamp.filter_joint_targets(
        {"a.pos": 0.9, "g.pos": 0.3}, present={"a.pos": 0.2, "g.pos": 0.0}, fk=fk
    )
    assert out["a.pos"] == pytest.approx(0.5, abs=1e-6) and out["a.pos"] <= 0.5
    reject = layer(workspace=WorkspaceConfig(**box, on_violation="reject"))
    assert reject.filter_joint_targets({"a.pos": 0.9}, present={"a.pos": 0.2}, fk=fk) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"joint_limits": {"a.pos": (1.0, -1.0)}}, "low must be below high"),
        ({"max_velocity": -1.0}, "positive"),
        ({"max_relative_target": {"a.pos": 0.0}}, "positive"),
        ({"watchdog_timeout_s": 0}, "positive"),
    ],
)
def test_bad_safety_configs_are_refused(kwargs, match):
    with pytest.raises(HardwareConfigError, match=match):
        SafetyConfig(**kwargs)
    with pytest.raises(HardwareConfigError, match="below high"):
        WorkspaceConfig(low=(0, 0, 0), high=(1, 1, 0))
    with pytest.raises(HardwareConfigError, match="use one of"):
        WorkspaceConfig(low=(0, 0, 0), high=(1, 1, 1), on_violation="ignore")


def test_safety_keys_must_name_the_robots_joints():
    with pytest.raises(HardwareConfigError, match=r"unknown joints \['j9.pos'\]"):
        SimRobot(SimRobotConfig(safety=SafetyConfig(joint_limits={"j9.pos": (0, 1)})))


def test_watchdog_fires_once_per_silence():
    fired = []
    wd = Watchdog(0.05, lambda: fired.append(time.monotonic()))
    wd.start()
    try:
        time.sleep(0.15)
        assert fired == []  # not armed before the first command
        wd.kick()
        time.sleep(0.25)
        assert len(fired) == 1
        wd.kick()
        time.sleep(0.25)
        assert len(fired) == 2 and wd.trips == 2
    finally:
        wd.stop()


# ---------------------------------------------------------------------- on the sim robot
def sim_robot(**safety) -> SimRobot:
    return make_robot_from_config(
        {"type": "sim", "task": "reach", "control_hz": 25, "safety": safety}
    )


def arm_ctrl(robot):
    return robot.unwrapped.data.ctrl[:6].copy()


def arm_qpos(robot):
    u = robot.unwrapped
    return u.data.qpos[u.arm_qadr].copy()


def test_nan_action_is_rejected_and_holds_position(caplog):
    with sim_robot() as robot:
        obs = robot.get_observation()
        action = {k: obs[k] for k in robot.action_features}
        action["j2.pos"] = math.nan
        action["j3.pos"] = math.inf
        q = arm_qpos(robot)
        with caplog.at_level(logging.ERROR):
            sent = robot.send_action(action)
        assert "NaN/inf in ['j2.pos', 'j3.pos']" in caplog.text
        assert all(math.isfinite(v) for v in sent.values())
        np.testing.assert_allclose([sent[k] for k in ARM_KEYS], q)
        np.testing.assert_allclose(arm_ctrl(robot), q)  # what the motors got
        assert sent["gripper.pos"] == pytest.approx(1.0)  # the gripper keeps its command


def test_sim_velocity_and_relative_target_clamps_are_exact():
    with sim_robot(max_velocity=1.0, max_relative_target=0.1) as robot:
        q0 = robot.present_positions()
        target = dict(q0)
        target["j1.pos"] += 0.5
        sent = robot.send_action(target)
        assert sent["j1.pos"] == pytest.approx(q0["j1.pos"] + 0.04, abs=1e-12)  # 1 rad/s at 25 Hz
        assert robot.unwrapped.data.ctrl[0] == sent["j1.pos"]
        reasons = [e.reason for e in robot.safety.events]
        # +0.1 from the measured q, then 0.04 (the first command's velocity reference is q)
        assert reasons == ["max_relative_target", "max_velocity"]


def test_joint_targets_leaving_the_workspace_stop_at_its_boundary():
    ws = {"low": [-0.3, -0.35, 0.15], "high": [0.25, 0.35, 0.35]}
    with sim_robot(workspace=ws) as robot:
        q0 = robot.present_positions()
        target = dict(q0)
        target["j2.pos"] += 0.6  # leans the arm forward and down through z = 0.15
        assert robot.forward_kinematics(target)[2] < 0.15
        sent = robot.send_action(target)
        z = robot.forward_kinematics(sent)[2]
        assert 0.15 - 1e-9 <= z < 0.15 + 1e-3  # on the boundary
        t = (sent["j2.pos"] - q0["j2.pos"]) / 0.6
        assert 0.0 < t < 1.0
        for k in ARM_KEYS:  # the motion was scaled back along the segment
            assert sent[k] == pytest.approx(q0[k] + t * (target[k] - q0[k]), abs=1e-9)
    ws["on_violation"] = "reject"
    with sim_robot(workspace=ws) as robot:
        q0 = robot.present_positions()
        target = dict(q0, **{"j2.pos": q0["j2.pos"] + 0.6})
        sent = robot.send_action(target)
        assert sent["j2.pos"] == pytest.approx(q0["j2.pos"], abs=1e-9)  # rejected: held


def test_cartesian_targets_are_clamped_to_the_workspace_exactly():
    cfg = {
        "type": "sim",
        "task": "reach",
        "action_space": "cartesian",
        "cartesian_step_m": 0.02,
        "safety": {"workspace": {"low": [-0.3, -0.35, 0.0], "high": [0.25, 0.35, 0.225]}},
    }
    with make_robot_from_config(cfg) as robot:
        ref = robot._cart_target.copy()
        assert ref[2] < 0.225 < ref[2] + 0.02  # the start pose is below the lid, one step from it
        sent = robot.send_action({"dx": 3.0, "dy": 0.0, "dz": 1.0, "grip": -1.0})
        assert sent["dx"] == 1.0  # action bound
        assert sent["dz"] == pytest.approx((0.225 - ref[2]) / 0.02, abs=1e-12)
        assert robot._cart_target[2] == pytest.approx(0.225, abs=1e-15)
        reasons = {(e.key, e.reason) for e in robot.safety.events}
        assert {("dx", "action bound"), ("z", "workspace")} <= reasons


def test_watchdog_holds_position_after_the_deadline():
    with sim_robot(watchdog_timeout_s=0.15) as robot:
        target = robot.present_positions()
        target["j1.pos"] += 0.3
        robot.send_action(target)
        assert arm_ctrl(robot)[0] == pytest.approx(target["j1.pos"])
        time.sleep(0.05)
        assert robot.safety.watchdog_trips == 0
        time.sleep(0.4)
        assert robot.safety.watchdog_trips == 1
        np.testing.assert_allclose(arm_ctrl(robot), arm_qpos(robot))  # holding where it is
        robot.send_action(target)  # commands resume and re-arm the watchdog
        assert arm_ctrl(robot)[0] == pytest.approx(target["j1.pos"])


def test_emergency_stop_from_another_thread_latches_until_reset():
    with sim_robot() as robot:
        target = robot.present_positions()
        target["j1.pos"] += 0.3
        robot.send_action(target)
        t = threading.Thread(target=robot.emergency_stop)
        t.start()
        t.join()
        assert robot.safety.estopped
        held = arm_qpos(robot)
        np.testing.assert_allclose(arm_ctrl(robot), held)
        for _ in range(10):
            sent = robot.send_action(target)
            assert sent["j1.pos"] == held[0]  # the position latched at the stop, never the command
            np.testing.assert_array_equal(arm_ctrl(robot), held)
        assert abs(arm_qpos(robot)[0] - held[0]) < 0.05  # momentum overshoot only, pulled back
        robot.reset_estop()
        assert robot.send_action(target)["j1.pos"] == target["j1.pos"]


def test_context_manager_holds_and_disconnects_on_exception(monkeypatch):
    robot = sim_robot()
    holds = []
    original = robot._hold
    monkeypatch.setattr(robot, "_hold", lambda: (holds.append(1), original()))
    with pytest.raises(RuntimeError, match="policy crashed"):
        with robot:
            robot.send_action(robot.present_positions())
            raise RuntimeError("policy crashed")
    assert holds == [1] and not robot.is_connected


def test_disconnect_closes_the_link_even_if_holding_fails(monkeypatch, caplog):
    robot = sim_robot()
    robot.connect()

    def broken():
        raise OSError("bus error")

    monkeypatch.setattr(robot, "_hold", broken)
    with caplog.at_level(logging.ERROR):
        robot.disconnect()
    assert not robot.is_connected
    assert "could not hold position while disconnecting" in caplog.text
