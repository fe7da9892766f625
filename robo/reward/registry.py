"""One registry of reward sources: a spec string picks the progress model.

grm:<dir>               a trained General Reward Model folder
vlm:<config.yaml|dir>   zero-shot CLIP goal-baseline reward (VLM-RM): a VLMConfig YAML or a saved folder
perceptual:<dir>        a perceptual reward fitted from a few demos (models.perceptual.fit)
grpc://<host>:<port>    a reward server (robo.serving); token from $ROBO_REWARD_TOKEN
"""

from __future__ import annotations

from collections.abc import Callable

from robo.errors import RoboError

_LOADERS: dict[str, Callable[[str], object]] = {}


def as_spec(model: str) -> str:
    """A command's ``--model``: a spec as it is, a bare folder as ``grm:<folder>``."""
    return model if ":" in model.split("/")[0] else f"grm:{model}"


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
