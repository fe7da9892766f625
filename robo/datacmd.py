"""`robo data info|export|import`: inspect a store; LeRobotDataset v3 interop."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from robo.errors import RoboError
from robo.store import EpisodeStore


@dataclass
class InfoConfig:
    """Summarise the episode store at ``data``."""

    data: str = ""

    def __post_init__(self) -> None:
        if not self.data:
            raise RoboError("--data is required: the episode store to summarise")


def info(cfg: InfoConfig) -> dict:
    store = EpisodeStore.open(cfg.data)
    metas = [store.episode_meta(i) for i in range(len(store))]
    summary = {
        "location": cfg.data,
        "env_id": store.env_id,
        "views": list(store.views),
        "image_size": list(store.image_size),
        "episodes": len(store),
        "steps": store.num_steps,
        "policies": dict(Counter(m.policy for m in metas)),
        "outcomes": dict(Counter(m.outcome for m in metas)),
        "collect_runs": sum(1 for p in store.provenance if p.get("event") == "collect"),
    }
    for key, value in summary.items():
        print(f"{key:>13}: {value}")
    return summary


@dataclass
class ExportConfig:
    """Export the store at ``data`` as a local LeRobotDataset v3 under ``root``."""

    data: str = ""
    root: str = ""
    repo_id: str = "local/robo"
    fps: int = 25

    def __post_init__(self) -> None:
        if not self.data or not self.root:
            raise RoboError(
                "--data (the store) and --root (the LeRobot dataset folder) are required"
            )


def export(cfg: ExportConfig):
    from robo.lerobot_io import export_lerobot

    out = export_lerobot(cfg.data, cfg.root, cfg.repo_id, fps=cfg.fps)
    print(f"exported {cfg.data} to LeRobotDataset {cfg.repo_id} at {cfg.root}")
    return out


@dataclass
class ImportConfig:
    """Import the local LeRobotDataset at ``root`` into a new store at ``out``."""

    root: str = ""
    repo_id: str = "local/robo"
    out: str = ""
    env_id: str = ""

    def __post_init__(self) -> None:
        if not self.root or not self.out:
            raise RoboError(
                "--root (the LeRobot dataset folder) and --out (the new store) are required"
            )


def import_(cfg: ImportConfig) -> EpisodeStore:
    from robo.lerobot_io import import_lerobot

    store = import_lerobot(cfg.root, cfg.repo_id, cfg.out, env_id=cfg.env_id or None)
    print(f"imported {len(store)} episodes into {cfg.out}")
    return store
