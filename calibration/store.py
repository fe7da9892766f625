"""Calibrations on disk: one JSON file per camera id, as LeRobot stores one per device id.

Layout under the root folder (default ``~/.cache/robo/calibration``, or
``$ROBO_CALIBRATION_DIR``)::

    <camera_id>.json            intrinsics (CameraCalibration)
    <camera_id>.handeye.json    hand-eye transform (HandEyeResult)

Writes go to a temporary file first and are renamed into place, so a crash never
leaves half a calibration behind.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from calibration.boards import CalibrationError
from calibration.handeye import HandEyeResult
from calibration.intrinsics import CameraCalibration

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HANDEYE = ".handeye.json"


def default_root() -> Path:
    """``$ROBO_CALIBRATION_DIR`` if set, else ``~/.cache/robo/calibration``."""
    return Path(os.environ.get("ROBO_CALIBRATION_DIR", "~/.cache/robo/calibration")).expanduser()


class CalibrationStore:
    """A folder of per-camera calibration JSON files."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_root()

    def path(self, camera_id: str) -> Path:
        """Where the intrinsics of ``camera_id`` live."""
        return self.root / f"{_check_id(camera_id)}.json"

    def handeye_path(self, camera_id: str) -> Path:
        return self.root / f"{_check_id(camera_id)}{_HANDEYE}"

    def save(self, calibration: CameraCalibration) -> Path:
        """Write (or replace) the intrinsics of ``calibration.camera_id``."""
        return _write(self.path(calibration.camera_id), calibration.to_json())

    def load(self, camera_id: str) -> CameraCalibration:
        path = self.path(camera_id)
        if not path.is_file():
            raise CalibrationError(
                f"no calibration for camera {camera_id!r} in {self.root}: run "
                f"`robo calibrate camera --camera_id {camera_id}` first"
            )
        calibration = CameraCalibration.from_json(path.read_text())
        if calibration.camera_id != camera_id:
            raise CalibrationError(
                f"{path} holds camera {calibration.camera_id!r}, not {camera_id!r}: rename or recalibrate"
            )
        return calibration

    def save_handeye(self, camera_id: str, result: HandEyeResult) -> Path:
        return _write(self.handeye_path(camera_id), result.to_json())

    def load_handeye(self, camera_id: str) -> HandEyeResult:
        path = self.handeye_path(camera_id)
        if not path.is_file():
            raise CalibrationError(
                f"no hand-eye calibration for camera {camera_id!r} in {self.root}: run "
                f"`robo calibrate handeye --camera_id {camera_id}` first"
            )
        return HandEyeResult.from_json(path.read_text())

    def __contains__(self, camera_id: str) -> bool:
        return self.path(camera_id).is_file()

    def camera_ids(self) -> list[str]:
        """Cameras with stored intrinsics, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name[: -len(".json")]
            for p in self.root.glob("*.json")
            if not p.name.endswith(_HANDEYE)
        )


def _check_id(camera_id: str) -> str:
    if not isinstance(camera_id, str) or not _ID.match(camera_id) or camera_id.endswith(".handeye"):
        raise CalibrationError(
            f"camera id {camera_id!r}: use letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (it names a file)"
        )
    return camera_id


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
