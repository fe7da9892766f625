"""Unsupervised perceptual reward from a few demos (Sermanet et al. 2016): step discovery,
per-step feature selection and classifiers over intermediate encoder features.

``load(arg)`` is the reward-registry loader (kind ``perceptual``): ``arg`` is a folder
written by :meth:`PerceptualReward.save_pretrained`. :func:`load_config` reads the fitting
settings (``configs/perceptual/*.yaml``) to pass to :func:`fit`.
"""

from __future__ import annotations

from pathlib import Path

from models.base import load_yaml_fields
from models.perceptual.config import EncoderKind, PerceptualConfig, StepWeighting
from models.perceptual.reward import PerceptualReward, fit


def load_config(path: str | Path) -> PerceptualConfig:
    """A :class:`PerceptualConfig` from a YAML or JSON file (fields at the top or under ``model:``)."""
    return PerceptualConfig.from_dict(load_yaml_fields(path, "perceptual"))


def load(arg: str, device: str = "cpu") -> PerceptualReward:
    """Registry loader for ``perceptual:<dir>``: a fitted reward folder."""
    return PerceptualReward.from_pretrained(Path(arg).expanduser(), device=device)


__all__ = [
    "PerceptualReward",
    "PerceptualConfig",
    "EncoderKind",
    "StepWeighting",
    "fit",
    "load",
    "load_config",
]
