"""Camera intrinsics/extrinsics, hand-eye calibration and reward success thresholds.

``calibration.render`` (MuJoCo ground-truth renders) and ``calibration.cli`` (the
``robo calibrate`` entry points) are imported on demand, not here.
"""

from calibration.boards import (
    BoardSpec,
    CalibrationError,
    CharucoSpec,
    ChessboardSpec,
    Detection,
    board_from_dict,
)
from calibration.handeye import (
    HandEyeResult,
    calibrate_hand_eye,
    invert_transform,
    make_transform,
    rotation_error_deg,
)
from calibration.intrinsics import (
    BoardPose,
    CameraCalibration,
    calibrate_intrinsics,
    detect_boards,
    estimate_pose,
    solve_pose,
)
from calibration.reward import SuccessThreshold, calibrate_success_threshold
from calibration.store import CalibrationStore, default_root

__all__ = [
    "BoardPose",
    "BoardSpec",
    "CalibrationError",
    "CalibrationStore",
    "CameraCalibration",
    "CharucoSpec",
    "ChessboardSpec",
    "Detection",
    "HandEyeResult",
    "SuccessThreshold",
    "board_from_dict",
    "calibrate_hand_eye",
    "calibrate_intrinsics",
    "calibrate_success_threshold",
    "default_root",
    "detect_boards",
    "estimate_pose",
    "invert_transform",
    "make_transform",
    "rotation_error_deg",
    "solve_pose",
]
