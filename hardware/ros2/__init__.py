"""ROS 2 driver (:mod:`hardware.ros2.driver`) and a ROS 2 node serving the MuJoCo arm
(:mod:`hardware.ros2.sim_node`). rclpy is imported lazily: importing this package
never needs ROS 2.
"""
