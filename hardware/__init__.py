"""Hardware abstraction: the Robot and Camera contracts, their drivers, and safety.

Contracts (LeRobot-compatible): :class:`hardware.robot.Robot` and
:class:`hardware.camera.Camera`. Drivers, picked by the ``type:`` of a YAML in
``configs/robots/`` through :mod:`hardware.registry`:

========  ==============================================  ===========================
type      robot                                           camera
========  ==============================================  ===========================
sim       :class:`hardware.sim_robot.SimRobot`            :class:`~hardware.sim_robot.SimCamera`
lerobot   :class:`hardware.lerobot_adapter.LeRobotRobot`  :class:`~hardware.lerobot_adapter.LeRobotCamera`
ros2      :class:`hardware.ros2.driver.ROS2Robot`         :class:`~hardware.ros2.driver.ROS2Camera`
opencv    --                                              :class:`hardware.opencv_camera.OpenCVCamera`
========  ==============================================  ===========================

Every ``send_action`` passes :mod:`hardware.safety` (limits, workspace, NaN
rejection, watchdog, e-stop) and returns the action actually sent. Use a robot
as a context manager so it is left holding position on any exception or Ctrl-C::

    from hardware import make_robot_from_config

    with make_robot_from_config("configs/robots/sim_tabletop.yaml") as robot:
        obs = robot.get_observation()
        sent = robot.send_action({k: obs[k] for k in robot.action_features})

Importing this package loads neither lerobot nor rclpy.
"""

from hardware.camera import Camera, CameraConfig, NoFrameError, StaleFrameError
from hardware.registry import (
    load_camera_config,
    load_robot_config,
    make_camera_from_config,
    make_robot_from_config,
)
from hardware.robot import (
    ActionError,
    DeviceAlreadyConnectedError,
    DeviceConnectionError,
    DeviceNotConnectedError,
    HardwareConfigError,
    HardwareError,
    Robot,
    RobotConfig,
)
from hardware.safety import SafetyConfig, WorkspaceConfig

__all__ = [
    "ActionError",
    "Camera",
    "CameraConfig",
    "DeviceAlreadyConnectedError",
    "DeviceConnectionError",
    "DeviceNotConnectedError",
    "HardwareConfigError",
    "HardwareError",
    "NoFrameError",
    "Robot",
    "RobotConfig",
    "SafetyConfig",
    "StaleFrameError",
    "WorkspaceConfig",
    "load_camera_config",
    "load_robot_config",
    "make_camera_from_config",
    "make_robot_from_config",
]
