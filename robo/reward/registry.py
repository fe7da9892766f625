"""One registry of reward sources: a spec string picks the progress model.

grm:<dir>               a trained General Reward Model folder
vlm:<config.yaml|dir>   zero-shot CLIP goal-baseline reward (VLM-RM): a VLMConfig YAML or a saved folder
perceptual:<dir>        a perceptual reward fitted from a few demos (models.perceptual.fit)
grpc://<host>:<port>    a reward server (robo.serving); token from $ROBO_REWARD_TOKEN
ensemble:<dir>          several of the above combined (``robo reward ensemble``)
"""

from __future__ import annotations

from collections.abc import Callable

from robo.errors import RoboError

_LOADERS: dict[str, Callable[[str], object]] = {}


def as_spec(model: str) -> str:
    """A command's ``--model``: a spec as it is, a bare folder as ``grm:<folder>`` (or
    ``ensemble:<folder>`` when it holds an ensemble manifest)."""
    if ":" in model.split("/")[0]:
        return model
    from robo.reward.ensemble import is_ensemble_dir

    return f"ensemble:{model}" if is_ensemble_dir(model) else f"grm:{model}"


def model_dir(spec: str):
    """The folder of a spec's saved model (where calibration keeps ``thresholds.json``), or
    None for sources without one."""
    from pathlib import Path

    kind, _, arg = spec.partition(":")
    return Path(arg) if kind in ("grm", "ensemble") else None


def register(kind: str):
    """Decorator: register a loader ``f(argument) -> ProgressModel`` under ``kind``."""

    def deco(fn):
        if kind in _LOADERS:
            raise ValueError(f"reward source {kind!r} is registered twice")
        _LOADERS[kind] = fn
        return fn

    return deco


@register("grm")
def _grm(path: str):
    from models.grm.inference import GRMProgressModel

    return GRMProgressModel.from_pretrained(path)


@register("vlm")
def _vlm(arg: str):
    from models.vlm import load

    return load(arg)


@register("perceptual")
def _perceptual(path: str):
    from models.perceptual import load

    return load(path)


@register("ensemble")
def _ensemble(path: str):
    from robo.reward.ensemble import load_ensemble

    return load_ensemble(path)


@register("grpc")
def _grpc(arg: str):
    from robo.serving.client import RemoteProgressModel

    return RemoteProgressModel("grpc:" + arg)


def load_progress_model(spec: str):
    """Build a progress model from ``kind:argument`` (see module docstring)."""
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in _LOADERS:
        raise RoboError(
            f"reward source {spec!r}: write it as <kind>:<argument> with kind one of {', '.join(sorted(_LOADERS))}"
        )
    return _LOADERS[kind](arg)


def kinds() -> list[str]:
    return sorted(_LOADERS)
