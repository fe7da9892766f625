"""Zero-shot VLM reward: CLIP goal-baseline projection (VLM-RM), text or goal-image targets.

``load(arg)`` is the reward-registry loader (kind ``vlm``): ``arg`` is a folder written by
:meth:`VLMReward.save_pretrained` or a YAML/JSON file of :class:`VLMConfig` fields
(optionally under a ``model:`` key). Importing this package loads no weights.
"""

from __future__ import annotations

from pathlib import Path

from models.base import load_yaml_fields
from models.vlm.clip_reward import VLMReward
from models.vlm.config import Fusion, TargetMode, VLMConfig
from models.vlm.weights import create_clip, default_weights_path


def load_config(path: str | Path) -> VLMConfig:
    """A :class:`VLMConfig` from a YAML or JSON file (fields at the top or under ``model:``)."""
    return VLMConfig.from_dict(load_yaml_fields(path, "VLM"))


def load(arg: str, device: str = "cpu") -> VLMReward:
    """Registry loader for ``vlm:<arg>``: a saved model folder or a config file."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return VLMReward.from_pretrained(path, device=device)
    return VLMReward.from_config(load_config(path), device=device)


__all__ = [
    "VLMReward",
    "VLMConfig",
    "TargetMode",
    "Fusion",
    "load",
    "load_config",
    "create_clip",
    "default_weights_path",
]
