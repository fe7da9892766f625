"""Zero-shot VLM reward: CLIP goal-baseline projection (VLM-RM), text or goal-image targets.

``load(arg)`` is the reward-registry loader (kind ``vlm``): ``arg`` is a folder written by
:meth:`VLMReward.save_pretrained` or a YAML/JSON file of :class:`VLMConfig` fields
(optionally under a ``model:`` key). Importing this package loads no weights.
"""

from __future__ import annotations

from pathlib import Path

from models.base import ModelInputError
from models.vlm.clip_reward import VLMReward
from models.vlm.config import Fusion, TargetMode, VLMConfig
from models.vlm.weights import create_clip, default_weights_path


def load_config(path: str | Path) -> VLMConfig:
    """A :class:`VLMConfig` from a YAML or JSON file (fields at the top or under ``model:``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ModelInputError(
            f"VLM config {path} not found: give a YAML file of VLMConfig fields or a saved model folder"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ModelInputError(
            f"{path} is not valid YAML ({type(e).__name__}): fix the file"
        ) from None
    if not isinstance(data, dict):
        raise ModelInputError(f"{path} must hold a mapping of VLMConfig fields")
    return VLMConfig.from_dict(data.get("model", data))


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
