"""Ground truth for calibration: a board rendered by MuJoCo from known poses with known intrinsics.

The scene (an MJCF string, built here; nothing of ``sim`` is used) holds one textured
plane carrying the board image and one camera. Each view moves the camera; the board
stays at the world origin. Lighting is a pure-ambient headlight, so pixels are the
texture itself; shadows and multisampling are off.

Intrinsics. MuJoCo's camera is an ideal pinhole with square pixels and its optical
axis through the image centre. With vertical field of view ``fovy`` and an image of
``W x H`` pixels::

    fy = fx = (H / 2) / tan(fovy / 2)
    cx = (W - 1) / 2,  cy = (H - 1) / 2

The ``- 1`` is OpenCV's pixel convention: the centre of pixel (0, 0) is the
coordinate (0, 0), while the GL frustum spans the pixel edges [0, W] x [0, H].

Camera frames. MuJoCo's camera looks along its -z axis with +y up (x right);
OpenCV's looks along +z with +y down (x right). The two differ by a rotation of
180 degrees about x: ``p_opencv = F @ p_mujoco`` with ``F = diag(1, -1, -1)``, so a
camera's orientation in the world is ``R_mujoco = R_opencv @ F`` (and back, as
``F = F^-1``). ``mujoco.Renderer`` already returns images top row first.

Texture. A 2-D texture on a plane geom (``texrepeat="1 1"``, ``texuniform="false"``)
spans the whole plane once, with the image's top row at the geom's +y edge and its
left column at -x, seen from +z. The board frame (see :mod:`calibration.boards`:
x right, y down the printed image, z into the board) is therefore the geom frame
rotated 180 degrees about x, shifted to the pattern's top-left corner.
"""

from __future__ import annotations

import ctypes.util
import os
from dataclasses import dataclass


def _configure_gl_backend() -> None:
    """Headless GL before mujoco is imported: EGL, else OSMesa; an explicit MUJOCO_GL wins.

    (``sim.base.configure_gl_backend`` does the same; calibration may not import sim.)
    """
    if "MUJOCO_GL" not in os.environ:
        backend = "egl" if ctypes.util.find_library("EGL") else "osmesa"
        os.environ["MUJOCO_GL"] = backend
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)


_configure_gl_backend()

import cv2  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from calibration.boards import BoardSpec, CalibrationError  # noqa: E402
from calibration.handeye import invert_transform, make_transform  # noqa: E402

# p_opencv = F @ p_mujoco for camera frames; F is its own inverse.
MJ_TO_CV = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class PinholeCamera:
    """A MuJoCo camera's intrinsics: image size and vertical field of view."""

    width: int = 640
    height: int = 480
    fovy_deg: float = 45.0

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16:
            raise CalibrationError(f"render size {self.width}x{self.height}: use at least 16x16")
        if not 1.0 < self.fovy_deg < 170.0:
            raise CalibrationError(f"fovy {self.fovy_deg} deg: use a value in (1, 170)")

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height), as OpenCV wants it."""
        return self.width, self.height

    @property
    def K(self) -> np.ndarray:
        """3x3 camera matrix in OpenCV's pixel convention (see the module docstring)."""
        f = (self.height / 2.0) / np.tan(np.radians(self.fovy_deg) / 2.0)
        return np.array(
            [[f, 0.0, (self.width - 1) / 2.0], [0.0, f, (self.height - 1) / 2.0], [0.0, 0.0, 1.0]]
        )


@dataclass
class RenderedViews:
    """N rendered views of a board with their ground truth (OpenCV conventions)."""

    # (N, H, W, 3) uint8 RGB.
    images: np.ndarray
    # (3, 3) true camera matrix.
    K: np.ndarray
    # (width, height).
    image_size: tuple[int, int]
    # (N, 4, 4) true board poses: target (board) frame to OpenCV camera frame.
    target_to_camera: np.ndarray
    board: BoardSpec

    @property
    def R(self) -> np.ndarray:
        """(N, 3, 3) board-to-camera rotations."""
        return self.target_to_camera[:, :3, :3]

    @property
    def t(self) -> np.ndarray:
        """(N, 3) board origin in the camera frame, metres."""
        return self.target_to_camera[:, :3, 3]

    def __len__(self) -> int:
        return len(self.images)


class BoardScene:
    """A MuJoCo scene with ``board`` at the world origin and one movable camera.

    Use as a context manager (or call :meth:`close`) to free the GL context.
    """

    def __init__(
        self,
        board: BoardSpec,
        camera: PinholeCamera | None = None,
        px_per_square: int = 120,
        margin_squares: float = 0.5,
    ):
        self.board = board
        self.camera = camera or PinholeCamera()
        margin_px = int(round(margin_squares * px_per_square))
        texture = cv2.cvtColor(board.image(px_per_square, margin_px), cv2.COLOR_GRAY2RGB)
        png = cv2.imencode(".png", texture)[1].tobytes()
        width, height = board.size_m
        margin = margin_px / px_per_square * board.square_length
        half = (width / 2 + margin, height / 2 + margin)
        self.model = mujoco.MjModel.from_xml_string(self._mjcf(half), {"board.png": png})
        self.data = mujoco.MjData(self.model)
        mujoco.mj_forward(self.model, self.data)
        self._geom = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "board")
        self._cam = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, "cam")
        # board frame inside the plane geom's frame: 180 deg about x, origin at the top-left corner.
        self._board_in_geom = make_transform(MJ_TO_CV, [-width / 2, height / 2, 0.0])
        self._renderer = mujoco.Renderer(
            self.model, height=self.camera.height, width=self.camera.width
        )

    def _mjcf(self, half: tuple[float, float]) -> str:
        cam = self.camera
        return f"""
<mujoco model="calibration_board">
  <statistic extent="1" center="0 0 0"/>
  <visual>
    <global offwidth="{cam.width}" offheight="{cam.height}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="1 1 1" diffuse="0 0 0" specular="0 0 0"/>
    <map znear="0.01" zfar="20"/>
  </visual>
  <asset>
    <texture name="board" type="2d" file="board.png"/>
    <material name="board" texture="board" texrepeat="1 1" texuniform="false"
              specular="0" shininess="0" reflectance="0"/>
  </asset>
  <worldbody>
    <geom name="board" type="plane" size="{half[0]} {half[1]} 0.01" material="board"
          contype="0" conaffinity="0"/>
    <camera name="cam" pos="0 0 1" fovy="{cam.fovy_deg}"/>
  </worldbody>
</mujoco>"""

    @property
    def board_to_world(self) -> np.ndarray:
        """4x4 pose of the board frame in MuJoCo's world, read from the simulator."""
        geom = make_transform(
            self.data.geom_xmat[self._geom].reshape(3, 3), self.data.geom_xpos[self._geom]
        )
        return geom @ self._board_in_geom

    @property
    def camera_to_world(self) -> np.ndarray:
        """4x4 pose of the OpenCV camera frame in the world, read from the simulator."""
        R_mj = self.data.cam_xmat[self._cam].reshape(3, 3)
        return make_transform(R_mj @ MJ_TO_CV, self.data.cam_xpos[self._cam])

    def render(self, target_to_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Place the camera so the board sits at ``target_to_camera`` (OpenCV) and render.

        Returns:
            The (H, W, 3) uint8 RGB image and the board pose actually rendered, recomputed
            from MuJoCo's camera and geom frames (equal to the request up to float error).
        """
        cam_to_world = self.board_to_world @ invert_transform(target_to_camera)
        R_mj = cam_to_world[:3, :3] @ MJ_TO_CV
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, R_mj.reshape(-1))
        self.model.cam_pos[self._cam] = cam_to_world[:3, 3]
        self.model.cam_quat[self._cam] = quat
        mujoco.mj_forward(self.model, self.data)
        self._renderer.update_scene(self.data, camera=self._cam)
        image = self._renderer.render().copy()
        return image, invert_transform(self.camera_to_world) @ self.board_to_world

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> BoardScene:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sample_target_poses(
    n: int,
    board: BoardSpec,
    camera: PinholeCamera | None = None,
    rng: np.random.Generator | int | None = 0,
    distance: tuple[float, float] = (0.3, 0.55),
    tilt_deg: tuple[float, float] = (10.0, 45.0),
    max_roll_deg: float = 30.0,
    border_px: float = 15.0,
) -> np.ndarray:
    """Random board poses (target to OpenCV camera) with the whole board inside the image.

    The camera sits at ``distance`` from the board centre, its line of sight tilted by
    ``tilt_deg`` from the board normal in a random direction, aimed near the centre and
    rolled by up to ``max_roll_deg``.

    Returns:
        (n, 4, 4) ``target_to_camera`` transforms.
    """
    camera = camera or PinholeCamera()
    rng = np.random.default_rng(rng)
    K = camera.K
    w, h = board.size_m
    centre = np.array([w / 2, h / 2, 0.0])
    outline = np.array([[0, 0, 0], [w, 0, 0], [w, h, 0], [0, h, 0]], float)
    poses = []
    for _ in range(1000 * n):
        if len(poses) == n:
            break
        tilt = np.radians(rng.uniform(*tilt_deg))
        azimuth = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(*distance)
        # the printed face looks along the board's -z: the camera sits on that side.
        direction = np.array(
            [np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), -np.cos(tilt)]
        )
        position = centre + d * direction
        aim = centre + np.append(rng.uniform(-0.2, 0.2, 2) * (w, h), 0.0)
        z = (aim - position) / np.linalg.norm(aim - position)
        x = np.cross([0.0, 1.0, 0.0], z)  # image "down" follows the board's +y
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        roll = np.radians(rng.uniform(-max_roll_deg, max_roll_deg))
        c, s = np.cos(roll), np.sin(roll)
        R = np.stack([x, y, z], axis=1) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        target_to_camera = invert_transform(make_transform(R, position))
        cam_pts = outline @ target_to_camera[:3, :3].T + target_to_camera[:3, 3]
        if np.any(cam_pts[:, 2] < 0.05):
            continue
        px = cam_pts @ K.T
        px = px[:, :2] / px[:, 2:]
        inside = (px >= border_px) & (px <= np.array(camera.image_size) - 1 - border_px)
        if inside.all():
            poses.append(target_to_camera)
    if len(poses) < n:
        raise CalibrationError(
            f"could place the board in view for only {len(poses)} of {n} poses: "
            "widen the field of view or increase the distance"
        )
    return np.asarray(poses)


def render_board_views(
    board: BoardSpec,
    n: int | None = None,
    camera: PinholeCamera | None = None,
    seed: int = 0,
    target_to_camera: np.ndarray | None = None,
    **pose_kwargs,
) -> RenderedViews:
    """Render ``n`` views of ``board`` at random poses (or at the given ``target_to_camera``).

    Args:
        board: the board to render.
        n: number of random views (ignored when ``target_to_camera`` is given).
        camera: intrinsics; default 640x480, fovy 45 deg.
        seed: seed of the random poses.
        target_to_camera: (N, 4, 4) board poses to render instead of random ones.
        **pose_kwargs: forwarded to :func:`sample_target_poses`.
    """
    camera = camera or PinholeCamera()
    if target_to_camera is None:
        if not n or n < 1:
            raise CalibrationError("render at least 1 view (n >= 1) or give target_to_camera")
        target_to_camera = sample_target_poses(n, board, camera, seed, **pose_kwargs)
    images, truth = [], []
    with BoardScene(board, camera) as scene:
        for pose in np.asarray(target_to_camera, dtype=np.float64):
            image, actual = scene.render(pose)
            images.append(image)
            truth.append(actual)
    return RenderedViews(np.stack(images), camera.K, camera.image_size, np.stack(truth), board)
