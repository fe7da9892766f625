"""`robo reward fit-perceptual`: fit an unsupervised perceptual reward from a few demos.

    robo reward fit-perceptual --demos data/pick-place --episodes 5 --num_steps 4 --out runs/perceptual/pp

The result loads as ``perceptual:<out>`` anywhere a reward source is taken.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from robo.errors import RoboError
from robo.store import EpisodeStore


@dataclass
class FitPerceptualConfig:
    """Settings of a perceptual-reward fit."""

    # episode store holding expert demonstrations.
    demos: str = ""
    # number of demonstrations to fit on (the first N expert episodes).
    episodes: int = 5
    # number of steps to discover.
    num_steps: int = 4
    # comma-separated views (default: all views of the store).
    views: str = ""
    # PerceptualConfig YAML (encoder, feature selection, filter).
    config: str = "configs/perceptual/default.yaml"
    out: str = ""

    def __post_init__(self) -> None:
        if not self.demos or not self.out:
            raise RoboError(
                "--demos (a store with expert demos) and --out (the reward's folder) are required"
            )
        if self.episodes < 1:
            raise RoboError("--episodes must be positive")


def fit_perceptual(cfg: FitPerceptualConfig):
    from models.perceptual import fit, load_config

    store = EpisodeStore.open(cfg.demos)
    views = tuple(v for v in cfg.views.split(",") if v) or tuple(store.views)
    missing = [v for v in views if v not in store.views]
    if missing:
        raise RoboError(f"{cfg.demos} has no views {missing} (it has {', '.join(store.views)})")
    idx = [store.views.index(v) for v in views]
    demos = [
        store.episode(i).frames[:, idx]
        for i in range(len(store))
        if store.episode_meta(i).policy == "expert"
    ][: cfg.episodes]
    if not demos:
        raise RoboError(f"{cfg.demos} has no expert demonstrations")
    t0 = time.time()
    reward = fit(demos, cfg.num_steps, config=load_config(cfg.config), views=views)
    reward.save_pretrained(Path(cfg.out))
    print(
        f"fitted a {cfg.num_steps}-step perceptual reward on {len(demos)} demos in {time.time() - t0:.1f} s: "
        f"perceptual:{cfg.out}"
    )
    return reward
