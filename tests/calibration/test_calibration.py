"""Calibration against ground truth rendered in MuJoCo: intrinsics, PnP, hand-eye, stores, thresholds."""

import json

import cv2
import draccus
import numpy as np
import pytest

from calibration import (
    CalibrationError,
    CalibrationStore,
    CameraCalibration,
    CharucoSpec,
    ChessboardSpec,
    HandEyeResult,
    SuccessThreshold,
    calibrate_hand_eye,
    calibrate_intrinsics,
    calibrate_success_threshold,
    estimate_pose,
    invert_transform,
    make_transform,
    rotation_error_deg,
)
from calibration.cli import (
    CameraCalibConfig,
    HandEyeConfig,
    RewardCalibConfig,
    calibrate_camera,
    calibrate_handeye,
    calibrate_reward,
)
from calibration.render import MJ_TO_CV, PinholeCamera, render_board_views

CHARUCO = CharucoSpec()  # 7x5 squares, DICT_5X5_100
CAMERA = PinholeCamera(640, 480, fovy_deg=45.0)


@pytest.fixture(scope="module")
def charuco_views():
    return render_board_views(CHARUCO, 12, CAMERA, seed=0)


@pytest.fixture(scope="module")
def charuco_calib(charuco_views):
    return calibrate_intrinsics(charuco_views.images, CHARUCO, camera_id="front")


def _pnp(views, calib) -> np.ndarray:
    return np.stack([estimate_pose(im, CHARUCO, calib).target_to_camera for im in views.images])


@pytest.fixture(scope="module")
def estimated_poses(charuco_views, charuco_calib):
    return _pnp(charuco_views, charuco_calib)


def _check_intrinsics(calib: CameraCalibration, K: np.ndarray, label: str) -> None:
    fx_err = 100 * abs(calib.fx / K[0, 0] - 1)
    fy_err = 100 * abs(calib.fy / K[1, 1] - 1)
    c_err = np.hypot(calib.cx - K[0, 2], calib.cy - K[1, 2])
    print(
        f"{label}: fx {fx_err:.3f}% fy {fy_err:.3f}% principal point {c_err:.2f} px rms {calib.rms:.3f} px"
    )
    assert fx_err < 1.0 and fy_err < 1.0
    assert c_err < 3.0
    assert calib.rms < 1.0


# --- rendering conventions -------------------------------------------------------------


def test_camera_matrix_from_fovy():
    K = PinholeCamera(320, 240, fovy_deg=60.0).K
    f = 120 / np.tan(np.radians(30))
    np.testing.assert_allclose(K, [[f, 0, 159.5], [0, f, 119.5], [0, 0, 1]])
    # MuJoCo's camera looks along -z with y up; OpenCV's along +z with y down.
    np.testing.assert_allclose(MJ_TO_CV @ [0, 0, -1], [0, 0, 1])
    np.testing.assert_allclose(MJ_TO_CV @ [0, 1, 0], [0, -1, 0])


def test_rendered_truth_projects_onto_detected_corners(charuco_views):
    """The ground-truth K and poses put every board corner within a fraction of a pixel."""
    residuals = []
    for image, pose in zip(charuco_views.images, charuco_views.target_to_camera, strict=True):
        det = CHARUCO.detect(image)
        assert det is not None and len(det) == CHARUCO.n_corners
        rvec = cv2.Rodrigues(pose[:3, :3])[0]
        proj = cv2.projectPoints(
            det.object_points.astype(np.float64), rvec, pose[:3, 3], charuco_views.K, None
        )[0]
        residuals.append(det.image_points - proj.reshape(-1, 2))
    residuals = np.concatenate(residuals)
    rms = np.sqrt(np.mean(np.sum(residuals**2, axis=1)))
    print(f"ground truth vs detection: rms {rms:.3f} px, bias {residuals.mean(0).round(3)}")
    assert rms < 0.3
    assert np.all(np.abs(residuals.mean(0)) < 0.1)  # no half-pixel or flip error


# --- intrinsics and extrinsics ---------------------------------------------------------


def test_charuco_intrinsics(charuco_views, charuco_calib):
    assert charuco_calib.n_images == 12 and charuco_calib.image_size == (640, 480)
    assert len(charuco_calib.per_view_rms) == 12
    _check_intrinsics(charuco_calib, charuco_views.K, "charuco")


def test_chessboard_intrinsics():
    board = ChessboardSpec(8, 7, 0.03)
    views = render_board_views(board, 10, CAMERA, seed=1)
    calib = calibrate_intrinsics(views.images, board, distortion="no_k3")
    assert calib.n_images == 10 and calib.dist[4] == 0.0
    _check_intrinsics(calib, views.K, "chessboard")


def test_pnp_extrinsics(charuco_views, estimated_poses):
    rot = [
        rotation_error_deg(est[:3, :3], true[:3, :3])
        for est, true in zip(estimated_poses, charuco_views.target_to_camera, strict=True)
    ]
    trans = np.linalg.norm(estimated_poses[:, :3, 3] - charuco_views.t, axis=1)
    print(f"PnP: max {max(rot):.3f} deg, max {1000 * trans.max():.2f} mm")
    assert max(rot) < 1.0
    assert trans.max() < 0.01


def test_too_few_detections_is_one_clear_line(charuco_views, charuco_calib):
    blank = np.full_like(charuco_views.images[0], 128)
    images = [*charuco_views.images[:3], blank, blank]
    with pytest.raises(CalibrationError) as e:
        calibrate_intrinsics(images, CHARUCO)
    msg = str(e.value)
    assert "3 of 5 images" in msg and "need >= 4" in msg and "capture more images" in msg
    assert "\n" not in msg
    with pytest.raises(CalibrationError, match="found 0 charuco corners"):
        estimate_pose(blank, CHARUCO, charuco_calib)
    # the per-image corner threshold: 24 corners are found, 25 are required
    with pytest.raises(CalibrationError, match="found 24 charuco corners.*need >= 25"):
        estimate_pose(charuco_views.images[0], CHARUCO, charuco_calib, min_corners=25)
    with pytest.raises(CalibrationError, match="usable charuco board in 0 of 4 images"):
        calibrate_intrinsics(charuco_views.images[:4], CHARUCO, min_corners=25)
    with pytest.raises(CalibrationError, match="640x480"):
        calibrate_intrinsics([charuco_views.images[0], blank[:100]], CHARUCO)


# --- hand-eye ----------------------------------------------------------------------------

CAM_TO_GRIPPER = make_transform(np.array([0.2, -0.3, 0.4]), [0.03, -0.05, 0.08])
TARGET_TO_BASE = make_transform(np.array([0.0, 0.1, 1.2]), [0.55, 0.1, 0.0])
CAM_TO_BASE = make_transform(np.array([2.4, 0.3, -0.5]), [0.6, -0.4, 0.7])
TARGET_TO_GRIPPER = make_transform(np.array([0.0, 0.3, 0.1]), [0.0, 0.02, 0.1])


@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_hand_eye_recovers_ground_truth(mode, charuco_views, estimated_poses, charuco_calib):
    """Robot poses composed from known transforms and rendered board poses; board by PnP."""
    if mode == "eye_in_hand":
        views, target_to_camera = charuco_views, estimated_poses
        # board fixed in the base: gripper_to_base = target_to_base @ camera_to_target @ gripper_to_camera
        truth = views.target_to_camera
        gripper_to_base = (
            TARGET_TO_BASE @ invert_transform(truth) @ invert_transform(CAM_TO_GRIPPER)
        )
        expected = CAM_TO_GRIPPER
    else:
        views = render_board_views(CHARUCO, 10, CAMERA, seed=7)  # other stations
        target_to_camera = _pnp(views, charuco_calib)
        # camera fixed, board on the gripper: gripper_to_base = cam_to_base @ target_to_cam @ gripper_to_target
        gripper_to_base = CAM_TO_BASE @ views.target_to_camera @ invert_transform(TARGET_TO_GRIPPER)
        expected = CAM_TO_BASE
    result = calibrate_hand_eye(list(gripper_to_base), list(target_to_camera), mode=mode)
    rot = rotation_error_deg(result.R, expected[:3, :3])
    trans = np.linalg.norm(result.t - expected[:3, 3])
    print(f"hand-eye {mode} ({result.backend}): {rot:.3f} deg, {1000 * trans:.2f} mm")
    assert rot < 1.0
    assert trans < 0.005
    assert result.n_poses == len(views) and result.frame.startswith("camera_to_")
    assert result.rot_spread_deg < 1.0 and result.trans_spread_m < 0.01
    assert HandEyeResult.from_json(result.to_json()).matrix == pytest.approx(result.matrix)
    # the un-inverted robot poses (the classic eye-to-hand mistake) give a wrong answer
    wrong_mode = "eye_to_hand" if mode == "eye_in_hand" else "eye_in_hand"
    wrong = calibrate_hand_eye(list(gripper_to_base), list(target_to_camera), mode=wrong_mode)
    assert rotation_error_deg(wrong.R, expected[:3, :3]) > 5 or wrong.rot_spread_deg > 5


def test_hand_eye_rejects_degenerate_input(charuco_views):
    poses = list(charuco_views.target_to_camera)
    with pytest.raises(CalibrationError, match="needs >= 3 stations, got 2"):
        calibrate_hand_eye(poses[:2], poses[:2])
    with pytest.raises(CalibrationError, match="12 robot poses but 11 board poses"):
        calibrate_hand_eye(poses, poses[:11])
    # rotations about one axis only: the translation along it is unobservable
    about_z = [make_transform(np.array([0, 0, a]), [0.1 * a, 0, 0]) for a in (0.1, 0.5, 0.9, 1.3)]
    with pytest.raises(CalibrationError, match="two distinct axes"):
        calibrate_hand_eye(about_z, about_z)


# --- store -----------------------------------------------------------------------------


def test_json_round_trip_per_camera_id(tmp_path, charuco_calib):
    store = CalibrationStore(tmp_path / "calib")
    assert store.camera_ids() == []
    store.save(charuco_calib)
    side = CameraCalibration.from_json(charuco_calib.to_json())
    side.camera_id, side.K = "side", side.K * 2
    path = store.save(side)
    assert (
        path == tmp_path / "calib" / "side.json"
        and json.loads(path.read_text())["camera_id"] == "side"
    )
    assert store.camera_ids() == ["front", "side"] and "front" in store
    loaded = store.load("front")
    np.testing.assert_array_equal(loaded.K, charuco_calib.K)
    np.testing.assert_array_equal(loaded.dist, charuco_calib.dist)
    assert loaded.image_size == charuco_calib.image_size and loaded.rms == charuco_calib.rms
    assert loaded.board == CHARUCO.describe()
    np.testing.assert_array_equal(store.load("side").K, charuco_calib.K * 2)
    with pytest.raises(
        CalibrationError, match="no calibration for camera 'top'.*robo calibrate camera"
    ):
        store.load("top")
    with pytest.raises(CalibrationError, match="camera id '../x'"):
        store.save(CameraCalibration("../x", (1, 1), np.eye(3), np.zeros(5), 0.0, 4))
    with pytest.raises(CalibrationError, match="not valid JSON"):
        CameraCalibration.from_json("{")


# --- reward threshold ------------------------------------------------------------------


def test_reward_threshold_separable_data(tmp_path):
    rng = np.random.default_rng(0)
    success = rng.uniform(0.9, 1.0, 8)
    failure = rng.uniform(0.2, 0.8, 6)
    progress = np.concatenate([success, failure])
    labels = np.r_[np.ones(8, bool), np.zeros(6, bool)]
    result = calibrate_success_threshold(progress, labels)
    gap = (failure.max(), success.min())
    assert result.threshold == pytest.approx(np.mean(gap))  # the middle of the widest clean gap
    assert result.margin == pytest.approx((gap[1] - gap[0]) / 2)
    assert result.balanced_accuracy == 1.0 and (result.tp, result.fp, result.tn, result.fn) == (
        8,
        0,
        6,
        0,
    )
    assert result.is_success(progress).tolist() == labels.tolist()
    loaded = SuccessThreshold.load(result.save(tmp_path / "t.json"))
    assert loaded == result


def test_reward_threshold_prefers_balanced_accuracy():
    # 10 successes (two end low) and 2 failures (one ends at 0.6). Plain accuracy prefers a
    # threshold near 0.4 (11/12 right, but half the failures called successes); balanced
    # accuracy prefers one between 0.6 and 0.95 (every failure caught, 8/10 successes).
    progress = [0.95] * 8 + [0.55, 0.5, 0.6, 0.3]
    labels = [True] * 10 + [False, False]
    result = calibrate_success_threshold(progress, labels)
    assert result.threshold == pytest.approx((0.6 + 0.95) / 2)
    assert result.balanced_accuracy == pytest.approx(0.9)
    assert result.accuracy == pytest.approx(10 / 12)
    assert (result.tp, result.fp, result.tn, result.fn) == (8, 0, 2, 2)
    # brute force over thresholds: nothing beats the reported balanced accuracy
    p, y = np.asarray(progress), np.asarray(labels)
    grid = np.linspace(0, 1, 2001)[:, None]
    balanced = (((p >= grid) & y).sum(1) / y.sum() + ((p < grid) & ~y).sum(1) / (~y).sum()) / 2
    assert balanced.max() == pytest.approx(result.balanced_accuracy)


def test_reward_threshold_needs_both_outcomes():
    with pytest.raises(CalibrationError, match="got 3 successful and 0 failed"):
        calibrate_success_threshold([0.9, 0.95, 1.0], [True, True, True])
    with pytest.raises(CalibrationError, match="3 progress values but 2 labels"):
        calibrate_success_threshold([0.9, 0.95, 1.0], [True, False])


# --- CLI entry points (configs parsed by draccus, as `robo calibrate ...` will) ---------


def test_cli_entry_points(tmp_path, charuco_views, charuco_calib, capsys):
    store = str(tmp_path / "store")
    cfg = draccus.parse(
        CameraCalibConfig,
        args=[
            "--render",
            "5",
            "--camera_id",
            "selftest",
            "--store",
            store,
            "--distortion",
            "no_k3",
        ],
    )
    calib = calibrate_camera(cfg)
    assert calib.n_images == 5 and abs(calib.fy / CAMERA.K[1, 1] - 1) < 0.01
    assert "focal error" in capsys.readouterr().out
    assert CalibrationStore(store).camera_ids() == ["selftest"]

    # hand-eye from files: images + a poses JSON, intrinsics from the store
    CalibrationStore(store).save(charuco_calib)
    stations = []
    gripper_to_base = (
        TARGET_TO_BASE
        @ invert_transform(charuco_views.target_to_camera)
        @ invert_transform(CAM_TO_GRIPPER)
    )
    for k, (image, pose) in enumerate(zip(charuco_views.images[:8], gripper_to_base, strict=False)):
        cv2.imwrite(str(tmp_path / f"img_{k}.png"), image[:, :, ::-1])
        stations.append({"image": f"img_{k}.png", "gripper_to_base": pose.tolist()})
    (tmp_path / "poses.json").write_text(json.dumps({"stations": stations}))
    cfg = draccus.parse(
        HandEyeConfig,
        args=["--camera_id", "front", "--poses", str(tmp_path / "poses.json"), "--store", store],
    )
    result = calibrate_handeye(cfg)
    assert result.n_poses == 8 and rotation_error_deg(result.R, CAM_TO_GRIPPER[:3, :3]) < 1.0
    assert CalibrationStore(store).load_handeye("front").matrix == pytest.approx(result.matrix)

    data = tmp_path / "labels.json"
    data.write_text(
        json.dumps([{"progress": p, "success": p > 0.8} for p in (0.2, 0.7, 0.9, 0.95)])
    )
    threshold = calibrate_reward(draccus.parse(RewardCalibConfig, args=["--data", str(data)]))
    assert threshold.threshold == pytest.approx(0.8)
    assert SuccessThreshold.load(tmp_path / "success_threshold.json") == threshold

    with pytest.raises(CalibrationError, match="either --images FOLDER"):
        CameraCalibConfig()


def test_solver_output_is_projected_to_a_proper_rotation():
    """OpenCV can return a reflection or a non-orthonormal matrix on inconsistent poses; the
    result must still be a rotation (det +1), and a slightly noisy one stays where it was."""
    from scipy.spatial.transform import Rotation

    from calibration.handeye import _nearest_rotation

    R = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    noisy = R + 1e-3 * np.random.default_rng(0).standard_normal((3, 3))
    np.testing.assert_allclose(_nearest_rotation(noisy), R, atol=5e-3)
    for M in (R @ np.diag([1.0, 1.0, -1.0]), noisy * -1.0):
        P = _nearest_rotation(M)
        assert np.linalg.det(P) == pytest.approx(1.0)
        np.testing.assert_allclose(P @ P.T, np.eye(3), atol=1e-9)
