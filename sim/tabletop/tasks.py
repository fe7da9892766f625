"""The tabletop tasks (reach, push, pick-place, stack) and their scripted experts.

Privileged progress is stage-wise: each stage an equal share; within a stage the
normalised distance to that stage's goal, from simulator state only.
"""

from __future__ import annotations

import numpy as np

from sim.tabletop.env import TabletopEnv
from sim.tabletop.scene import CUBE_HALF, ObjectSpec

TABLE_XY_LOW = np.array([-0.18, -0.2])
TABLE_XY_HIGH = np.array([0.14, 0.2])


def _frac_done(dist: float, dist0: float) -> float:
    """1 - dist/dist0 clipped to [0, 1]."""
    return float(np.clip(1.0 - dist / max(dist0, 1e-6), 0.0, 1.0))


def _sample_apart(
    rng, n: int, min_dist: float, low=TABLE_XY_LOW, high=TABLE_XY_HIGH
) -> list[np.ndarray]:
    """``n`` xy points on the table, pairwise at least ``min_dist`` apart."""
    pts: list[np.ndarray] = []
    while len(pts) < n:
        p = rng.uniform(low, high)
        if all(np.linalg.norm(p - q) >= min_dist for q in pts):
            pts.append(p)
    return pts


class _ScriptedExpert:
    """Shared helpers of the experts: move the tool toward a point, report a stage."""

    def __init__(self, env: TabletopEnv):
        self.env = env
        self.stage = 0

    def reset(self) -> None:
        self.stage = 0

    def _move(self, target, grip: float, gain: float = 1.0) -> np.ndarray:
        delta = (np.asarray(target) - self.env.tcp) / self.env.max_displacement * gain
        return np.append(np.clip(delta, -1.0, 1.0), grip).astype(np.float32)


# ---------------------------------------------------------------------------- reach
class ReachEnv(TabletopEnv):
    """Move the gripper to a point above the table (one stage)."""

    STAGE_NAMES = ("reach",)
    TASK_TEXT = "move the gripper to the green target"
    ENV_ID = "tabletop/reach-v0"
    SUCCESS_DIST = 0.02

    def _place_objects(self, rng) -> None:
        self.goal = np.array([0.05, 0.1, 0.1])
        while self.randomization.object_pose:
            self.goal = np.array(
                [*rng.uniform(TABLE_XY_LOW, TABLE_XY_HIGH), rng.uniform(0.04, 0.2)]
            )
            if np.linalg.norm(self.goal[:2] - [-0.12, 0.0]) > 0.2:  # away from the start pose
                break

    def _on_reset(self) -> None:
        self._d0 = np.linalg.norm(self.tcp - self.goal)

    def _success(self) -> bool:
        return np.linalg.norm(self.tcp - self.goal) < self.SUCCESS_DIST

    def _stage_progress(self):
        return 0, _frac_done(np.linalg.norm(self.tcp - self.goal), self._d0)

    def expert(self):
        return ReachExpert(self)


class ReachExpert(_ScriptedExpert):
    def act(self, obs, info=None):
        return self._move(self.env.goal, -1.0)


# ---------------------------------------------------------------------------- push
class PushEnv(TabletopEnv):
    """Push a block across the table into the goal region (reach, push)."""

    OBJECTS = (ObjectSpec("block", half=0.025, rgba=(0.2, 0.35, 0.9, 1.0), mass=0.1, friction=0.6),)
    STAGE_NAMES = ("reach behind the block", "push the block to the goal")
    TASK_TEXT = "push the blue block onto the green target"
    ENV_ID = "tabletop/push-v0"
    SUCCESS_DIST = 0.03
    STANDOFF = 0.03  # distance of the pre-push point behind the block face

    def _place_objects(self, rng) -> None:
        if self.randomization.object_pose:
            block, goal = _sample_apart(rng, 2, 0.15, TABLE_XY_LOW + 0.03, TABLE_XY_HIGH - 0.03)
        else:
            block, goal = np.array([-0.1, -0.08]), np.array([0.05, 0.08])
        self.set_obj_pose("block", [*block, 0.025])
        self.goal = np.array([*goal, 0.025])

    def push_geometry(self):
        """Unit push direction, pre-push point, and the tool's (along, lateral) offset from the block."""
        block = self.obj_pos("block")
        u = self.goal[:2] - block[:2]
        u = u / max(np.linalg.norm(u), 1e-6)
        pre = block[:2] - u * (0.025 + self.STANDOFF)
        rel = self.tcp[:2] - block[:2]
        along = float(rel @ u)
        lateral = float(abs(u[0] * rel[1] - u[1] * rel[0]))
        return u, pre, along, lateral

    def _on_reset(self) -> None:
        _, pre, _, _ = self.push_geometry()
        self._d0_reach = np.linalg.norm(self.tcp - np.array([*pre, 0.03]))
        self._d0_block = np.linalg.norm(self.obj_pos("block")[:2] - self.goal[:2])

    def _success(self) -> bool:
        return np.linalg.norm(self.obj_pos("block")[:2] - self.goal[:2]) < self.SUCCESS_DIST

    def _stage_progress(self):
        _, pre, along, lateral = self.push_geometry()
        d_block = np.linalg.norm(self.obj_pos("block")[:2] - self.goal[:2])
        behind = (
            -(0.025 + self.STANDOFF + 0.015) <= along <= -0.02
            and lateral < 0.02
            and self.tcp[2] < 0.06
        )
        if behind or d_block < self._d0_block - 0.01:
            return 1, _frac_done(d_block - self.SUCCESS_DIST, self._d0_block - self.SUCCESS_DIST)
        return 0, _frac_done(np.linalg.norm(self.tcp - np.array([*pre, 0.03])), self._d0_reach)

    def expert(self):
        return PushExpert(self)


class PushExpert(_ScriptedExpert):
    PUSH_Z = 0.03
    SAFE_Z = 0.1

    def act(self, obs, info=None):
        env = self.env
        u, pre, along, lateral = env.push_geometry()
        tcp = env.tcp
        aligned = lateral < 0.015 and -(0.025 + env.STANDOFF + 0.02) <= along <= -0.022
        if self.stage == 1 and not (lateral < 0.03 and along < -0.015):
            self.stage = 0  # lost contact geometry: re-approach
        if self.stage == 0:
            if aligned and tcp[2] < self.PUSH_Z + 0.01:
                self.stage = 1
            elif np.linalg.norm(tcp[:2] - pre) > 0.015:
                z = (
                    self.SAFE_Z
                    if (tcp[2] < self.SAFE_Z - 0.02 and along > -0.06)
                    else max(tcp[2], self.PUSH_Z)
                )
                if tcp[2] < self.SAFE_Z - 0.02 and along > -0.06:
                    return self._move([*tcp[:2], self.SAFE_Z], 1.0)
                return self._move([*pre, z], 1.0)
            else:
                return self._move([*pre, self.PUSH_Z], 1.0)
        block = env.obj_pos("block")[:2]
        # Aim the tool along the line through the block toward the goal, a little ahead.
        line_pt = block - u * (0.025 + 0.008)
        target_xy = line_pt + u * 0.02
        return self._move([*target_xy, self.PUSH_Z], 1.0)


# ---------------------------------------------------------------------------- pick & place / stack
class PickPlaceEnv(TabletopEnv):
    """Pick a cube and place it on the goal (reach, grasp and lift, carry, place)."""

    OBJECTS = (ObjectSpec("cube", rgba=(0.85, 0.15, 0.15, 1.0)),)
    STAGE_NAMES = ("reach the cube", "grasp and lift", "carry to the goal", "place and release")
    TASK_TEXT = "pick up the red cube and place it on the green target"
    ENV_ID = "tabletop/pick-place-v0"
    CARRY_LIFT = 0.06  # cube lift that ends the lift stage
    XY_TOL = 0.02
    Z_TOL = 0.01
    PICK = "cube"

    def _place_objects(self, rng) -> None:
        if self.randomization.object_pose:
            cube, goal = _sample_apart(rng, 2, 0.14)
            yaw = rng.uniform(-0.3, 0.3)
        else:
            cube, goal, yaw = np.array([-0.1, -0.1]), np.array([0.05, 0.1]), 0.0
        self.set_obj_pose("cube", [*cube, CUBE_HALF], yaw)
        self.goal = np.array([*goal, CUBE_HALF])

    def goal_pos(self) -> np.ndarray:
        """Where the picked cube's centre must end up."""
        return self.goal

    def _on_reset(self) -> None:
        cube = self.obj_pos(self.PICK)
        self._rest_z = cube[2]
        self._d0_reach = np.linalg.norm(self.tcp - cube)
        self._d0_carry = np.linalg.norm(cube[:2] - self.goal_pos()[:2])

    def _success(self) -> bool:
        cube, goal = self.obj_pos(self.PICK), self.goal_pos()
        at_goal = (
            np.linalg.norm(cube[:2] - goal[:2]) < self.XY_TOL + 0.01
            and abs(cube[2] - goal[2]) < self.Z_TOL
        )
        return bool(at_goal and not any(self.touching(self.PICK)))

    def _stage_progress(self):
        cube, goal = self.obj_pos(self.PICK), self.goal_pos()
        if not self.grasped(self.PICK):
            return 0, _frac_done(np.linalg.norm(self.tcp - cube), self._d0_reach)
        xy = np.linalg.norm(cube[:2] - goal[:2])
        if xy < self.XY_TOL:
            # Lowering onto the goal earns 80% of the stage; releasing (success) the rest.
            return 3, 0.8 * _frac_done(max(cube[2] - goal[2], 0.0), self.CARRY_LIFT)
        if cube[2] - self._rest_z >= self.CARRY_LIFT:
            return 2, _frac_done(xy - self.XY_TOL, self._d0_carry - self.XY_TOL)
        return 1, float(np.clip((cube[2] - self._rest_z) / self.CARRY_LIFT, 0.0, 1.0))

    def expert(self):
        return PickPlaceExpert(self)


class StackEnv(PickPlaceEnv):
    """Stack the red cube on the blue cube (reach, grasp and lift, carry, place and release)."""

    OBJECTS = (
        ObjectSpec("cube", rgba=(0.85, 0.15, 0.15, 1.0)),
        ObjectSpec("base_cube", half=0.025, rgba=(0.15, 0.3, 0.85, 1.0), mass=0.4),
    )
    TASK_TEXT = "stack the red cube on top of the blue cube"
    ENV_ID = "tabletop/stack-v0"
    XY_TOL = 0.015

    def _place_objects(self, rng) -> None:
        if self.randomization.object_pose:
            cube, base = _sample_apart(rng, 2, 0.14)
            yaw = rng.uniform(-0.3, 0.3)
        else:
            cube, base, yaw = np.array([-0.1, -0.1]), np.array([0.05, 0.1]), 0.0
        self.set_obj_pose("cube", [*cube, CUBE_HALF], yaw)
        self.set_obj_pose("base_cube", [*base, 0.025])
        self.goal = np.array([*base, 0.05 + CUBE_HALF])

    def goal_pos(self) -> np.ndarray:
        return self.obj_pos("base_cube") + np.array([0.0, 0.0, 0.025 + CUBE_HALF])

    def _on_reset(self) -> None:
        super()._on_reset()
        self.goal = self.goal_pos()
        self.model.site_rgba[self.goal_site, 3] = 0.0  # the blue cube is the target


class PickPlaceExpert(_ScriptedExpert):
    """Approach from above, grasp, lift, carry, lower, release, retreat."""

    CLOSE_STEPS = 4
    APPROACH_Z = 0.08

    def reset(self) -> None:
        super().reset()
        self.closing = 0
        self.released = False

    def act(self, obs, info=None):
        env = self.env
        tcp, cube, goal = env.tcp, env.obj_pos(env.PICK), env.goal_pos()
        if self.released:
            return self._move([*tcp[:2], goal[2] + 0.12], -1.0)
        if env.grasped(env.PICK) and self.closing >= self.CLOSE_STEPS:
            return self._transport(tcp, cube, goal)
        if self.closing > 0:  # closing the fingers around the cube
            self.closing += 1
            if self.closing > self.CLOSE_STEPS + 6:  # grasp failed: open and retry
                self.closing = 0
            return self._move(cube, 1.0)
        self.stage = 0
        if np.linalg.norm(tcp[:2] - cube[:2]) > 0.012:
            above = [*cube[:2], cube[2] + self.APPROACH_Z]
            if tcp[2] < cube[2] + 0.04 and np.linalg.norm(tcp[:2] - cube[:2]) > 0.03:
                return self._move([*tcp[:2], cube[2] + self.APPROACH_Z], -1.0)
            return self._move(above, -1.0)
        if np.linalg.norm(tcp - cube) < 0.008:
            self.closing = 1
            self.stage = 1
            return self._move(cube, 1.0)
        return self._move(cube, -1.0)

    def _transport(self, tcp, cube, goal):
        env = self.env
        carry_z = max(goal[2], env._rest_z) + env.CARRY_LIFT + 0.02
        offset = tcp - cube  # tool relative to the held cube
        xy = np.linalg.norm(cube[:2] - goal[:2])
        if xy > env.XY_TOL * 0.5 and cube[2] < carry_z - 0.01 and self.stage <= 1:
            self.stage = 1
            return self._move([*tcp[:2], carry_z + offset[2] + 0.01], 1.0)
        if xy > env.XY_TOL * 0.4:
            self.stage = 2
            return self._move([*(goal[:2] + offset[:2]), carry_z + offset[2]], 1.0)
        self.stage = 3
        if cube[2] - goal[2] < 0.004:
            self.released = True
            return self._move(tcp, -1.0)
        return self._move(goal + offset - np.array([0, 0, 0.01]), 1.0, gain=0.6)
