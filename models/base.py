"""The progress-model contract every reward source implements (GRM, VLM, perceptual).

A progress model is reset per environment index with a task context, then maps a batch
of multi-view frames to progress in [0, 1], a success probability and a confidence.
It is stateful per environment index (incremental inference chains hops from the
previous step), so :meth:`ProgressModel.reset` takes the indices that reset.

Frames are ``uint8`` arrays or tensors ``(B, V, H, W, 3)`` with views in the model's
order (``model.views``); models convert to float themselves. This package imports
nothing else of the platform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch


class ModelInputError(ValueError):
    """Bad input to a model (wrong shape, dtype, view count, NaN...): a one-line message."""


@dataclass
class TaskContext:
    """What a model is told about the task of one environment.

    Attributes:
        text: the task instruction, if any.
        start_frames: ``uint8 (V, H, W, 3)`` reference start state (e.g. a demo's first frame).
        goal_frames: ``uint8 (V, H, W, 3)`` reference goal state (e.g. a demo's last frame).
    """

    text: str | None = None
    start_frames: np.ndarray | None = None
    goal_frames: np.ndarray | None = None


@dataclass
class ProgressOutput:
    """Per-environment outputs of one inference call; all ``float32 (B,)`` on the CPU.

    Attributes:
        progress: task progress in [0, 1].
        success: probability that the task is complete.
        confidence: in [0, 1]; agreement of the model's perspectives, 1 when it has one.
    """

    progress: torch.Tensor
    success: torch.Tensor
    confidence: torch.Tensor


@runtime_checkable
class ProgressModel(Protocol):
    """Inference face of a reward source.

    Attributes:
        views: camera names the model expects, in order.
        image_size: ``(H, W)`` the model expects.
    """

    views: tuple[str, ...]
    image_size: tuple[int, int]

    def reset(self, env_indices: Sequence[int], contexts: Sequence[TaskContext], frames) -> None:
        """Start new episodes in ``env_indices`` with their task contexts and first frames
        ``(len(env_indices), V, H, W, 3)``."""
        ...

    def predict(self, frames, env_indices: Sequence[int] | None = None) -> ProgressOutput:
        """Progress for the current frames ``(B, V, H, W, 3)`` of ``env_indices`` (default
        ``range(B)``), advancing each environment's state by one step."""
        ...


def check_frames(
    frames, views: Sequence[str], image_size: tuple[int, int] | None, what: str = "frames"
) -> torch.Tensor:
    """Validate ``(B, V, H, W, 3)`` uint8 frames; return them as a uint8 tensor.

    Raises:
        ModelInputError: wrong rank, view count, size or dtype, or non-finite values.
    """
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            if np.issubdtype(frames.dtype, np.floating) and not np.all(np.isfinite(frames)):
                raise ModelInputError(f"{what} contain NaN or inf values")
            raise ModelInputError(f"{what} must be uint8 images, got dtype {frames.dtype}")
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    elif isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            if frames.is_floating_point() and not torch.isfinite(frames).all():
                raise ModelInputError(f"{what} contain NaN or inf values")
            raise ModelInputError(f"{what} must be uint8 images, got dtype {frames.dtype}")
    else:
        raise ModelInputError(
            f"{what} must be a numpy array or torch tensor, got {type(frames).__name__}"
        )
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ModelInputError(f"{what} must have shape (B, V, H, W, 3), got {tuple(frames.shape)}")
    if frames.shape[1] != len(views):
        raise ModelInputError(
            f"{what} have {frames.shape[1]} views but the model expects {len(views)} ({', '.join(views)})"
        )
    if image_size is not None and tuple(frames.shape[2:4]) != tuple(image_size):
        raise ModelInputError(
            f"{what} are {frames.shape[2]}x{frames.shape[3]} px but the model expects "
            f"{image_size[0]}x{image_size[1]}: render at the model's size"
        )
    return frames


def load_yaml_fields(path, what: str) -> dict:
    """The mapping of config fields in a YAML/JSON file (top level or under ``model:``).

    Raises:
        ModelInputError: the file is missing, not YAML, or not a mapping.
    """
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        raise ModelInputError(
            f"{what} config {path} not found: give a YAML file of {what} config fields"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ModelInputError(
            f"{path} is not valid YAML ({type(e).__name__}): fix the file"
        ) from None
    if not isinstance(data, dict):
        raise ModelInputError(f"{path} must hold a mapping of {what} config fields")
    return data.get("model", data)


def resolve_env_indices(env_indices, batch: int, known) -> list[int]:
    """``env_indices`` (default ``range(batch)``) as ints, checked against the reset envs ``known``.

    Raises:
        ModelInputError: count mismatch or envs never reset.
    """
    indices = list(range(batch)) if env_indices is None else [int(i) for i in env_indices]
    if len(indices) != batch:
        raise ModelInputError(f"{batch} frame sets but {len(indices)} env indices")
    missing = [i for i in indices if i not in known]
    if missing:
        raise ModelInputError(
            f"env indices {missing} were never reset: call reset() with their task context"
        )
    return indices
