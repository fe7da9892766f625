"""Calibration targets: ChArUco and chessboard specs, their printable images, and detection.

Board frame (OpenCV's, for both kinds): origin at the outer top-left corner of the
pattern (margin excluded), x along the columns (right in the board image), y along
the rows (down in the board image), z into the board, away from a viewer who sees
its printed face. Object points lie in the plane z = 0, in metres.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import cv2
import numpy as np


class CalibrationError(ValueError):
    """An error the user can fix (too few detections, bad input); the message is one line."""


@dataclass(frozen=True)
class Detection:
    """Board corners found in one image, matched to their 3-D points on the board."""

    # (N, 3) float32 object points in the board frame (metres).
    object_points: np.ndarray
    # (N, 2) float32 pixel coordinates (OpenCV: pixel centres at integers).
    image_points: np.ndarray
    # (N,) int corner ids (ChArUco), or None (chessboard: all corners, in order).
    ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.image_points)


@dataclass(frozen=True)
class CharucoSpec:
    """A ChArUco board (``cv2.aruco.CharucoBoard``): chessboard squares with ArUco markers."""

    squares_x: int = 7
    squares_y: int = 5
    square_length: float = 0.04
    marker_length: float = 0.03
    # a predefined ``cv2.aruco`` dictionary name: DICT_5X5_100, DICT_6X6_250, DICT_APRILTAG_36h11...
    dictionary: str = "DICT_5X5_100"
    kind: ClassVar[str] = "charuco"

    def __post_init__(self) -> None:
        if self.squares_x < 3 or self.squares_y < 3:
            raise CalibrationError(
                f"ChArUco board {self.squares_x}x{self.squares_y}: use at least 3x3 squares"
            )
        if not 0 < self.marker_length < self.square_length:
            raise CalibrationError(
                f"marker_length {self.marker_length} must be in (0, square_length={self.square_length})"
            )
        if not (
            self.dictionary.startswith("DICT_")
            and isinstance(getattr(cv2.aruco, self.dictionary, None), int)
        ):
            raise CalibrationError(
                f"unknown ArUco dictionary {self.dictionary!r}: use a cv2.aruco name, e.g. DICT_5X5_100"
            )
        n_markers = (self.squares_x * self.squares_y) // 2
        capacity = len(self._dictionary.bytesList)
        if n_markers > capacity:
            raise CalibrationError(
                f"{self.dictionary} holds {capacity} markers but the board needs {n_markers}: "
                "use a larger dictionary or fewer squares"
            )

    @property
    def size_m(self) -> tuple[float, float]:
        """Pattern width and height in metres (margin excluded)."""
        return self.squares_x * self.square_length, self.squares_y * self.square_length

    @property
    def n_corners(self) -> int:
        return (self.squares_x - 1) * (self.squares_y - 1)

    @cached_property
    def _dictionary(self) -> cv2.aruco.Dictionary:
        return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))

    @cached_property
    def board(self) -> cv2.aruco.CharucoBoard:
        """The OpenCV board object."""
        return cv2.aruco.CharucoBoard(
            (self.squares_x, self.squares_y),
            self.square_length,
            self.marker_length,
            self._dictionary,
        )

    @cached_property
    def _detector(self) -> cv2.aruco.CharucoDetector:
        return cv2.aruco.CharucoDetector(self.board)

    def image(self, px_per_square: int = 100, margin_px: int = 0) -> np.ndarray:
        """The printable board (``board.generateImage``): uint8 grey, white margin of ``margin_px``."""
        size = (
            self.squares_x * px_per_square + 2 * margin_px,
            self.squares_y * px_per_square + 2 * margin_px,
        )
        return self.board.generateImage(size, marginSize=margin_px, borderBits=1)

    def detect(self, image: np.ndarray) -> Detection | None:
        """ChArUco corners in ``image`` (grey or RGB/BGR uint8), or None if no corner is found."""
        corners, ids, _, _ = self._detector.detectBoard(_grey(image))
        if ids is None or len(ids) == 0:
            return None
        obj, img = self.board.matchImagePoints(corners, ids)
        return Detection(
            obj.reshape(-1, 3).astype(np.float32),
            img.reshape(-1, 2).astype(np.float32),
            ids.reshape(-1).astype(int),
        )

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "squares_x": self.squares_x,
            "squares_y": self.squares_y,
            "square_length": self.square_length,
            "marker_length": self.marker_length,
            "dictionary": self.dictionary,
        }


@dataclass(frozen=True)
class ChessboardSpec:
    """A plain chessboard; ``squares_x`` x ``squares_y`` squares, so one fewer inner corners each way.

    Give one dimension even and the other odd so the detected corner order is unambiguous.
    """

    squares_x: int = 8
    squares_y: int = 7
    square_length: float = 0.03
    kind: ClassVar[str] = "chessboard"

    def __post_init__(self) -> None:
        if self.squares_x < 3 or self.squares_y < 3:
            raise CalibrationError(
                f"chessboard {self.squares_x}x{self.squares_y}: use at least 3x3 squares"
            )
        if self.square_length <= 0:
            raise CalibrationError(f"square_length {self.square_length} must be > 0 (metres)")

    @property
    def size_m(self) -> tuple[float, float]:
        return self.squares_x * self.square_length, self.squares_y * self.square_length

    @property
    def pattern_size(self) -> tuple[int, int]:
        """Inner corners per row and per column, as ``findChessboardCorners`` wants them."""
        return self.squares_x - 1, self.squares_y - 1

    @property
    def n_corners(self) -> int:
        return (self.squares_x - 1) * (self.squares_y - 1)

    @cached_property
    def object_points(self) -> np.ndarray:
        """(N, 3) inner corners, row by row, first one at (square, square, 0)."""
        nx, ny = self.pattern_size
        j, i = np.mgrid[1 : ny + 1, 1 : nx + 1]
        pts = np.stack([i.ravel(), j.ravel(), np.zeros(i.size)], axis=1) * self.square_length
        return pts.astype(np.float32)

    def image(self, px_per_square: int = 100, margin_px: int = 0) -> np.ndarray:
        """The printable board: black top-left square, white margin of ``margin_px``."""
        rows, cols = np.indices((self.squares_y * px_per_square, self.squares_x * px_per_square))
        squares = (rows // px_per_square + cols // px_per_square) % 2
        pattern = np.where(squares == 0, 0, 255).astype(np.uint8)
        return np.pad(pattern, margin_px, constant_values=255)

    def detect(self, image: np.ndarray) -> Detection | None:
        """Inner corners (``findChessboardCorners`` + ``cornerSubPix``), or None unless all are found."""
        grey = _grey(image)
        flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
        found, corners = cv2.findChessboardCorners(grey, self.pattern_size, flags=flags)
        if not found:
            return None
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)
        corners = cv2.cornerSubPix(grey, corners, (5, 5), (-1, -1), criteria)
        return Detection(self.object_points, corners.reshape(-1, 2).astype(np.float32))

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "squares_x": self.squares_x,
            "squares_y": self.squares_y,
            "square_length": self.square_length,
        }


BoardSpec = CharucoSpec | ChessboardSpec


def board_from_dict(d: dict) -> BoardSpec:
    """Inverse of ``spec.describe()``."""
    d = dict(d)
    kind = d.pop("kind", "charuco")
    if kind == "charuco":
        return CharucoSpec(**d)
    if kind == "chessboard":
        return ChessboardSpec(**d)
    raise CalibrationError(f"unknown board kind {kind!r}: use 'charuco' or 'chessboard'")


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise CalibrationError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    raise CalibrationError(f"expected a (H, W) or (H, W, 3) image, got shape {image.shape}")
