"""A camera read through OpenCV's ``VideoCapture`` (``type: opencv``).

A device index (``0``), a device path (``/dev/video2``) or a video file path
(files are read like a device, paced to ``fps``; handy for tests and replays).
A background thread keeps the newest frame with its capture time for
``async_read`` / ``read_latest``; ``read`` waits for a frame captured after the
call. Frames are RGB ``uint8 (H, W, 3)``; when the device ignores the requested
size they are resized (a warning says so once).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardware.camera import BufferedCamera, CameraConfig, NoFrameError
from hardware.robot import DeviceConnectionError, HardwareConfigError
from hardware.safety import Choice

logger = logging.getLogger(__name__)


class Backend(Choice):
    """OpenCV capture backends (``any`` lets OpenCV choose)."""

    ANY = "any"
    V4L2 = "v4l2"
    FFMPEG = "ffmpeg"
    GSTREAMER = "gstreamer"
    AVFOUNDATION = "avfoundation"
    DSHOW = "dshow"
    MSMF = "msmf"


class ColorOrder(Choice):
    RGB = "rgb"
    BGR = "bgr"


_CAP = {
    "any": "CAP_ANY",
    "v4l2": "CAP_V4L2",
    "ffmpeg": "CAP_FFMPEG",
    "gstreamer": "CAP_GSTREAMER",
    "avfoundation": "CAP_AVFOUNDATION",
    "dshow": "CAP_DSHOW",
    "msmf": "CAP_MSMF",
}


@dataclass(kw_only=True)
class OpenCVCameraConfig(CameraConfig):
    """An OpenCV capture device or video file.

    Args:
        index_or_path: device index, device path or video file.
        backend: capture backend.
        color: channel order of the returned frames.
        fourcc: pixel format to request from a device (e.g. ``MJPG``), ``None`` to keep its default.
        loop: restart a video file at its end (a device never ends).
        warmup_s: at ``connect()``, wait up to this long for the first frame.
    """

    index_or_path: int | str
    backend: Backend = Backend.ANY
    color: ColorOrder = ColorOrder.RGB
    fourcc: str | None = None
    loop: bool = False
    warmup_s: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        self.backend = Backend.parse(self.backend, "backend")
        self.color = ColorOrder.parse(self.color, "color")
        if isinstance(self.index_or_path, int) and self.index_or_path < 0:
            raise HardwareConfigError(f"index_or_path={self.index_or_path}: a device index is >= 0")
        if self.fourcc is not None and len(self.fourcc) != 4:
            raise HardwareConfigError(f"fourcc={self.fourcc!r}: use four characters such as 'MJPG'")
        if not self.warmup_s > 0:
            raise HardwareConfigError(
                f"warmup_s={self.warmup_s!r}: use a positive number of seconds"
            )
        if (self.width is None) != (self.height is None):
            raise HardwareConfigError("set both width and height, or neither")


class OpenCVCamera(BufferedCamera):
    """See the module docstring."""

    config_class = OpenCVCameraConfig
    name = "opencv"

    def __init__(self, config: OpenCVCameraConfig):
        super().__init__(config)
        self.capture = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._is_file = (
            isinstance(config.index_or_path, str) and Path(config.index_or_path).is_file()
        )
        self.error: str | None = None  # why the capture thread stopped, if it did

    def __str__(self) -> str:
        return f"opencv camera {self.config.index_or_path}"

    @property
    def is_connected(self) -> bool:
        return self.capture is not None

    @staticmethod
    def find_cameras() -> list[dict]:
        """Video devices that open (Linux: ``/dev/video*``)."""
        import cv2

        found = []
        for path in sorted(Path("/dev").glob("video*")):
            cap = cv2.VideoCapture(str(path))
            if cap.isOpened():
                found.append(
                    {
                        "type": "opencv",
                        "id": str(path),
                        "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                        "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                        "fps": cap.get(cv2.CAP_PROP_FPS),
                    }
                )
            cap.release()
        return found

    def _connect(self, warmup: bool) -> None:
        import cv2

        cfg = self.config
        src = cfg.index_or_path
        self._is_file = isinstance(src, str) and Path(src).is_file()
        cap = cv2.VideoCapture(src, getattr(cv2, _CAP[cfg.backend]))
        if not cap.isOpened():
            cap.release()
            raise DeviceConnectionError(self._not_found(src))
        if not self._is_file:
            self._configure(cap)
        self.fps = cfg.fps or (cap.get(cv2.CAP_PROP_FPS) or None)
        self.capture = cap
        self._stop.clear()
        self.buffer.clear()
        self.error = None
        self._warned_resize = False
        self._thread = threading.Thread(target=self._loop, name=f"{self}-reader", daemon=True)
        self._thread.start()
        if warmup:
            try:
                self.buffer.wait_newer(0, cfg.warmup_s * 1000)
            except TimeoutError:
                self._disconnect()
                raise DeviceConnectionError(
                    f"{self} opened but sent no frame within {cfg.warmup_s} s: "
                    f"check that no other program uses it and try another fourcc/size"
                ) from None
        logger.info("%s connected (%s fps)", self, self.fps)

    def _not_found(self, src) -> str:
        if isinstance(src, int) or str(src).startswith("/dev/"):
            return (
                f"camera {src} not found: check the index with `v4l2-ctl --list-devices` "
                f"(or `ls /dev/video*`), that you may read it (video group) and that no other program holds it"
            )
        if not Path(src).exists():
            return f"camera or video file {src} not found: check the path"
        return f"camera {src} could not be opened by OpenCV (backend {self.config.backend}): check the format or backend"

    def _configure(self, cap) -> None:
        import cv2

        cfg = self.config
        if cfg.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
        if cfg.width is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        if cfg.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)

    def _disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None
        if self.capture is not None:
            self.capture.release()
        self.capture = None

    def _loop(self) -> None:
        import cv2

        period = 1.0 / self.fps if (self._is_file and self.fps) else 0.0
        next_t = time.monotonic()
        failures = 0
        while not self._stop.is_set():
            ok, frame = self.capture.read()
            if not ok:
                if self._is_file and self.config.loop:
                    self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                failures += 1
                if self._is_file or failures > 50:
                    self.error = (
                        "end of video file" if self._is_file else "device stopped sending frames"
                    )
                    logger.warning("%s: %s; no more frames", self, self.error)
                    return
                time.sleep(0.01)
                continue
            failures = 0
            self.buffer.put(self._convert(frame))
            if period:  # a file has no clock of its own: pace it like a device
                next_t += period
                self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _read(self) -> np.ndarray:
        return self._explain(super()._read)

    def _async_read(self, timeout_ms: float) -> np.ndarray:
        return self._explain(super()._async_read, timeout_ms)

    def _explain(self, fn, *args) -> np.ndarray:
        try:
            return fn(*args)
        except NoFrameError:
            if self.error is None:
                raise
            raise NoFrameError(
                f"{self}: {self.error}, no new frame (read_latest() returns the last one)"
            ) from None

    def _convert(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        cfg = self.config
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if cfg.width is not None and frame.shape[:2] != (cfg.height, cfg.width):
            if not self._warned_resize:
                logger.warning(
                    "%s delivers %dx%d, resizing to the configured %dx%d",
                    self,
                    frame.shape[1],
                    frame.shape[0],
                    cfg.width,
                    cfg.height,
                )
                self._warned_resize = True
            frame = cv2.resize(frame, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
        if cfg.color == ColorOrder.RGB:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(frame, dtype=np.uint8)
