"""Entry points of ``robo calibrate camera|handeye|reward``: one config dataclass and one function each.

The configs are draccus-ready (a comment above each field becomes its ``--help``
line); ``robo.cli`` registers them. Each function validates its inputs, runs, prints
a short summary, writes its JSON and returns the result object.

File formats:

- ``calibrate_camera``: a folder of images (``.png``/``.jpg``/``.jpeg``/``.bmp``) of the
  board, or ``--render N`` to render N views in MuJoCo and check against ground truth.
- ``calibrate_handeye``: a poses JSON, either a list or ``{"stations": [...]}``, each
  station ``{"image": "img_000.png", "gripper_to_base": [[4x4 row-major, metres]]}``;
  image paths are relative to ``--images`` (default: the JSON's folder).
- ``calibrate_reward``: ``{"progress": [...], "success": [...]}`` or a list of
  ``{"progress": p, "success": bool}``, one per labelled rollout.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import cv2
import numpy as np

from calibration.boards import BoardSpec, CalibrationError, CharucoSpec, ChessboardSpec
from calibration.handeye import HandEyeResult, calibrate_hand_eye
from calibration.intrinsics import CameraCalibration, calibrate_intrinsics, estimate_pose
from calibration.reward import SuccessThreshold, calibrate_success_threshold
from calibration.store import CalibrationStore

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


# StrEnums rather than Literal: draccus parses Enums (and lists the choices), not Literal.
class BoardKind(StrEnum):
    charuco = "charuco"
    chessboard = "chessboard"


class Distortion(StrEnum):
    full = "full"
    no_k3 = "no_k3"
    none = "none"


class HandEyeModeChoice(StrEnum):
    eye_in_hand = "eye_in_hand"
    eye_to_hand = "eye_to_hand"


class HandEyeMethodChoice(StrEnum):
    tsai = "tsai"
    park = "park"
    horaud = "horaud"
    andreff = "andreff"
    daniilidis = "daniilidis"


@dataclass
class BoardConfig:
    """The calibration target."""

    # charuco (recommended: partial views still count, poses are unambiguous) or chessboard.
    kind: BoardKind = BoardKind.charuco
    # squares along the board's width.
    squares_x: int = 7
    # squares along the board's height.
    squares_y: int = 5
    # side of one square as printed, metres (measure it: it sets the scale of all poses).
    square_length: float = 0.04
    # side of one ArUco marker, metres (charuco only).
    marker_length: float = 0.03
    # ArUco dictionary (charuco only).
    dictionary: str = "DICT_5X5_100"

    def __post_init__(self) -> None:
        self.spec()  # validates

    def spec(self) -> BoardSpec:
        if BoardKind(self.kind) is BoardKind.charuco:
            return CharucoSpec(
                self.squares_x,
                self.squares_y,
                self.square_length,
                self.marker_length,
                self.dictionary,  # type: ignore[arg-type]
            )
        return ChessboardSpec(self.squares_x, self.squares_y, self.square_length)


@dataclass
class CameraCalibConfig:
    """Calibrate a camera's intrinsics from board images and store them under its id."""

    # the camera's id: the file name in the calibration store.
    camera_id: str = "camera"
    # folder of board images (png/jpg/bmp), all from this camera at one resolution.
    images: str = ""
    # self-test instead of images: render this many board views in MuJoCo and compare to the truth.
    render: int = 0
    # rendered image width in pixels (with --render).
    render_width: int = 640
    # rendered image height in pixels (with --render).
    render_height: int = 480
    # rendered vertical field of view in degrees (with --render).
    render_fovy: float = 45.0
    # seed of the rendered poses (with --render).
    seed: int = 0
    # distortion coefficients to estimate: full (k1 k2 p1 p2 k3), no_k3, none.
    distortion: Distortion = Distortion.full
    # the calibration target.
    board: BoardConfig = field(default_factory=BoardConfig)
    # calibration store folder (default $ROBO_CALIBRATION_DIR or ~/.cache/robo/calibration).
    store: str = ""

    def __post_init__(self) -> None:
        if bool(self.images) == bool(self.render):
            raise CalibrationError(
                "give either --images FOLDER (board photos) or --render N (a rendered self-test)"
            )
        if self.render < 0:
            raise CalibrationError(f"--render {self.render}: render at least 4 views")
        if self.images and not Path(self.images).is_dir():
            raise CalibrationError(f"--images {self.images}: no such folder")


@dataclass
class HandEyeConfig:
    """Hand-eye calibration from robot poses and board images; intrinsics come from the store."""

    # the camera's id (its intrinsics must be in the store: run `robo calibrate camera` first).
    camera_id: str = "camera"
    # JSON of stations: [{"image": "img_000.png", "gripper_to_base": 4x4}, ...].
    poses: str = ""
    # folder the station images are relative to (default: the poses JSON's folder).
    images: str = ""
    # eye_in_hand (camera on the gripper) or eye_to_hand (camera fixed, board on the gripper).
    mode: HandEyeModeChoice = HandEyeModeChoice.eye_in_hand
    # hand-eye method (OpenCV's); without cv2.calibrateHandEye only park is available.
    method: HandEyeMethodChoice = HandEyeMethodChoice.park
    # the calibration target.
    board: BoardConfig = field(default_factory=BoardConfig)
    # calibration store folder (default $ROBO_CALIBRATION_DIR or ~/.cache/robo/calibration).
    store: str = ""

    def __post_init__(self) -> None:
        if not self.poses:
            raise CalibrationError(
                "--poses is required: a JSON of stations (image + gripper_to_base)"
            )
        if not Path(self.poses).is_file():
            raise CalibrationError(f"--poses {self.poses}: no such file")


@dataclass
class RewardCalibConfig:
    """Choose a reward model's success threshold (progress >= 1 - delta) from labelled rollouts."""

    # JSON with the final progress and the true outcome of each rollout.
    data: str = ""
    # where to write the threshold JSON (default: success_threshold.json beside --data).
    out: str = ""

    def __post_init__(self) -> None:
        if not self.data:
            raise CalibrationError(
                "--data is required: a JSON of final progress values + success labels"
            )
        if not Path(self.data).is_file():
            raise CalibrationError(f"--data {self.data}: no such file")


def calibrate_camera(cfg: CameraCalibConfig) -> CameraCalibration:
    """`robo calibrate camera`: intrinsics from images (or a rendered self-test), saved per camera id."""
    board = cfg.board.spec()
    truth = None
    if cfg.render:
        from calibration.render import PinholeCamera, render_board_views

        camera = PinholeCamera(cfg.render_width, cfg.render_height, cfg.render_fovy)
        truth = render_board_views(board, cfg.render, camera, seed=cfg.seed)
        images = list(truth.images)
    else:
        images = _read_images(sorted(_image_files(Path(cfg.images))))
    calib = calibrate_intrinsics(
        images, board, cfg.camera_id, distortion=Distortion(cfg.distortion).value
    )
    path = CalibrationStore(cfg.store or None).save(calib)
    print(
        f"camera {calib.camera_id}: {calib.image_size[0]}x{calib.image_size[1]}, "
        f"fx {calib.fx:.2f} fy {calib.fy:.2f} cx {calib.cx:.2f} cy {calib.cy:.2f}, "
        f"rms {calib.rms:.3f} px over {calib.n_images}/{len(images)} images -> {path}"
    )
    if truth is not None:
        K = truth.K
        print(
            f"ground truth: fx {K[0, 0]:.2f} fy {K[1, 1]:.2f} cx {K[0, 2]:.2f} cy {K[1, 2]:.2f}; "
            f"focal error {100 * (calib.fx / K[0, 0] - 1):+.3f}% / {100 * (calib.fy / K[1, 1] - 1):+.3f}%"
        )
    return calib


def calibrate_handeye(cfg: HandEyeConfig) -> HandEyeResult:
    """`robo calibrate handeye`: camera-to-gripper (eye-in-hand) or camera-to-base (eye-to-hand)."""
    store = CalibrationStore(cfg.store or None)
    intrinsics = store.load(cfg.camera_id)
    board = cfg.board.spec()
    stations = _read_stations(Path(cfg.poses))
    root = Path(cfg.images) if cfg.images else Path(cfg.poses).parent
    gripper_to_base, target_to_camera = [], []
    for k, (image_name, pose) in enumerate(stations):
        image = _read_images([root / image_name])[0]
        try:
            target_to_camera.append(estimate_pose(image, board, intrinsics).target_to_camera)
        except CalibrationError as e:
            log.warning("station %d (%s) skipped: %s", k, image_name, e)
            continue
        gripper_to_base.append(pose)
    result = calibrate_hand_eye(
        gripper_to_base,
        target_to_camera,
        HandEyeModeChoice(cfg.mode).value,
        HandEyeMethodChoice(cfg.method).value,
    )
    path = store.save_handeye(cfg.camera_id, result)
    print(
        f"{result.frame} of {cfg.camera_id} from {result.n_poses}/{len(stations)} stations: "
        f"t = {np.round(result.t, 4).tolist()} m; spread {result.rot_spread_deg:.2f} deg, "
        f"{1000 * result.trans_spread_m:.1f} mm -> {path}"
    )
    return result


def calibrate_reward(cfg: RewardCalibConfig) -> SuccessThreshold:
    """`robo calibrate reward`: the success threshold delta from labelled final progress values."""
    progress, success = _read_labels(Path(cfg.data))
    result = calibrate_success_threshold(progress, success)
    out = Path(cfg.out) if cfg.out else Path(cfg.data).with_name("success_threshold.json")
    result.save(out)
    print(
        f"delta {result.delta:.4f} (success when progress >= {result.threshold:.4f}), "
        f"balanced accuracy {result.balanced_accuracy:.3f}, margin {result.margin:.4f}, "
        f"tp {result.tp} fp {result.fp} tn {result.tn} fn {result.fn} -> {out}"
    )
    return result


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise CalibrationError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
    return files


def _read_images(paths: list[Path]) -> list[np.ndarray]:
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise CalibrationError(f"cannot read image {path}: missing or not an image")
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return images


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{path} is not valid JSON: {e}") from None


def _read_stations(path: Path) -> list[tuple[str, np.ndarray]]:
    data = _load_json(path)
    rows = data.get("stations") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise CalibrationError(f'{path}: expected a list of stations or {{"stations": [...]}}')
    stations = []
    for k, row in enumerate(rows):
        try:
            pose = np.asarray(row["gripper_to_base"], dtype=np.float64)
            image = str(row["image"])
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(
                f"{path}: station {k} needs 'image' and a 4x4 'gripper_to_base' ({e})"
            ) from None
        if pose.shape != (4, 4):
            raise CalibrationError(f"{path}: station {k} gripper_to_base is {pose.shape}, not 4x4")
        stations.append((image, pose))
    return stations


def _read_labels(path: Path) -> tuple[list[float], list[bool]]:
    data = _load_json(path)
    try:
        if isinstance(data, dict):
            return list(data["progress"]), list(data["success"])
        return [row["progress"] for row in data], [row["success"] for row in data]
    except (KeyError, TypeError) as e:
        raise CalibrationError(
            f'{path}: expected {{"progress": [...], "success": [...]}} or a list of '
            f'{{"progress": p, "success": bool}} ({type(e).__name__}: {e})'
        ) from None
