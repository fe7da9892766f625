"""MJCF of the tabletop scene: a 6-DoF arm with a parallel gripper, a table, objects, cameras.

The model is generated (not copied from a robot package) so that object sets and camera
poses come from the task definition. Geometry in metres, table top at z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASE_POS = (-0.55, 0.0, 0.0)
CUBE_HALF = 0.02
FINGER_OPEN = 0.045  # opening of each finger (m) when fully open

# Camera poses: (position, look-at target) in world coordinates.
FIXED_CAMERAS = {
    "front": ((0.42, 0.0, 0.42), (-0.06, 0.0, 0.02)),
    "side": ((-0.04, -0.58, 0.36), (-0.04, 0.0, 0.03)),
    "top": ((-0.02, 0.0, 0.85), (-0.02, 0.0, 0.0)),
}
CAMERA_NAMES = ("front", "side", "wrist", "top")


def look_at_xyaxes(pos, target, up=(0.0, 0.0, 1.0)) -> str:
    """MJCF ``xyaxes`` for a camera at ``pos`` looking at ``target`` (cameras look along -z)."""
    pos, target, up = (np.asarray(v, float) for v in (pos, target, up))
    forward = target - pos
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:  # looking straight down: pick +y as image up
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    return " ".join(f"{v:.5f}" for v in (*right, *cam_up))


@dataclass(frozen=True)
class ObjectSpec:
    """A free-floating box on the table."""

    name: str
    half: float = CUBE_HALF
    rgba: tuple[float, float, float, float] = (0.85, 0.15, 0.15, 1.0)
    mass: float = 0.05
    friction: float = 1.2


def _cameras_xml() -> str:
    out = []
    for name, (pos, target) in FIXED_CAMERAS.items():
        p = " ".join(f"{v:.4f}" for v in pos)
        out.append(
            f'<camera name="{name}" pos="{p}" xyaxes="{look_at_xyaxes(pos, target)}" fovy="55"/>'
        )
    return "\n    ".join(out)


def _objects_xml(objects: tuple[ObjectSpec, ...]) -> str:
    out = []
    for i, o in enumerate(objects):
        rgba = " ".join(f"{v:.3f}" for v in o.rgba)
        x = 0.05 * i
        out.append(
            f"""<body name="{o.name}" pos="{x} 0 {o.half}">
      <freejoint name="{o.name}_joint"/>
      <geom name="{o.name}_geom" type="box" size="{o.half} {o.half} {o.half}" rgba="{rgba}"
            mass="{o.mass}" friction="{o.friction} 0.01 0.0001" condim="4" solref="0.01 1"/>
    </body>"""
        )
    return "\n    ".join(out)


def build_scene_xml(objects: tuple[ObjectSpec, ...], goal_rgba=(0.1, 0.8, 0.2, 0.45)) -> str:
    """Return the MJCF string of the scene with the given objects."""
    g = " ".join(f"{v:.3f}" for v in goal_rgba)
    bx, by, bz = BASE_POS
    return f"""
<mujoco model="tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <global offwidth="1024" offheight="1024"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5" specular="0.1 0.1 0.1"/>
  </visual>
  <default>
    <joint damping="2" armature="0.05"/>
    <geom contype="1" conaffinity="1" solref="0.004 1"/>
    <default class="link">
      <geom type="capsule" rgba="0.75 0.76 0.8 1" mass="0.6" contype="0" conaffinity="0"/>
    </default>
    <default class="finger">
      <geom type="box" rgba="0.2 0.2 0.22 1" mass="0.02" friction="1.6 0.02 0.0001" condim="4"/>
    </default>
  </default>
  <asset>
    <texture name="grid" type="2d" builtin="checker" width="256" height="256"
             rgb1="0.32 0.34 0.38" rgb2="0.28 0.3 0.34"/>
    <material name="floor" texture="grid" texrepeat="8 8"/>
  </asset>
  <worldbody>
    <light name="key" pos="0.2 -0.3 1.6" dir="-0.1 0.2 -1" directional="true" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.7" size="3 3 0.1" material="floor" contype="0" conaffinity="0"/>
    <geom name="table" type="box" pos="-0.1 0 -0.025" size="0.6 0.55 0.025" rgba="0.62 0.5 0.38 1" friction="0.8 0.01 0.0001"/>
    {_cameras_xml()}
    <site name="goal" pos="0 0 0.001" type="cylinder" size="0.03 0.001" rgba="{g}"/>
    <body name="base" pos="{bx} {by} {bz}">
      <geom type="cylinder" size="0.07 0.03" pos="0 0 0.03" rgba="0.25 0.25 0.28 1"/>
      <body name="link1" pos="0 0 0.06" gravcomp="1">
        <joint name="j1" axis="0 0 1" range="-2.9 2.9" damping="20"/>
        <geom class="link" fromto="0 0 0 0 0 0.09" size="0.05"/>
        <body name="link2" pos="0 0 0.09" gravcomp="1">
          <joint name="j2" axis="0 1 0" range="-1.5 2.0" damping="20"/>
          <geom class="link" fromto="0 0 0 0 0 0.4" size="0.04"/>
          <body name="link3" pos="0 0 0.4" gravcomp="1">
            <joint name="j3" axis="0 1 0" range="-0.2 2.9" damping="15"/>
            <geom class="link" fromto="0 0 0 0 0 0.35" size="0.035"/>
            <body name="link4" pos="0 0 0.35" gravcomp="1">
              <joint name="j4" axis="0 0 1" range="-2.9 2.9" damping="5"/>
              <geom class="link" fromto="0 0 0 0 0 0.05" size="0.03" mass="0.3"/>
              <body name="link5" pos="0 0 0.05" gravcomp="1">
                <joint name="j5" axis="0 1 0" range="-2.2 2.2" damping="5"/>
                <geom class="link" fromto="0 0 0 0 0 0.05" size="0.028" mass="0.3"/>
                <body name="hand" pos="0 0 0.05" gravcomp="1">
                  <joint name="j6" axis="0 0 1" range="-2.9 2.9" damping="3"/>
                  <geom name="palm" type="box" size="0.025 0.06 0.015" pos="0 0 0.02" rgba="0.3 0.3 0.33 1" mass="0.2" contype="0" conaffinity="0"/>
                  <camera name="wrist" pos="0.075 0 0.0" xyaxes="0 1 0 0.95 0 0.3" fovy="80"/>
                  <site name="tcp" pos="0 0 0.115" size="0.005" rgba="1 0 0 0"/>
                  <body name="finger_left" pos="0 0 0.035" gravcomp="1">
                    <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_OPEN}" damping="5" armature="0.01"/>
                    <geom name="finger_left_geom" class="finger" size="0.012 0.007 0.045" pos="0 0.007 0.045"/>
                  </body>
                  <body name="finger_right" pos="0 0 0.035" gravcomp="1">
                    <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_OPEN}" damping="5" armature="0.01"/>
                    <geom name="finger_right_geom" class="finger" size="0.012 0.007 0.045" pos="0 -0.007 0.045"/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
    {_objects_xml(objects)}
  </worldbody>
  <contact>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <actuator>
    <position name="a1" joint="j1" kp="900" forcerange="-150 150"/>
    <position name="a2" joint="j2" kp="1200" forcerange="-150 150"/>
    <position name="a3" joint="j3" kp="900" forcerange="-150 150"/>
    <position name="a4" joint="j4" kp="250" forcerange="-50 50"/>
    <position name="a5" joint="j5" kp="250" forcerange="-50 50"/>
    <position name="a6" joint="j6" kp="150" forcerange="-50 50"/>
    <position name="grip_left" joint="finger_left" kp="400" forcerange="-12 12" ctrlrange="0 {FINGER_OPEN}"/>
    <position name="grip_right" joint="finger_right" kp="400" forcerange="-12 12" ctrlrange="0 {FINGER_OPEN}"/>
  </actuator>
</mujoco>
"""
