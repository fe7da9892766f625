"""MuJoCo worlds: the own tabletop suite and a Meta-World adapter behind one interface.

Use :func:`make` (or ``gymnasium.make`` after ``import sim``) with an id from
:func:`list_envs`::

    import sim
    env = sim.make("tabletop/pick-place-v0", views=("front", "side", "wrist"), image_size=96)

See :mod:`sim.base` for the contract every task follows.
"""

from __future__ import annotations

from sim.base import SimError, configure_gl_backend

configure_gl_backend()

import gymnasium as gym  # noqa: E402

TABLETOP_TASKS = {
    "reach": "sim.tabletop.tasks:ReachEnv",
    "push": "sim.tabletop.tasks:PushEnv",
    "pick-place": "sim.tabletop.tasks:PickPlaceEnv",
    "stack": "sim.tabletop.tasks:StackEnv",
}
TABLETOP_MAX_STEPS = {"reach": 80, "push": 150, "pick-place": 160, "stack": 160}


def _metaworld_names() -> list[str]:
    from sim.metaworld_env import METAWORLD_TASKS

    return list(METAWORLD_TASKS)


def _register() -> None:
    for name, entry in TABLETOP_TASKS.items():
        env_id = f"tabletop/{name}-v0"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry, max_episode_steps=TABLETOP_MAX_STEPS[name])
    for name in _metaworld_names():
        env_id = f"metaworld/{name}"
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point="sim.metaworld_env:MetaWorldEnv",
                kwargs={"task": name},
                max_episode_steps=None,  # the adapter truncates at its own horizon
            )


def list_envs() -> list[str]:
    """All env ids this package provides."""
    return [f"tabletop/{n}-v0" for n in TABLETOP_TASKS] + [
        f"metaworld/{n}" for n in _metaworld_names()
    ]


def make(env_id: str, **kwargs) -> gym.Env:
    """Create a task by id; unknown ids raise a one-line :class:`SimError`."""
    ids = list_envs()
    if env_id not in ids:
        import difflib

        close = difflib.get_close_matches(env_id, ids, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise SimError(
            f"unknown env id {env_id!r}.{hint} Run `robo envs` to list the {len(ids)} available ids."
        )
    return gym.make(env_id, **kwargs)


def _entry_class(env_id: str):
    entry = gym.spec(env_id).entry_point
    if isinstance(entry, str):
        import importlib

        module, name = entry.split(":")
        entry = getattr(importlib.import_module(module), name)
    return entry


def invariant_obs(env_id: str) -> tuple[int, ...] | None:
    """Indices of the observation that a shift of the whole scene leaves unchanged, less the
    tool's velocity (a cloned policy copies it), as the task declares them (``INVARIANT_OBS``
    on its class), or ``None`` where it declares none. Indices past the observation's length
    are the ``relative_obs`` differences, in their order."""
    keep = getattr(_entry_class(env_id), "INVARIANT_OBS", None)
    return None if keep is None else tuple(int(i) for i in keep)


def relative_obs(env_id: str) -> tuple[tuple[int, int], ...]:
    """Pairs ``(a, b)`` of observation indices whose difference ``obs[a] - obs[b]`` (a relative
    position) policies see after the observation, as the task declares them (``RELATIVE_OBS``
    on its class; none where the observation holds its relative positions itself)."""
    pairs = getattr(_entry_class(env_id), "RELATIVE_OBS", ())
    return tuple((int(a), int(b)) for a, b in pairs)


_register()

__all__ = ["SimError", "make", "list_envs", "invariant_obs", "relative_obs", "TABLETOP_TASKS"]
