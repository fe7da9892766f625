"""Hand-eye calibration, eye-in-hand and eye-to-hand, plus the pose algebra it needs.

Transforms are 4x4 homogeneous matrices named ``a_to_b``: they map a point's
coordinates in frame ``a`` to frame ``b`` (``p_b = T_a_to_b @ p_a``), as OpenCV's
``R_gripper2base`` / ``R_target2cam`` do. Camera frames are OpenCV's (x right,
y down, z forward).

- **eye-in-hand** (camera on the gripper, board fixed in the world): from
  ``gripper_to_base`` (robot forward kinematics) and ``target_to_camera`` (board
  pose by PnP) at each station, solve ``camera_to_gripper``.
- **eye-to-hand** (camera fixed, board held by the gripper): as the OpenCV docs
  describe, pass the inverted robot poses ``base_to_gripper`` to the same solver,
  which then returns ``camera_to_base``.

``cv2.calibrateHandEye`` is used when the installed OpenCV exposes it. The
opencv-python 5.0.0 wheels do not (opencv/opencv#29565, fixed by #29584), so
``method="park"`` falls back to the same closed-form Park-Martin solution in
numpy/scipy: rotation by aligning the log-rotations of the relative motions
(``scipy.spatial.transform.Rotation.align_vectors``), translation by linear least
squares.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from calibration.boards import CalibrationError

HandEyeMode = Literal["eye_in_hand", "eye_to_hand"]
HandEyeMethod = Literal["tsai", "park", "horaud", "andreff", "daniilidis"]
_CV_METHODS = {
    "tsai": cv2.CALIB_HAND_EYE_TSAI,
    "park": cv2.CALIB_HAND_EYE_PARK,
    "horaud": cv2.CALIB_HAND_EYE_HORAUD,
    "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
    "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
}
MIN_POSES = 3


def make_transform(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from a rotation matrix (or Rodrigues vector) and a translation."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape in ((3,), (3, 1), (1, 3)):
        R = cv2.Rodrigues(R.reshape(3, 1))[0]
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (or a stack of them, ``(..., 4, 4)``)."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ T[..., :3, 3, None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle in degrees of the rotation taking ``R_b`` to ``R_a``."""
    cos = (np.trace(np.asarray(R_a)[:3, :3] @ np.asarray(R_b)[:3, :3].T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


@dataclass
class HandEyeResult:
    """The solved transform: ``camera_to_gripper`` (eye-in-hand) or ``camera_to_base`` (eye-to-hand)."""

    # (3, 3) rotation of the camera frame into the gripper (eye-in-hand) or base (eye-to-hand) frame.
    R: np.ndarray
    # (3,) camera origin in that frame, metres.
    t: np.ndarray
    mode: HandEyeMode
    method: HandEyeMethod
    n_poses: int
    # largest deviation (deg) across stations of the transform that should stay constant
    # (base_to_target eye-in-hand, gripper_to_target eye-to-hand): a consistency check.
    rot_spread_deg: float = 0.0
    # the same for its translation, metres.
    trans_spread_m: float = 0.0
    # "opencv" (cv2.calibrateHandEye) or "numpy" (the Park-Martin fallback).
    backend: str = "opencv"

    @property
    def matrix(self) -> np.ndarray:
        """4x4 ``camera_to_gripper`` or ``camera_to_base``."""
        return make_transform(self.R, self.t)

    @property
    def frame(self) -> str:
        return "camera_to_gripper" if self.mode == "eye_in_hand" else "camera_to_base"

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "frame": self.frame,
            "method": self.method,
            "backend": self.backend,
            "n_poses": self.n_poses,
            "R": np.asarray(self.R).tolist(),
            "t": np.asarray(self.t).reshape(3).tolist(),
            "rot_spread_deg": self.rot_spread_deg,
            "trans_spread_m": self.trans_spread_m,
        }

    @classmethod
    def from_dict(cls, d: dict) -> HandEyeResult:
        d = {k: v for k, v in d.items() if k != "frame"}
        return cls(**{**d, "R": np.asarray(d["R"], float), "t": np.asarray(d["t"], float)})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> HandEyeResult:
        return cls.from_dict(json.loads(text))


def calibrate_hand_eye(
    gripper_to_base: Sequence[np.ndarray],
    target_to_camera: Sequence[np.ndarray],
    mode: HandEyeMode = "eye_in_hand",
    method: HandEyeMethod = "park",
) -> HandEyeResult:
    """Solve the hand-eye transform from N >= 3 stations.

    Args:
        gripper_to_base: N 4x4 robot poses (forward kinematics), gripper frame to base frame.
        target_to_camera: N 4x4 board poses in the camera (e.g. :func:`estimate_pose`), same order.
        mode: ``eye_in_hand`` (camera on the gripper) or ``eye_to_hand`` (camera fixed).
        method: OpenCV's hand-eye method; without ``cv2.calibrateHandEye`` only ``park``.

    Returns:
        ``camera_to_gripper`` (eye-in-hand) or ``camera_to_base`` (eye-to-hand).

    Raises:
        CalibrationError: too few stations, mismatched lists, or motions that rotate about
            fewer than two distinct axes (the problem is then not observable).
    """
    G = _stack(gripper_to_base, "gripper_to_base")
    C = _stack(target_to_camera, "target_to_camera")
    if mode not in ("eye_in_hand", "eye_to_hand"):
        raise CalibrationError(f"hand-eye mode {mode!r}: use 'eye_in_hand' or 'eye_to_hand'")
    if method not in _CV_METHODS:
        raise CalibrationError(f"hand-eye method {method!r}: use one of {sorted(_CV_METHODS)}")
    if len(G) != len(C):
        raise CalibrationError(
            f"{len(G)} robot poses but {len(C)} board poses: give one of each per station"
        )
    if len(G) < MIN_POSES:
        raise CalibrationError(
            f"hand-eye needs >= {MIN_POSES} stations, got {len(G)}: record more robot poses "
            "with the board in view (10-20 is typical)"
        )
    A = G if mode == "eye_in_hand" else invert_transform(G)
    _check_rotation_diversity(A)
    if hasattr(cv2, "calibrateHandEye"):
        R, t = cv2.calibrateHandEye(
            A[:, :3, :3], A[:, :3, 3], C[:, :3, :3], C[:, :3, 3], method=_CV_METHODS[method]
        )
        backend = "opencv"
    elif method == "park":
        R, t = _park_martin(A, C)
        backend = "numpy"
    else:
        raise CalibrationError(
            f"this OpenCV ({cv2.__version__}) lacks cv2.calibrateHandEye (opencv#29565): "
            f"use method='park' instead of {method!r}, or another OpenCV build"
        )
    # OpenCV may return a reflection or a non-orthonormal matrix when the poses disagree
    # (seen with 5.1 on un-inverted eye-to-hand poses); the spread then says how far off
    X = make_transform(_nearest_rotation(np.asarray(R, np.float64)), t)
    rot_spread, trans_spread = _spread(A @ X @ C)
    return HandEyeResult(
        R=X[:3, :3],
        t=X[:3, 3],
        mode=mode,
        method=method,
        n_poses=len(G),
        rot_spread_deg=rot_spread,
        trans_spread_m=trans_spread,
        backend=backend,
    )


def _stack(poses: Sequence[np.ndarray], name: str) -> np.ndarray:
    try:
        arr = np.asarray([np.asarray(p, dtype=np.float64) for p in poses])
    except ValueError as e:
        raise CalibrationError(f"{name}: poses must all be 4x4 matrices ({e})") from None
    if arr.ndim != 3 or arr.shape[1:] != (4, 4):
        raise CalibrationError(f"{name}: expected N 4x4 matrices, got shape {arr.shape}")
    return arr


def _relative_motions(A: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j): ``A_j^-1 A_i`` and ``C_j C_i^-1``, which satisfy ``A X = X B``."""
    i, j = np.triu_indices(len(A), k=1)
    return invert_transform(A[j]) @ A[i], C[j] @ invert_transform(C[i])


def _check_rotation_diversity(A: np.ndarray) -> None:
    i, j = np.triu_indices(len(A), k=1)
    rel = np.swapaxes(A[j, :3, :3], -1, -2) @ A[i, :3, :3]
    axes = Rotation.from_matrix(rel).as_rotvec()
    s = np.linalg.svd(axes, compute_uv=False) / np.sqrt(len(axes))  # RMS angle per direction
    if s[0] < np.radians(2.0) or s[1] < 0.05 * s[0]:
        raise CalibrationError(
            "the robot poses rotate about fewer than two distinct axes: vary the gripper "
            "orientation between stations (tilt it about at least two non-parallel axes, 15-45 deg)"
        )


def _park_martin(A: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ``A X = X B`` (Park & Martin 1994): rotation by log alignment, then translation."""
    MA, MB = _relative_motions(A, C)
    alpha = Rotation.from_matrix(MA[:, :3, :3]).as_rotvec()
    beta = Rotation.from_matrix(MB[:, :3, :3]).as_rotvec()
    # R_A R_X = R_X R_B  <=>  log(R_A) = R_X log(R_B): a Wahba problem, solved by SVD.
    rot, _ = Rotation.align_vectors(alpha, beta)
    R = rot.as_matrix()
    # (R_A - I) t_X = R_X t_B - t_A, stacked over all pairs.
    lhs = (MA[:, :3, :3] - np.eye(3)).reshape(-1, 3)
    rhs = ((R @ MB[:, :3, 3, None])[..., 0] - MA[:, :3, 3]).reshape(-1)
    t = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return R, t


def _nearest_rotation(R: np.ndarray) -> np.ndarray:
    """The proper rotation nearest to a 3x3 matrix (Frobenius norm; SVD with det fixed)."""
    U, _, Vt = np.linalg.svd(R)
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0]) @ Vt


def _spread(T: np.ndarray) -> tuple[float, float]:
    """Max deviation of a stack of transforms from their mean (deg, metres)."""
    rots = Rotation.from_matrix(T[:, :3, :3])
    mean = rots.mean()
    rot_dev = np.degrees((rots * mean.inv()).magnitude()).max()
    trans = T[:, :3, 3]
    trans_dev = np.linalg.norm(trans - trans.mean(0), axis=1).max()
    return float(rot_dev), float(trans_dev)
