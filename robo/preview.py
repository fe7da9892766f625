"""`robo preview`: an MP4 (or GIF) of one episode with all views side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from robo.errors import RoboError
from robo.store import EpisodeStore


@dataclass
class PreviewConfig:
    """Write a video of episode ``episode`` of the store at ``data``."""

    # store location (path or fsspec URL).
    data: str = ""
    # episode index (negative counts from the end).
    episode: int = 0
    # output file (.mp4 or .gif); default ``<data>_ep<episode>.mp4``.
    out: str = ""
    # frames per second.
    fps: int = 20
    # upscaling factor of the frames (small renders are hard to see).
    scale: int = 2
    # draw step, stage, privileged progress and success on the video.
    overlay: bool = True

    def __post_init__(self) -> None:
        if not self.data:
            raise RoboError("--data is required: the episode store to preview")
        if self.fps < 1 or self.scale < 1:
            raise RoboError("--fps and --scale must be positive integers")
        if self.out and Path(self.out).suffix.lower() not in (".mp4", ".gif"):
            raise RoboError(f"--out {self.out}: use a .mp4 or .gif file name")


def annotate(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """Draw text lines in the top-left corner of an RGB image (in place) and return it."""
    for i, text in enumerate(lines):
        y = 14 + 14 * i
        cv2.putText(image, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            image, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA
        )
    return image


def write_video(path: str | Path, frames, fps: int) -> Path:
    """Write RGB frames ``(T, H, W, 3)`` to an MP4 (H.264 via imageio-ffmpeg) or a GIF."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames)
    if path.suffix.lower() == ".gif":
        imageio.mimwrite(path, frames, duration=1000 / fps, loop=0)
    else:  # H.264 through imageio-ffmpeg; pad to the codec's 16-pixel blocks
        pad = ((0, 0), (0, (-frames.shape[1]) % 16), (0, (-frames.shape[2]) % 16), (0, 0))
        imageio.mimwrite(path, np.pad(frames, pad), fps=fps, macro_block_size=16)
    return path


def episode_video_frames(store: EpisodeStore, index: int, scale: int = 2, overlay: bool = True):
    """Tiled, upscaled, annotated frames of one episode."""
    ep = store.episode(index)
    out = []
    for t in range(len(ep)):
        tiled = np.concatenate(list(ep.frames[t]), axis=1)
        tiled = np.ascontiguousarray(np.kron(tiled, np.ones((scale, scale, 1), np.uint8)))
        if overlay:
            annotate(
                tiled,
                [
                    f"{ep.policy}  t={t}",
                    f"stage {int(ep.stage[t])}  p={float(ep.privileged_progress[t]):.2f}"
                    + ("  SUCCESS" if ep.success[t] else ""),
                ],
            )
        out.append(tiled)
    return np.stack(out), ep


def preview(cfg: PreviewConfig) -> Path:
    store = EpisodeStore.open(cfg.data)
    if len(store) == 0:
        raise RoboError(f"{cfg.data} has no complete episodes to preview")
    index = cfg.episode % len(store) if -len(store) <= cfg.episode < len(store) else None
    if index is None:
        raise RoboError(
            f"--episode {cfg.episode} is out of range: {cfg.data} has {len(store)} episodes"
        )
    frames, ep = episode_video_frames(store, index, cfg.scale, cfg.overlay)
    out = cfg.out or f"{cfg.data.rstrip('/')}_ep{index}.mp4"
    path = write_video(out, frames, cfg.fps)
    print(
        f"wrote {path} ({len(frames)} frames, views {','.join(store.views)}, outcome {ep.outcome})"
    )
    return path
