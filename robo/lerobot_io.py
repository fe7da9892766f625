"""LeRobotDataset v3 interop for the episode store (needs the ``lerobot`` extra).

Export writes a local LeRobotDataset (a folder, nothing pushed) with one frame per
store row and these features:

=============================  =========  ==============================================
feature                        dtype      value at frame ``t``
=============================  =========  ==============================================
``observation.images.<view>``  image      ``frames[t, view]`` (lossless PNG in parquet)
``observation.state``          float32    ``states[t]``
``action``                     float32    ``actions[t]`` (zeros on the last frame)
``next.reward``                float32    ``env_reward[t + 1]``; 0 on the last frame
``next.success``               bool       ``success[t + 1]``; ``success[t]`` on the last
``next.done``                  bool       true on the last frame
``stage``                      int16      ``stage[t]`` (-1: unknown)
``privileged_progress``        float32    ``privileged_progress[t]`` (NaN: unknown)
task (per frame)               string     the episode's task text
=============================  =========  ==============================================

``next.*`` follow LeRobot's convention (what follows the action taken at frame ``t``),
so they are our row-``t + 1`` values. ``stage`` and ``privileged_progress`` are
deliberately not under ``observation.``: LeRobot policies take every ``observation.*``
feature as an input, and these are evaluation-only ground truth.

What LeRobot has no column for (env id, seed, policy, outcome, ``extra``, the row-0
reward and success, provenance) goes to ``meta/robo_episodes.json`` beside LeRobot's
own metadata, so our own exports re-import exactly. Datasets from elsewhere import
too (image or video features): then seed is -1, policy ``"unknown"``, the outcome is
derived as in EVALUATION.md, and the last frame's ``next.*`` values land in ``extra``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robo.store import Episode, EpisodeStore, StoreError, StoreLike, collect_provenance

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

INSTALL_HINT = "pip install -e '.[lerobot]' (see README)"
IMAGE_PREFIX = "observation.images."
SIDECAR = Path("meta") / "robo_episodes.json"
SIDECAR_FORMAT = "robo-episode-store/lerobot-sidecar/1"
#: Scalar per-frame features and their dtypes, besides images, state and action.
SCALAR_FEATURES: dict[str, str] = {
    "next.reward": "float32",
    "next.success": "bool",
    "next.done": "bool",
    "stage": "int16",
    "privileged_progress": "float32",
}
PARTIAL_PROGRESS = 0.3  # EVALUATION.md: partial if final privileged progress >= 0.3


def _lerobot_dataset_class() -> type[LeRobotDataset]:
    """Import LeRobotDataset lazily, with a one-line hint when the extra is missing."""
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError as exc:
        raise ImportError(
            f"LeRobot interop needs the lerobot extra ({exc.name or exc} is missing): {INSTALL_HINT}"
        ) from None
    return LeRobotDataset


def _suppress_progress_bars() -> Any:
    from lerobot.utils.utils import SuppressProgressBars

    return SuppressProgressBars()


# --------------------------------------------------------------------------- export


def lerobot_features(store: EpisodeStore) -> dict[str, dict[str, Any]]:
    """The LeRobot feature spec :func:`export_lerobot` writes for ``store``."""
    height, width = store.image_size
    features: dict[str, dict[str, Any]] = {
        f"{IMAGE_PREFIX}{view}": {
            "dtype": "image",
            "shape": (height, width, 3),
            "names": ["height", "width", "channels"],
        }
        for view in store.views
    }
    features["observation.state"] = {"dtype": "float32", "shape": (store.state_dim,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (store.action_dim,), "names": None}
    for name, dtype in SCALAR_FEATURES.items():
        features[name] = {"dtype": dtype, "shape": (1,), "names": None}
    return features


def export_lerobot(
    store: EpisodeStore | StoreLike, root: str | Path, repo_id: str, *, fps: int
) -> Path:
    """Write every episode of a store as a local LeRobotDataset v3 (no hub, no push).

    Args:
        store: an open store, or the URL of one.
        root: the dataset folder to create; it must not exist yet.
        repo_id: the dataset's name, e.g. ``"local/pick-cube"``.
        fps: control frequency, for LeRobot's timestamps.

    Returns:
        ``root`` as a Path.

    Raises:
        StoreError: ``root`` exists, or ``fps`` is not positive.
        ImportError: the lerobot extra is not installed.
    """
    source = store if isinstance(store, EpisodeStore) else EpisodeStore.open(store)
    root = Path(root)
    if root.exists():
        raise StoreError(f"{root} already exists; export into a new folder (LeRobot creates it)")
    if int(fps) < 1:
        raise StoreError(f"fps must be a positive integer, got {fps!r}")
    dataset_class = _lerobot_dataset_class()
    entries: list[dict[str, Any]] = []
    with _suppress_progress_bars(), warnings.catch_warnings():
        # LeRobot's histogram of bool columns (next.success, next.done) warns once per episode
        warnings.filterwarnings("ignore", "Converting input from bool", RuntimeWarning)
        dataset = dataset_class.create(
            repo_id, fps=int(fps), features=lerobot_features(source), root=root, use_videos=False
        )
        try:
            for episode in source:
                _write_episode(dataset, episode, source.views)
                entries.append(_sidecar_entry(episode))
        finally:
            dataset.finalize()
    _write_sidecar(root, source, entries, repo_id=repo_id, fps=int(fps))
    return root


def _write_episode(dataset: LeRobotDataset, episode: Episode, views: tuple[str, ...]) -> None:
    for frame in _lerobot_frames(episode, views):
        dataset.add_frame(frame)
    # datasets encodes a shape-(1,) feature with float(value), which numpy >= 2.4
    # refuses for 1-d arrays; LeRobot's own stats code takes these columns as 1-d too.
    for name in SCALAR_FEATURES:
        dataset.episode_buffer[name] = [value.reshape(()) for value in dataset.episode_buffer[name]]
    dataset.save_episode()


def _lerobot_frames(episode: Episode, views: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    last = len(episode) - 1
    scalars = {
        "next.reward": np.append(episode.env_reward[1:], np.float32(0.0)),
        "next.success": np.append(episode.success[1:], episode.success[last]),
        "next.done": np.arange(len(episode)) == last,
        "stage": episode.stage,
        "privileged_progress": episode.privileged_progress,
    }
    for t in range(len(episode)):
        frame: dict[str, Any] = {
            f"{IMAGE_PREFIX}{view}": episode.frames[t, v] for v, view in enumerate(views)
        }
        frame["observation.state"] = episode.states[t]
        frame["action"] = episode.actions[t]
        for name, dtype in SCALAR_FEATURES.items():
            frame[name] = scalars[name][t : t + 1].astype(dtype)
        frame["task"] = episode.task
        yield frame


def _sidecar_entry(episode: Episode) -> dict[str, Any]:
    return {
        "env_id": episode.env_id,
        "seed": int(episode.seed),
        "policy": episode.policy,
        "outcome": episode.outcome,
        "extra": episode.extra,
        "initial_env_reward": float(episode.env_reward[0]),
        "initial_success": bool(episode.success[0]),
    }


def _write_sidecar(
    root: Path, store: EpisodeStore, entries: list[dict[str, Any]], *, repo_id: str, fps: int
) -> None:
    export = collect_provenance(env_id=store.env_id, event="export_lerobot", repo_id=repo_id)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "env_id": store.env_id,
        "views": list(store.views),
        "fps": fps,
        "episodes": entries,
        "provenance": [*store.provenance, export],
    }
    (root / SIDECAR).write_text(json.dumps(sidecar, indent=1))


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class _Layout:
    """Where our store's arrays live in a LeRobot dataset's features."""

    views: tuple[str, ...]
    image_size: tuple[int, int]
    state_dim: int
    action_dim: int
    video_keys: frozenset[str]


def import_lerobot(
    root: str | Path,
    repo_id: str,
    url: StoreLike,
    env_id: str | None = None,
    *,
    overwrite: bool = False,
) -> EpisodeStore:
    """Read a local LeRobotDataset (v3) into a new episode store.

    Args:
        root: the LeRobotDataset folder (with ``meta/info.json``); nothing is downloaded.
        repo_id: the dataset's name.
        url: where to create the store (see :meth:`EpisodeStore.create`).
        env_id: the store's environment id; defaults to the one :func:`export_lerobot`
            recorded, and is required for datasets from elsewhere.
        overwrite: replace an existing episode store at ``url``.

    Returns:
        The new store, open for appending.

    Raises:
        StoreError: ``root`` holds no LeRobotDataset, its features do not fit the
            store (no images, views of different sizes, no state or action), or
            ``env_id`` is needed and missing.
        ImportError: the lerobot extra is not installed.
    """
    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise StoreError(
            f"no LeRobotDataset at {root} (meta/info.json is missing); pass its root folder"
        )
    dataset_class = _lerobot_dataset_class()
    with _suppress_progress_bars():
        dataset = dataset_class(repo_id, root=root)
    sidecar = _read_sidecar(root)
    layout = _layout(dataset.meta.features, root)
    env = env_id or sidecar.get("env_id")
    if not env:
        raise StoreError(f"{root} was not exported by robo; pass env_id= to import_lerobot")
    store = EpisodeStore.create(
        url,
        views=layout.views,
        image_size=layout.image_size,
        env_id=env,
        state_dim=layout.state_dim,
        action_dim=layout.action_dim,
        overwrite=overwrite,
    )
    for record in sidecar.get("provenance", []):
        store.add_provenance(record)
    store.add_provenance(collect_provenance(env_id=env, event="import_lerobot", repo_id=repo_id))
    entries = sidecar.get("episodes", [])
    with _suppress_progress_bars():
        for index in range(dataset.meta.total_episodes):
            entry = entries[index] if index < len(entries) else None
            store.append_episode(_read_episode(dataset, layout, index, entry, env))
    return store


def _read_sidecar(root: Path) -> dict[str, Any]:
    path = root / SIDECAR
    if not path.is_file():
        return {}
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"{path} is not valid JSON ({exc}); delete it to import without it"
        ) from None
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise StoreError(
            f"{path} has format {sidecar.get('format')!r}, expected {SIDECAR_FORMAT!r}"
        )
    return sidecar


def _image_hw(feature: dict[str, Any]) -> tuple[int, int]:
    shape, names = tuple(feature["shape"]), list(feature.get("names") or [])
    if names[:1] == ["channels"]:  # (C, H, W)
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def _layout(features: dict[str, dict[str, Any]], root: Path) -> _Layout:
    images = {
        key: ft
        for key, ft in features.items()
        if key.startswith(IMAGE_PREFIX) and ft["dtype"] in ("image", "video")
    }
    if not images:
        raise StoreError(f"{root} has no '{IMAGE_PREFIX}<view>' image or video features to import")
    sizes = {key: _image_hw(ft) for key, ft in images.items()}
    if len(set(sizes.values())) != 1:
        raise StoreError(
            f"{root}: views have different sizes {sizes}; the store needs one image size"
        )
    for key in ("observation.state", "action"):
        if key not in features or len(features[key]["shape"]) != 1:
            raise StoreError(f"{root} has no 1-d '{key}' feature; the store needs one")
    return _Layout(
        views=tuple(key[len(IMAGE_PREFIX) :] for key in images),
        image_size=next(iter(sizes.values())),
        state_dim=int(features["observation.state"]["shape"][0]),
        action_dim=int(features["action"]["shape"][0]),
        video_keys=frozenset(key for key, ft in images.items() if ft["dtype"] == "video"),
    )


def _read_frames(
    dataset: LeRobotDataset, layout: _Layout, rows: range, columns: dict
) -> np.ndarray:
    """``(T, V, H, W, 3)`` uint8: image columns as stored, video frames decoded by LeRobot."""
    items = [dataset[i] for i in rows] if layout.video_keys else []
    per_view = []
    for view in layout.views:
        key = f"{IMAGE_PREFIX}{view}"
        if key in layout.video_keys:
            decoded = np.stack([item[key].numpy() for item in items])  # (T, 3, H, W) in [0, 1]
            per_view.append(np.rint(decoded.transpose(0, 2, 3, 1) * 255).astype(np.uint8))
        else:
            per_view.append(np.asarray(columns[key], dtype=np.uint8))
    return np.stack(per_view, axis=1)


def _read_episode(
    dataset: LeRobotDataset, layout: _Layout, index: int, entry: dict[str, Any] | None, env_id: str
) -> Episode:
    info = dataset.meta.episodes[index]
    rows = range(int(info["dataset_from_index"]), int(info["dataset_to_index"]))
    columns = dataset.hf_dataset.with_format("numpy")[rows.start : rows.stop]
    length = len(rows)
    next_reward = _column(columns, "next.reward", length, 0.0).astype(np.float32)
    next_success = _column(columns, "next.success", length, False).astype(bool)
    initial = entry or {"initial_env_reward": 0.0, "initial_success": False}
    success = np.append(bool(initial["initial_success"]), next_success[:-1])
    progress = _column(columns, "privileged_progress", length, np.nan).astype(np.float32)
    tasks = {int(i): str(task) for task, i in dataset.meta.tasks["task_index"].items()}
    if entry is None:
        entry = _foreign_entry(dataset.repo_id, index, next_reward, next_success, success, progress)
    return Episode(
        frames=_read_frames(dataset, layout, rows, columns),
        states=np.asarray(columns["observation.state"], dtype=np.float32),
        actions=np.asarray(columns["action"], dtype=np.float32),
        env_reward=np.append(np.float32(initial["initial_env_reward"]), next_reward[:-1]),
        success=success,
        stage=_column(columns, "stage", length, -1).astype(np.int16),
        privileged_progress=progress,
        task=tasks[int(columns["task_index"][0])],
        env_id=env_id,
        seed=int(entry["seed"]),
        policy=str(entry["policy"]),
        outcome=entry["outcome"],
        extra=dict(entry["extra"]),
    )


def _column(columns: dict[str, Any], name: str, length: int, default: Any) -> np.ndarray:
    if name in columns:
        return np.asarray(columns[name]).reshape(length)
    return np.full(length, default)


def _foreign_entry(
    repo_id: str,
    index: int,
    next_reward: np.ndarray,
    next_success: np.ndarray,
    success: np.ndarray,
    progress: np.ndarray,
) -> dict[str, Any]:
    """Metadata for an episode of a dataset robo did not write (see the module docstring)."""
    if success.any() or next_success.any():
        outcome = "success"
    elif np.isfinite(progress[-1]) and progress[-1] >= PARTIAL_PROGRESS:
        outcome = "partial"
    else:
        outcome = "failure"
    extra = {
        "source": "lerobot",
        "repo_id": repo_id,
        "episode_index": index,
        "final_next_reward": float(next_reward[-1]),
        "final_next_success": bool(next_success[-1]),
    }
    return {"seed": -1, "policy": "unknown", "outcome": outcome, "extra": extra}
