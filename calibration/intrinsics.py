"""Camera intrinsics from board images (``cv2.calibrateCamera``) and board poses by PnP.

Pixel coordinates follow OpenCV: the centre of pixel (0, 0) is (0, 0). Poses are
``target_to_camera`` 4x4 transforms (board frame to OpenCV camera frame, metres).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from calibration.boards import BoardSpec, CalibrationError, CharucoSpec, Detection
from calibration.handeye import make_transform

MIN_IMAGES = 4
MIN_CORNERS = 6

# "full": k1, k2, p1, p2, k3; "no_k3": k3 fixed at 0 (most lenses); "none": an ideal pinhole.
DistortionModel = Literal["full", "no_k3", "none"]
_DIST_FLAGS = {
    "full": 0,
    "no_k3": cv2.CALIB_FIX_K3,
    "none": cv2.CALIB_FIX_K1 | cv2.CALIB_FIX_K2 | cv2.CALIB_FIX_K3 | cv2.CALIB_ZERO_TANGENT_DIST,
}


@dataclass
class CameraCalibration:
    """Intrinsics of one camera, stored as JSON per ``camera_id``."""

    camera_id: str
    # (width, height) in pixels.
    image_size: tuple[int, int]
    # (3, 3) camera matrix.
    K: np.ndarray
    # OpenCV distortion coefficients (k1, k2, p1, p2, k3).
    dist: np.ndarray
    # RMS reprojection error over all corners of all used images, pixels.
    rms: float
    # images with a usable board detection, i.e. used by the calibration.
    n_images: int
    # RMS reprojection error of each used image, pixels.
    per_view_rms: list[float] = field(default_factory=list)
    # the board that was used (``spec.describe()``).
    board: dict = field(default_factory=dict)

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    def to_dict(self) -> dict:
        return {
            "camera_id": self.camera_id,
            "image_size": list(self.image_size),
            "K": np.asarray(self.K, float).tolist(),
            "dist": np.asarray(self.dist, float).reshape(-1).tolist(),
            "rms": float(self.rms),
            "n_images": int(self.n_images),
            "per_view_rms": [float(e) for e in self.per_view_rms],
            "board": dict(self.board),
        }

    @classmethod
    def from_dict(cls, d: dict) -> CameraCalibration:
        try:
            return cls(
                camera_id=str(d["camera_id"]),
                image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
                K=np.asarray(d["K"], dtype=np.float64).reshape(3, 3),
                dist=np.asarray(d["dist"], dtype=np.float64).reshape(-1),
                rms=float(d["rms"]),
                n_images=int(d["n_images"]),
                per_view_rms=[float(e) for e in d.get("per_view_rms", [])],
                board=dict(d.get("board", {})),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CalibrationError(f"not a camera calibration ({type(e).__name__}: {e})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> CameraCalibration:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise CalibrationError(f"camera calibration is not valid JSON: {e}") from None


@dataclass
class BoardPose:
    """A board pose from PnP: ``target_to_camera``, with its reprojection error."""

    # (4, 4) board frame to OpenCV camera frame.
    target_to_camera: np.ndarray
    # RMS reprojection error of the detected corners, pixels.
    rms: float
    n_corners: int

    @property
    def R(self) -> np.ndarray:
        return self.target_to_camera[:3, :3]

    @property
    def t(self) -> np.ndarray:
        return self.target_to_camera[:3, 3]


def detect_boards(
    images: Iterable[np.ndarray], board: BoardSpec, min_corners: int = MIN_CORNERS
) -> tuple[list[Detection | None], tuple[int, int]]:
    """Detect ``board`` in each image; unusable views (too few or collinear corners) are None.

    Returns:
        One detection or None per image, and the common image size ``(width, height)``.
    """
    detections, size = [], None
    for k, image in enumerate(images):
        h, w = np.asarray(image).shape[:2]
        if size is None:
            size = (w, h)
        elif size != (w, h):
            raise CalibrationError(
                f"image {k} is {w}x{h} but image 0 is {size[0]}x{size[1]}: "
                "calibrate one camera at one resolution"
            )
        detections.append(_usable(board.detect(image), board, min_corners))
    if size is None:
        raise CalibrationError("no images given: capture >= 10 images of the board")
    return detections, size


def calibrate_intrinsics(
    images: Iterable[np.ndarray],
    board: BoardSpec,
    camera_id: str = "camera",
    distortion: DistortionModel = "full",
    min_images: int = MIN_IMAGES,
    min_corners: int = MIN_CORNERS,
) -> CameraCalibration:
    """Intrinsics from images of ``board`` (ChArUco or chessboard).

    Args:
        images: uint8 images (H, W) or (H, W, 3) RGB, all of one size.
        board: the board that was imaged.
        camera_id: name stored with the result.
        distortion: which distortion coefficients to estimate.
        min_images: fewest usable images accepted.
        min_corners: fewest corners for an image to count as usable.

    Raises:
        CalibrationError: fewer than ``min_images`` images show the board with
            ``min_corners`` corners or more.
    """
    if distortion not in _DIST_FLAGS:
        raise CalibrationError(f"distortion {distortion!r}: use one of {list(_DIST_FLAGS)}")
    detections, size = detect_boards(images, board, min_corners)
    used = [d for d in detections if d is not None]
    if len(used) < min_images:
        raise CalibrationError(
            f"found a usable {board.kind} board in {len(used)} of {len(detections)} images "
            f"(need >= {min_images}, each with >= {min_corners} corners): capture more images "
            "with the whole board in view, sharp and evenly lit, from varied angles and distances"
        )
    rms, K, dist, _, _, _, _, per_view = cv2.calibrateCameraExtended(
        [d.object_points for d in used],
        [d.image_points for d in used],
        size,
        None,
        None,
        flags=_DIST_FLAGS[distortion],
    )
    return CameraCalibration(
        camera_id=camera_id,
        image_size=size,
        K=K,
        dist=dist.reshape(-1),
        rms=float(rms),
        n_images=len(used),
        per_view_rms=[float(e) for e in np.asarray(per_view).reshape(-1)],
        board=board.describe(),
    )


def estimate_pose(
    image: np.ndarray,
    board: BoardSpec,
    calibration: CameraCalibration,
    min_corners: int = MIN_CORNERS,
) -> BoardPose:
    """The board's pose in one image by PnP (``cv2.solvePnP``, IPPE then Levenberg-Marquardt).

    A plain chessboard's corner order, hence its pose, can flip by 180 degrees between
    images; use a ChArUco board when the pose matters (hand-eye).

    Raises:
        CalibrationError: the board shows fewer than ``min_corners`` corners.
    """
    detection = board.detect(image)
    n = 0 if detection is None else len(detection)
    if _usable(detection, board, min_corners) is None:
        raise CalibrationError(
            f"found {n} {board.kind} corners in the image (need >= {min_corners}, not all on "
            "one line): bring the whole board into view, sharp and evenly lit"
        )
    return solve_pose(detection, calibration)


def solve_pose(detection: Detection, calibration: CameraCalibration) -> BoardPose:
    """PnP for an existing detection (see :func:`estimate_pose`)."""
    obj = detection.object_points.astype(np.float64)
    img = detection.image_points.astype(np.float64)
    K, dist = calibration.K, calibration.dist
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, dist, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        raise CalibrationError("PnP failed on the detected corners: check the board spec")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, dist, rvec, tvec)
    proj = cv2.projectPoints(obj, rvec, tvec, K, dist)[0].reshape(-1, 2)
    rms = float(np.sqrt(np.mean(np.sum((proj - img) ** 2, axis=1))))
    return BoardPose(make_transform(rvec, tvec), rms, len(detection))


def _usable(detection: Detection | None, board: BoardSpec, min_corners: int) -> Detection | None:
    if detection is None or len(detection) < max(min_corners, 4):
        return None
    if isinstance(board, CharucoSpec) and board.board.checkCharucoCornersCollinear(detection.ids):
        return None
    return detection
