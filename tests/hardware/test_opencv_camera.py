"""OpenCVCamera on a video file (read like a device), and its errors."""

import time

import cv2
import numpy as np
import pytest

from hardware.camera import NoFrameError, StaleFrameError
from hardware.opencv_camera import OpenCVCamera, OpenCVCameraConfig
from hardware.registry import make_camera_from_config
from hardware.robot import DeviceConnectionError, DeviceNotConnectedError, HardwareConfigError

W, H, N = 64, 48, 12


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    """An MP4 whose frames are red (BGR order on disk), brightening frame by frame."""
    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30, (W, H))
    assert writer.isOpened()
    for i in range(N):
        frame = np.zeros((H, W, 3), np.uint8)
        frame[:, :, 2] = 40 + 15 * i  # red channel
        writer.write(frame)
    writer.release()
    return path


def camera(path, **kw) -> OpenCVCamera:
    return make_camera_from_config({"type": "opencv", "index_or_path": path, "fps": 60, **kw})


def wait_for_end(cam: OpenCVCamera, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while cam.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cam.error == "end of video file"


def test_read_returns_rgb_uint8_frames(video):
    with camera(video) as cam:
        frame = cam.read()
        assert frame.dtype == np.uint8 and frame.shape == (H, W, 3)
        r, g, b = frame.reshape(-1, 3).mean(axis=0)
        assert r > 30 and g < 10 and b < 10  # BGR on disk -> RGB out


def test_async_read_returns_each_frame_once_then_waits(video):
    with camera(video) as cam:
        first = cam.async_read(timeout_ms=1000)
        second = cam.async_read(timeout_ms=1000)
        assert second[..., 0].mean() > first[..., 0].mean()  # a newer (brighter) frame
        wait_for_end(cam)
        cam.async_read(timeout_ms=100)  # the last unread frame
        with pytest.raises(NoFrameError, match="end of video file"):
            cam.async_read(timeout_ms=100)


def test_read_latest_refuses_stale_frames(video):
    with camera(video) as cam:
        wait_for_end(cam)
        time.sleep(0.1)
        with pytest.raises(
            StaleFrameError, match=r"latest frame is \d+ ms old \(max_age_ms=50\)"
        ) as err:
            cam.read_latest(max_age_ms=50)
        assert "\n" not in str(err.value)
        last = cam.read_latest(max_age_ms=60_000)
        assert last[..., 0].mean() > 150  # the brightest, last frame


def test_looping_file_keeps_frames_fresh(video):
    with camera(video, loop=True) as cam:
        time.sleep(0.5)  # longer than the clip at 60 fps
        assert cam.read_latest(max_age_ms=200).shape == (H, W, 3)
        assert cam.error is None


def test_frames_are_resized_to_the_configured_size(video):
    with camera(video, width=32, height=24) as cam:
        assert cam.read().shape == (24, 32, 3)


@pytest.mark.parametrize("src", ["/dev/video3", 7])
def test_missing_device_gives_a_clear_one_line_error(src):
    cam = camera(src)
    with pytest.raises(DeviceConnectionError) as err:
        cam.connect()
    msg = str(err.value)
    assert msg.startswith(f"camera {src} not found: check the index with `v4l2-ctl --list-devices`")
    assert "\n" not in msg and not cam.is_connected


def test_missing_file_and_guards(tmp_path):
    with pytest.raises(DeviceConnectionError, match="video file .* not found: check the path"):
        camera(str(tmp_path / "nope.mp4")).connect()
    cam = camera(str(tmp_path / "nope.mp4"))
    for call in (cam.read, cam.async_read, cam.read_latest, cam.disconnect):
        with pytest.raises(DeviceNotConnectedError):
            call()


def test_config_validation():
    with pytest.raises(HardwareConfigError, match="fps"):
        OpenCVCameraConfig(index_or_path=0, fps=0)
    with pytest.raises(HardwareConfigError, match="both width and height"):
        OpenCVCameraConfig(index_or_path=0, width=640)
    with pytest.raises(HardwareConfigError, match=r"backend='qt' is invalid: use one of \['any'"):
        OpenCVCameraConfig(index_or_path=0, backend="qt")
    with pytest.raises(HardwareConfigError, match="fourcc"):
        OpenCVCameraConfig(index_or_path=0, fourcc="MJPEG")
