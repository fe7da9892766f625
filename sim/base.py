"""Contracts shared by every simulated manipulation task (own tabletop suite and Meta-World).

Every task is a ``gymnasium.Env`` with a flat state observation (``Box``) and a
continuous action ``Box(-1, 1, (4,))``: end-effector displacement ``dx, dy, dz``
and a gripper command (-1 open, +1 closed), the Meta-World convention.

On top of the Gymnasium API each task offers:

* ``views``: the camera names rendered by :meth:`render_views`, in a fixed order.
* ``render_views()``: ``uint8`` frames ``(V, H, W, 3)``, upright, one per view.
* ``num_stages`` / ``stage_names``: the task's sub-tasks.
* ``task_text``: a one-line instruction.
* ``expert()``: a scripted expert (:class:`ExpertPolicy`) that reports its stage.
* ``flat_state()``: a vector of simulator state for storage (qpos, qvel).

``info`` of ``reset`` and ``step`` always carries:

* ``success`` (bool): task solved at this step.
* ``stage`` (int): current stage index in ``[0, num_stages)``, from simulator state.
* ``privileged_progress`` (float in [0, 1]): stage-wise ground-truth progress from
  simulator state (equal share per stage; within a stage, the normalised distance
  to that stage's goal). For evaluation only; never a training label.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

MAX_IMAGE_SIZE = 1024
INFO_KEYS = ("success", "stage", "privileged_progress")


class SimError(ValueError):
    """A user-facing error raised at the sim boundary (bad env id, camera, size...)."""


def configure_gl_backend() -> str:
    """Pick a headless OpenGL backend before mujoco is imported.

    ``MUJOCO_GL=egl`` by default; if EGL cannot be loaded, fall back to osmesa.
    An explicit ``MUJOCO_GL`` set by the user is respected.
    """
    if "MUJOCO_GL" in os.environ:
        return os.environ["MUJOCO_GL"]
    backend = "egl"
    try:
        import ctypes.util

        if ctypes.util.find_library("EGL") is None:
            backend = "osmesa"
    except Exception:  # noqa: BLE001 - any probing failure means "try osmesa"
        backend = "osmesa"
    os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def validate_image_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """Return ``(height, width)``; raise :class:`SimError` for 0, negative or absurd sizes."""
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    for v in (h, w):
        if not isinstance(v, (int, np.integer)) or v < 8 or v > MAX_IMAGE_SIZE:
            raise SimError(
                f"image size {size!r} is invalid: use an integer between 8 and {MAX_IMAGE_SIZE} pixels"
            )
    return int(h), int(w)


def validate_views(
    views, available: dict[str, str] | tuple[str, ...], env_id: str
) -> tuple[str, ...]:
    """Check requested view names against the task's cameras (``available`` may map aliases)."""
    if isinstance(views, str):
        views = tuple(v.strip() for v in views.split(",") if v.strip())
    views = tuple(views)
    if not views:
        raise SimError(
            f"no camera views requested for {env_id}: pass e.g. views=('front', 'side', 'wrist')"
        )
    names = tuple(available)
    for v in views:
        if v not in names:
            raise SimError(f"unknown camera {v!r} for {env_id}: choose from {', '.join(names)}")
    if len(set(views)) != len(views):
        raise SimError(f"duplicate camera names in {views}: list each view once")
    return views


@dataclass
class Randomization:
    """Domain randomisation switches for a task (all driven by the reset seed)."""

    object_pose: bool = True
    colors: bool = False
    lighting: bool = False
    # Half-widths of the uniform perturbation ranges.
    color_jitter: float = 0.25
    light_jitter: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.color_jitter <= 1.0:
            raise SimError(f"color_jitter={self.color_jitter} must lie in [0, 1]")
        if not 0.0 <= self.light_jitter <= 1.0:
            raise SimError(f"light_jitter={self.light_jitter} must lie in [0, 1]")


@runtime_checkable
class ExpertPolicy(Protocol):
    """A scripted, closed-loop expert. ``stage`` is the sub-task it is working on."""

    stage: int

    def reset(self) -> None: ...

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray: ...


@runtime_checkable
class ManipulationEnv(Protocol):
    """What every task offers on top of ``gymnasium.Env`` (see module docstring)."""

    views: tuple[str, ...]
    num_stages: int
    stage_names: tuple[str, ...]
    task_text: str

    def render_views(self) -> np.ndarray: ...

    def expert(self) -> ExpertPolicy: ...

    def flat_state(self) -> np.ndarray: ...


def make_renderer(model, image_size: tuple[int, int], skybox: bool = False):
    """An offscreen ``mujoco.Renderer`` with shadows and reflections off (about 10x faster
    under software rendering); multisampling is off through ``vis.quality.offsamples``."""
    import mujoco

    model.vis.quality.offsamples = 0
    renderer = mujoco.Renderer(model, height=image_size[0], width=image_size[1])
    flags = renderer.scene.flags
    flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = int(skybox)
    return renderer


def tile_views(frames: np.ndarray) -> np.ndarray:
    """``(V, H, W, 3)`` -> ``(H, V*W, 3)``: views side by side."""
    return np.concatenate(list(frames), axis=1)
