"""`robo collect`: record demonstrations and non-expert rollouts into an episode store."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robo.errors import RoboError
from robo.store import Episode, EpisodeStore, StoreError, collect_provenance
from sim.base import Randomization, validate_image_size

log = logging.getLogger(__name__)


@dataclass
class CollectConfig:
    """Record ``episodes`` rollouts of ``policy`` in ``env`` into the store at ``out``."""

    # env id (``robo envs`` lists them), e.g. ``tabletop/pick-place-v0``.
    env: str = ""
    # number of episodes to record.
    episodes: int = 10
    # comma-separated camera names, in the order they are stored.
    views: str = "front,side,wrist"
    # square image size in pixels.
    size: int = 96
    # expert | noisy:<sigma> | near-miss | undo | half | random-freeze | recover[:<n>] | retreat
    # | give-up | undo-early.
    policy: str = "expert"
    # store location (path or fsspec URL); default ``data/<task>``. Appends if it exists.
    out: str = ""
    # seed of the first episode; episode k of a run uses ``seed + k``.
    seed: int = 0
    # step cap per episode (0: the env's own horizon).
    max_steps: int = 0
    # domain randomisation of the task.
    randomization: Randomization = field(default_factory=Randomization)

    def __post_init__(self) -> None:
        if not self.env:
            raise RoboError(
                "--env is required, e.g. --env tabletop/pick-place-v0 (see `robo envs`)"
            )
        if self.episodes < 1:
            raise RoboError(f"--episodes {self.episodes}: record at least 1 episode")
        validate_image_size(self.size)
        if self.max_steps < 0:
            raise RoboError(f"--max_steps {self.max_steps} must be >= 0 (0 uses the env's horizon)")

    @property
    def view_list(self) -> tuple[str, ...]:
        return tuple(v.strip() for v in self.views.split(",") if v.strip())

    @property
    def out_url(self) -> str:
        return self.out or str(Path("data") / self.env.split("/")[-1])


def make_env(env_id: str, views, size: int, randomization: Randomization | None = None, **kwargs):
    """Create a recording env (no termination on success: rollout policies decide when to stop)."""
    import sim

    return sim.make(
        env_id,
        views=tuple(views),
        image_size=size,
        randomization=randomization or Randomization(),
        terminate_on_success=False,
        **kwargs,
    )


def rollout_to_episode(rollout, env_id: str) -> Episode:
    """Convert a :class:`sim.rollouts.Rollout` into a store :class:`Episode`."""
    return Episode(
        frames=rollout.frames,
        states=rollout.obs.astype(np.float32),
        actions=rollout.actions,
        env_reward=rollout.env_reward,
        success=rollout.success,
        stage=rollout.stage,
        privileged_progress=rollout.privileged_progress,
        task=rollout.task,
        env_id=env_id,
        seed=rollout.seed,
        policy=rollout.policy,
        outcome=rollout.outcome,
        extra=rollout.extra,
    )


def open_or_create(
    url: str, env_id: str, views, size: int, state_dim: int, action_dim: int
) -> EpisodeStore:
    """Open the store at ``url`` for appending, or create it; refuse a mismatching store."""
    try:
        store = EpisodeStore.open(url, mode="a")
    except StoreError:
        if Path(url).exists() and any(Path(url).iterdir()):
            raise
        return EpisodeStore.create(
            url,
            views=tuple(views),
            image_size=(size, size),
            env_id=env_id,
            state_dim=state_dim,
            action_dim=action_dim,
        )
    if (
        store.env_id != env_id
        or tuple(store.views) != tuple(views)
        or tuple(store.image_size) != (size, size)
    ):
        raise RoboError(
            f"{url} holds {store.env_id} with views {','.join(store.views)} at {store.image_size[0]} px; "
            f"record {env_id} with these views and size, or choose another --out"
        )
    return store


def collect(cfg: CollectConfig) -> EpisodeStore:
    """Run the collection; returns the store."""
    from sim.rollouts import make_policy, run_rollout

    env = make_env(cfg.env, cfg.view_list, cfg.size, cfg.randomization)
    try:
        make_policy(cfg.policy, env, np.random.default_rng(0))  # validate the spec before writing
        store = open_or_create(
            cfg.out_url,
            cfg.env,
            cfg.view_list,
            cfg.size,
            env.observation_space.shape[0],
            env.action_space.shape[0],
        )
        store.add_provenance(
            collect_provenance(
                event="collect",
                command=" ".join(sys.argv),
                env_id=cfg.env,
                policy=cfg.policy,
                seed=cfg.seed,
                episodes=cfg.episodes,
                randomization=asdict(cfg.randomization),
            )
        )
        max_steps = cfg.max_steps or 1000
        outcomes = {"success": 0, "partial": 0, "failure": 0}
        bar = tqdm(range(cfg.episodes), desc=f"collect {cfg.env} [{cfg.policy}]", unit="ep")
        for k in bar:
            seed = cfg.seed + k
            policy = make_policy(cfg.policy, env, np.random.default_rng(seed + 10_000))
            rollout = run_rollout(env, policy, seed, render=True, max_steps=max_steps)
            store.append_episode(rollout_to_episode(rollout, cfg.env))
            outcomes[rollout.outcome] += 1
            bar.set_postfix(outcomes)
    finally:
        env.close()
    log.info("wrote %d episodes to %s (%s)", cfg.episodes, cfg.out_url, outcomes)
    print(f"{cfg.out_url}: {len(store)} episodes ({cfg.episodes} new: {outcomes})")
    return store
