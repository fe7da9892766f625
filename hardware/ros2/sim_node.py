"""A ROS 2 node that serves the MuJoCo tabletop arm as a real arm's driver would.

It owns a :class:`hardware.sim_robot.SimRobot` (``action_space: joint``) and,
every control period (the robot's ``control_hz``, wall clock):

* steps the simulation toward the latest joint target (through the sim robot's
  own safety layer, as a robot-side controller would limit commands);
* publishes ``sensor_msgs/JointState`` (``j1`` .. ``j6`` in rad and the gripper
  opening 0..1 as joint ``gripper``) on ``joint_state_topic``;
* publishes each configured camera as ``sensor_msgs/Image`` (rgb8) on
  ``image_topic`` (``{name}`` is replaced by the camera key) at ``image_hz``.

It accepts ``trajectory_msgs/JointTrajectory`` (the final point is the target,
reached by the position servos, as a trajectory controller would end) and
``std_msgs/Float64MultiArray`` (one value per joint, in the published order).
A command may name a subset of the joints; the others keep their target.

Run it (Ctrl-C stops it and disconnects the arm)::

    python -m hardware.ros2.sim_node --robot configs/robots/sim_tabletop.yaml --image_hz 10

and drive it with ``configs/robots/ros2_arm.yaml``.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass

from hardware.robot import HardwareConfigError
from hardware.ros2.driver import (
    RosSession,
    _rclpy,
    array_to_image_fields,
    trajectory_target,
)
from hardware.sim_robot import ARM, ActionSpace, SimRobot

logger = logging.getLogger(__name__)


@dataclass
class SimNodeConfig:
    """Topics and rates of the sim node.

    Args:
        robot: YAML of the sim robot (``type: sim``) to serve.
        joint_state_topic: where joint states are published.
        trajectory_topic: ``JointTrajectory`` commands.
        forward_command_topic: ``Float64MultiArray`` commands.
        image_topic: image topic pattern, ``{name}`` = camera key.
        image_hz: image publishing rate.
        gripper_joint: joint name of the gripper opening in ROS messages.
        node_name: ROS node name.
        domain_id: ROS domain (default: ``ROS_DOMAIN_ID``).
    """

    robot: str = "configs/robots/sim_tabletop.yaml"
    joint_state_topic: str = "/joint_states"
    trajectory_topic: str = "/arm_controller/joint_trajectory"
    forward_command_topic: str = "/forward_position_controller/commands"
    image_topic: str = "/camera/{name}/image_raw"
    image_hz: float = 10.0
    gripper_joint: str = "gripper"
    node_name: str = "tabletop_sim"
    domain_id: int | None = None

    def __post_init__(self):
        if not 0 < self.image_hz <= 100:
            raise HardwareConfigError(f"image_hz={self.image_hz!r}: use (0, 100]")


class SimRobotNode:
    """See the module docstring. ``start()`` / ``stop()``, or ``run()`` until Ctrl-C."""

    def __init__(self, config: SimNodeConfig, robot: SimRobot | None = None):
        from hardware.registry import make_robot_from_config

        self.config = config
        self.robot = robot if robot is not None else make_robot_from_config(config.robot)
        if (
            not isinstance(self.robot, SimRobot)
            or self.robot.config.action_space != ActionSpace.JOINT
        ):
            raise HardwareConfigError(
                f"{config.robot}: the sim node serves a `type: sim` robot with `action_space: joint`"
            )
        self.joint_names = (*ARM, config.gripper_joint)
        self._keys = {
            n: f"{j}.pos" for n, j in zip(self.joint_names, (*ARM, "gripper"), strict=True)
        }
        self.session: RosSession | None = None
        self._target: dict[str, float] = {}
        self._target_lock = threading.Lock()
        self._tick = 0
        self.commands_received = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        from hardware.ros2.driver import _sensor_qos

        cfg = self.config
        self.robot.connect()
        self._target = self.robot.present_positions()
        self.session = RosSession(cfg.node_name, cfg.domain_id)
        node = self.session.node
        self._js_pub = node.create_publisher(JointState, cfg.joint_state_topic, 10)
        self._img_pubs = {
            key: node.create_publisher(Image, cfg.image_topic.format(name=key), _sensor_qos())
            for key in self.robot.cameras
        }
        node.create_subscription(JointTrajectory, cfg.trajectory_topic, self._on_trajectory, 10)
        node.create_subscription(Float64MultiArray, cfg.forward_command_topic, self._on_forward, 10)
        hz = self.robot.config.control_hz
        self._image_every = max(1, round(hz / cfg.image_hz))
        node.create_timer(1.0 / hz, self._step)
        logger.info("sim node %s serving %s at %g Hz", cfg.node_name, self.robot, hz)

    def stop(self) -> None:
        try:
            if self.session is not None:
                self.session.close()
                self.session = None
        finally:
            if self.robot.is_connected:
                self.robot.disconnect()

    def run(self) -> None:
        """Serve until Ctrl-C (or SIGTERM raised as an exception), then stop safely."""
        self.start()
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            logger.info("stopping")
        finally:
            self.stop()

    # ------------------------------------------------------------------ callbacks
    def _on_trajectory(self, msg) -> None:
        try:
            self._set_target(trajectory_target(msg))
        except Exception as e:  # noqa: BLE001 - a bad message must not kill the node
            logger.warning("ignored JointTrajectory: %s", e)

    def _on_forward(self, msg) -> None:
        if len(msg.data) != len(self.joint_names):
            logger.warning(
                "ignored Float64MultiArray of %d values: expected %d (%s)",
                len(msg.data),
                len(self.joint_names),
                list(self.joint_names),
            )
            return
        self._set_target(dict(zip(self.joint_names, (float(v) for v in msg.data), strict=True)))

    def _set_target(self, by_joint: dict[str, float]) -> None:
        unknown = sorted(set(by_joint) - set(self.joint_names))
        if unknown:
            raise ValueError(f"unknown joints {unknown}; this arm has {list(self.joint_names)}")
        with self._target_lock:
            for name, value in by_joint.items():
                self._target[self._keys[name]] = value
        self.commands_received += 1

    def _step(self) -> None:
        try:
            with self._target_lock:
                target = dict(self._target)
            self.robot.send_action(target)
            self._publish_state()
            if self._tick % self._image_every == 0:
                self._publish_images()
            self._tick += 1
        except Exception:  # noqa: BLE001 - keep serving; the failure is logged
            logger.exception("sim node step failed")

    def _publish_state(self) -> None:
        from sensor_msgs.msg import JointState

        pos = self.robot.present_positions()
        msg = JointState()
        msg.header.stamp = self.session.node.get_clock().now().to_msg()
        msg.name = list(self.joint_names)
        msg.position = [pos[self._keys[n]] for n in self.joint_names]
        self._js_pub.publish(msg)

    def _publish_images(self) -> None:
        from sensor_msgs.msg import Image

        stamp = self.session.node.get_clock().now().to_msg()
        for key, pub in self._img_pubs.items():
            fields = array_to_image_fields(self.robot.cameras[key].read())
            msg = Image(**fields)
            msg.header.stamp = stamp
            msg.header.frame_id = f"{key}_camera"
            pub.publish(msg)


def main(argv: list[str] | None = None) -> None:
    import draccus

    _rclpy()  # a one-line error if rclpy is missing
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = draccus.parse(SimNodeConfig, args=argv)

    def _terminate(signum, frame):  # SIGTERM stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    SimRobotNode(cfg).run()


__all__ = ["SimNodeConfig", "SimRobotNode", "main"]

if __name__ == "__main__":
    main()
