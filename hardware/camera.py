"""The camera contract (LeRobot-compatible) and a thread-safe latest-frame buffer.

Frames are ``uint8`` arrays ``(H, W, 3)`` in RGB order.

* ``read()``: a fresh frame captured after the call started (blocking).
* ``async_read(timeout_ms)``: the newest frame not yet returned by ``async_read``,
  waiting up to ``timeout_ms`` for one; ``TimeoutError`` otherwise.
* ``read_latest(max_age_ms)``: the newest frame without waiting; a frame older
  than ``max_age_ms`` is refused with :class:`StaleFrameError` (a stalled camera
  must not feed a control loop silently).
"""

from __future__ import annotations

import abc
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from hardware.robot import (
    DeviceLifecycle,
    DeviceNotConnectedError,
    HardwareConfigError,
    HardwareError,
    check_if_already_connected,
)


class StaleFrameError(HardwareError, TimeoutError):
    """The newest frame is older than the caller accepts."""


class NoFrameError(HardwareError, TimeoutError):
    """No frame arrived within the timeout."""


@dataclass(kw_only=True)
class CameraConfig:
    """Fields every camera config has (``None``: the device's default).

    Args:
        fps: frames per second.
        width: frame width in pixels.
        height: frame height in pixels.
    """

    fps: float | None = None
    width: int | None = None
    height: int | None = None

    def __post_init__(self):
        if self.fps is not None and not 0 < self.fps <= 1000:
            raise HardwareConfigError(f"camera fps={self.fps!r} is invalid: use (0, 1000]")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and 1 <= v <= 8192):
                raise HardwareConfigError(f"camera {name}={v!r} is invalid: use 1..8192 pixels")


class FrameBuffer:
    """The latest frame with its capture time (monotonic seconds) and a sequence number."""

    def __init__(self, name: str = "camera"):
        self.name = name
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._stamp = 0.0
        self._seq = 0
        self._consumed = 0

    def put(self, frame: np.ndarray, stamp: float | None = None) -> None:
        with self._cond:
            self._frame = frame
            self._stamp = time.monotonic() if stamp is None else stamp
            self._seq += 1
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._frame, self._seq, self._consumed = None, 0, 0

    @property
    def seq(self) -> int:
        return self._seq

    def wait_newer(self, after_seq: int, timeout_ms: float) -> tuple[np.ndarray, int]:
        """The latest frame once its sequence number exceeds ``after_seq``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > after_seq, timeout=timeout_ms / 1000):
                raise NoFrameError(
                    f"{self.name}: no new frame within {timeout_ms:.0f} ms: check that the camera "
                    f"is streaming (cable, topic, fps) or raise timeout_ms"
                )
            return self._frame, self._seq

    def async_read(self, timeout_ms: float) -> np.ndarray:
        frame, seq = self.wait_newer(self._consumed, timeout_ms)
        self._consumed = seq
        return frame

    def read_latest(self, max_age_ms: float) -> np.ndarray:
        with self._cond:
            if self._frame is None:
                raise NoFrameError(
                    f"{self.name}: no frame captured yet: wait for the stream to start"
                )
            age_ms = (time.monotonic() - self._stamp) * 1000
            if age_ms > max_age_ms:
                raise StaleFrameError(
                    f"{self.name}: latest frame is {age_ms:.0f} ms old (max_age_ms={max_age_ms:.0f}): "
                    f"the camera stalled or streams too slowly; check it or raise max_age_ms"
                )
            return self._frame


class Camera(DeviceLifecycle, abc.ABC):
    """A camera behind the LeRobot contract. Subclasses implement the ``_`` hooks."""

    config_class: ClassVar[type[CameraConfig]] = CameraConfig
    name: ClassVar[str] = "camera"

    def __init__(self, config: CameraConfig):
        self.config = config
        self.fps = config.fps
        self.width = config.width
        self.height = config.height

    def __str__(self) -> str:
        return f"{self.name} camera"

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @check_if_already_connected
    def connect(self, warmup: bool = True) -> None:
        """Open the device; with ``warmup`` wait for the first frame."""
        self._connect(warmup)

    def disconnect(self) -> None:
        if not self.is_connected:
            raise DeviceNotConnectedError(f"{self} is not connected: nothing to disconnect")
        self._disconnect()

    def read(self) -> np.ndarray:
        """A frame captured after this call started (blocks for up to a second or 5 frames)."""
        self._require()
        return self._checked(self._read())

    def async_read(self, timeout_ms: float = 200) -> np.ndarray:
        """The newest frame not returned by ``async_read`` before, waiting up to ``timeout_ms``."""
        self._require()
        return self._checked(self._async_read(timeout_ms))

    def read_latest(self, max_age_ms: float = 500) -> np.ndarray:
        """The newest frame now; :class:`StaleFrameError` if older than ``max_age_ms``."""
        self._require()
        return self._checked(self._read_latest(max_age_ms))

    @staticmethod
    def find_cameras() -> list[dict]:
        """LeRobot compatibility: devices this driver can see (empty where not applicable)."""
        return []

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def _connect(self, warmup: bool) -> None: ...

    @abc.abstractmethod
    def _disconnect(self) -> None: ...

    @abc.abstractmethod
    def _read(self) -> np.ndarray: ...

    @abc.abstractmethod
    def _async_read(self, timeout_ms: float) -> np.ndarray: ...

    @abc.abstractmethod
    def _read_latest(self, max_age_ms: float) -> np.ndarray: ...

    # ------------------------------------------------------------------ helpers
    def _require(self) -> None:
        if not self.is_connected:
            raise DeviceNotConnectedError(
                f"{self} is not connected: call connect() first (or `with camera: ...`)"
            )

    def _checked(self, frame: np.ndarray) -> np.ndarray:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise HardwareError(
                f"{self} produced a {frame.dtype} frame of shape {frame.shape}; expected uint8 (H, W, 3)"
            )
        return frame


class BufferedCamera(Camera):
    """A camera whose frames arrive in a :class:`FrameBuffer` (a thread or a subscription)."""

    def __init__(self, config: CameraConfig):
        super().__init__(config)
        self.buffer = FrameBuffer(str(self))

    def _read(self) -> np.ndarray:
        period_ms = 1000.0 / self.fps if self.fps else 100.0
        frame, _ = self.buffer.wait_newer(self.buffer.seq, max(1000.0, 5 * period_ms))
        return frame

    def _async_read(self, timeout_ms: float) -> np.ndarray:
        return self.buffer.async_read(timeout_ms)

    def _read_latest(self, max_age_ms: float) -> np.ndarray:
        return self.buffer.read_latest(max_age_ms)
