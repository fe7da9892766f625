"""Episode store: append-only, crash-safe multi-view episodes in one zarr v3 group.

On-disk layout (one zarr v3 group per dataset)::

    <url>/zarr.json                   group; attributes:
        robo_episode_store            format marker: {format_version, views, image_size,
                                      env_id, state_dim, action_dim}
        commit                        {num_episodes, num_steps}: the commit point
        provenance                    list of dicts (see :func:`collect_provenance`)
    <url>/frames                      uint8   (N, V, H, W, 3), one chunk per step, zstd
    <url>/states                      float32 (N, S)   \
    <url>/actions                     float32 (N, A)    |
    <url>/env_reward                  float32 (N,)      | flat, step-indexed,
    <url>/success                     bool    (N,)      | chunked in blocks of rows
    <url>/stage                       int16   (N,)      |
    <url>/privileged_progress         float32 (N,)     /
    <url>/episodes/{start, length, seed}                 int64  (E,)
    <url>/episodes/{task, env_id, policy, outcome, extra} string (E,), extra is JSON

Episode ``i`` occupies steps ``start[i] : start[i] + length[i]`` of the step arrays.

Crash safety: an append writes the episode's rows past the committed end (resizing
the arrays), then its row of the episode table, and only then rewrites the ``commit``
attribute, in one metadata write (atomic on local disk and object stores). Readers
trust nothing past the commit point, so a writer killed mid-episode leaves a dataset
whose complete episodes all read back; the next append overwrites the cut-off tail.
One writer at a time; any number of readers.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shlex
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import zarr
import zarr.errors
from zarr.abc.store import Store
from zarr.codecs import ZstdCodec

logger = logging.getLogger(__name__)

FORMAT_KEY = "robo_episode_store"
FORMAT_VERSION = 1
Outcome = Literal["success", "partial", "failure"]
OUTCOMES: tuple[str, ...] = ("success", "partial", "failure")
StoreLike = str | os.PathLike[str] | Store

#: Per-step arrays and their dtypes, in on-disk order.
STEP_DTYPES: dict[str, np.dtype] = {
    "frames": np.dtype(np.uint8),
    "states": np.dtype(np.float32),
    "actions": np.dtype(np.float32),
    "env_reward": np.dtype(np.float32),
    "success": np.dtype(np.bool_),
    "stage": np.dtype(np.int16),
    "privileged_progress": np.dtype(np.float32),
}
TABLE_INT_FIELDS = ("start", "length", "seed")
TABLE_STR_FIELDS = ("task", "env_id", "policy", "outcome", "extra")
ROW_BLOCK = 4096  # rows per chunk of the non-frame step arrays
TABLE_BLOCK = 1024  # rows per chunk of the episode table
PROVENANCE_PACKAGES = (
    "robo-reward",
    "mujoco",
    "gymnasium",
    "metaworld",
    "torch",
    "numpy",
    "zarr",
)

# Frames after the first success that a demonstration shows before it ends (the scripted
# expert lingers 3 steps); the reference goal frame is taken there.
GOAL_LINGER = 3


class StoreError(ValueError):
    """A user-facing problem with an episode store or an episode (one-line message)."""


class IncompleteEpisodeWarning(UserWarning):
    """An episode store holds steps past its commit point (a writer was cut off)."""


@dataclass
class Episode:
    """One recorded episode.

    Row convention: row ``t`` holds observation ``o_t`` (``frames[t]``, ``states[t]``)
    and its info (``success[t]``, ``stage[t]``, ``privileged_progress[t]``).
    ``actions[t]`` is the action taken at ``o_t`` (the last row, which has no action,
    holds zeros); ``env_reward[t]`` is the reward received on arriving at ``o_t``
    (row 0 holds 0). ``stage`` is -1 and ``privileged_progress`` NaN where unknown
    (e.g. on hardware).

    Attributes:
        frames: ``uint8 (T, V, H, W, 3)`` camera frames, views in the store's order.
        states: ``float32 (T, S)`` flat simulator or robot state.
        actions: ``float32 (T, A)``.
        env_reward: ``float32 (T,)`` the environment's own reward.
        success: ``bool (T,)`` the environment's success flag.
        stage: ``int16 (T,)`` stage index.
        privileged_progress: ``float32 (T,)`` ground-truth progress in [0, 1].
        task: the task instruction text.
        env_id: the environment id the episode was recorded in.
        seed: the reset seed.
        policy: what produced the actions, e.g. ``"expert"``, ``"noisy:0.1"``, ``"undo"``.
        outcome: ``"success"``, ``"partial"`` or ``"failure"`` (see EVALUATION.md).
        extra: any other JSON-able metadata.
    """

    frames: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    env_reward: np.ndarray
    success: np.ndarray
    stage: np.ndarray
    privileged_progress: np.ndarray
    task: str
    env_id: str
    seed: int
    policy: str
    outcome: Outcome
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.frames, np.ndarray) and self.frames.ndim == 5):
            raise StoreError(
                f"Episode.frames must be an array (T, V, H, W, 3), got {_describe(self.frames)}"
            )
        num_steps = self.frames.shape[0]
        if num_steps < 1 or self.frames.shape[-1] != 3:
            raise StoreError(
                f"Episode.frames must be (T>=1, V, H, W, 3), got shape {self.frames.shape}"
            )
        for name, dtype in STEP_DTYPES.items():
            value = getattr(self, name)
            ndim = {"frames": 5, "states": 2, "actions": 2}.get(name, 1)
            _check_step_array(name, value, dtype, ndim, num_steps)
        self._check_metadata()

    def _check_metadata(self) -> None:
        if self.outcome not in OUTCOMES:
            raise StoreError(f"Episode.outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        for name in ("task", "env_id", "policy"):
            if not isinstance(getattr(self, name), str):
                raise StoreError(
                    f"Episode.{name} must be a str, got {_describe(getattr(self, name))}"
                )
        if not self.env_id or not self.policy:
            raise StoreError("Episode.env_id and Episode.policy must be non-empty strings")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise StoreError(f"Episode.seed must be an int, got {_describe(self.seed)}")
        try:
            json.dumps(self.extra)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"Episode.extra must be a JSON-able dict: {exc}") from None

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_views(self) -> int:
        """Number of camera views ``V``."""
        return int(self.frames.shape[1])

    @property
    def goal_index(self) -> int:
        """The frame that shows the task just done, for a reference goal: ``GOAL_LINGER``
        frames after the first success (where the scripted expert's demos end), or the last
        frame where success is never flagged (e.g. a demo labelled only by its outcome).
        Demos that go on after success (``retreat``) keep the arm where the task was done."""
        if not np.any(self.success):
            return len(self) - 1
        return min(len(self) - 1, int(np.argmax(self.success)) + GOAL_LINGER)


@dataclass(frozen=True)
class EpisodeMeta:
    """Per-episode metadata, read without touching the step arrays.

    Attributes:
        index: episode index in the store.
        start: first row of the episode in the flat step arrays.
        length: number of steps ``T``.
        task, env_id, seed, policy, outcome, extra: as in :class:`Episode`.
    """

    index: int
    start: int
    length: int
    task: str
    env_id: str
    seed: int
    policy: str
    outcome: str
    extra: dict[str, Any]


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array {value.dtype} {value.shape}"
    return type(value).__name__


def _check_step_array(name: str, value: Any, dtype: np.dtype, ndim: int, num_steps: int) -> None:
    if not isinstance(value, np.ndarray):
        raise StoreError(f"Episode.{name} must be a numpy array, got {_describe(value)}")
    if value.dtype != dtype:
        raise StoreError(
            f"Episode.{name} must be {dtype}, got {value.dtype}; cast with .astype(np.{dtype})"
        )
    if value.ndim != ndim or value.shape[0] != num_steps:
        expected = f"{ndim}-d with {num_steps} rows (one per frame)"
        raise StoreError(f"Episode.{name} must be {expected}, got shape {value.shape}")


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_provenance(
    *, seed: int | None = None, env_id: str | None = None, policy: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Describe how data is being produced right now, for :meth:`EpisodeStore.add_provenance`.

    Args:
        seed: the base seed of the run, if any.
        env_id: the environment id, if any.
        policy: the policy producing the data, if any.
        **extra: any other JSON-able fields (they override the collected ones).

    Returns:
        A JSON-able dict: UTC time, command line, python and platform, the seed,
        env id and policy, and the versions of robo-reward, mujoco, gymnasium,
        metaworld, torch, numpy and zarr (None where not installed).
    """
    record: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "seed": seed,
        "env_id": env_id,
        "policy": policy,
        "versions": {name: _package_version(name) for name in PROVENANCE_PACKAGES},
    }
    record.update(extra)
    return record


def _location(url: StoreLike) -> str:
    return str(url) if not isinstance(url, Store) else repr(url)


def _fsspec_options(
    url: StoreLike, storage_options: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    # zarr refuses storage_options for local paths and Store objects
    if storage_options and isinstance(url, str) and "://" in url and not url.startswith("file://"):
        return dict(storage_options)
    return None


def _open_group(url: StoreLike, mode: str, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    """Open a zarr group, mapping "nothing there" to a one-line StoreError."""
    options = _fsspec_options(url, storage_options)
    try:
        return zarr.open_group(store=url, mode=mode, storage_options=options)  # type: ignore[arg-type]
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, NotADirectoryError):
        raise StoreError(
            f"no episode store at {_location(url)}: nothing readable there; "
            "create one with EpisodeStore.create(url, ...)"
        ) from None
    except zarr.errors.ContainsArrayError:
        raise StoreError(
            f"{_location(url)} is a zarr array, not an episode store; point at the dataset group"
        ) from None


class EpisodeStore:
    """An append-only, crash-safe store of multi-view episodes (see the module docstring).

    Create with :meth:`create`, open with :meth:`open`. Indexing, ``len`` and iteration
    see only committed (complete) episodes.
    """

    def __init__(self, group: zarr.Group, location: str, writable: bool) -> None:
        """Wrap an opened group; use :meth:`create` or :meth:`open` instead."""
        self._group = group
        self._location = location
        self._writable = writable
        header = _read_header(group, location)
        self._views: tuple[str, ...] = tuple(header["views"])
        self._image_size: tuple[int, int] = (
            int(header["image_size"][0]),
            int(header["image_size"][1]),
        )
        self._env_id: str = header["env_id"]
        self._state_dim: int = int(header["state_dim"])
        self._action_dim: int = int(header["action_dim"])
        commit = group.attrs.get("commit", {})
        self._num_episodes = int(commit.get("num_episodes", 0))
        self._num_steps = int(commit.get("num_steps", 0))
        self._arrays = _load_arrays(group, location)
        self._table: dict[str, np.ndarray] | None = None
        self._warn_uncommitted()

    # ----------------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        url: StoreLike,
        *,
        views: tuple[str, ...],
        image_size: tuple[int, int],
        env_id: str,
        state_dim: int,
        action_dim: int,
        overwrite: bool = False,
        compression_level: int = 3,
        storage_options: Mapping[str, Any] | None = None,
    ) -> EpisodeStore:
        """Create an empty episode store.

        Args:
            url: a local path, an fsspec URL (``memory://``, ``s3://``...) or a zarr Store.
            views: camera names, in the order of the frames' view axis.
            image_size: ``(H, W)`` of every frame.
            env_id: the environment every episode comes from.
            state_dim: ``S``, the width of ``states``.
            action_dim: ``A``, the width of ``actions``.
            overwrite: replace an existing episode store at ``url``. Locations holding
                anything else are never overwritten.
            compression_level: zstd level of the frames (higher: smaller, slower).
            storage_options: fsspec options for remote URLs.

        Returns:
            The store, opened for appending; a first provenance record is added.

        Raises:
            StoreError: bad arguments, or ``url`` already holds data.
        """
        views = tuple(views)
        _check_layout(views, image_size, env_id, state_dim, action_dim)
        group = _create_group(url, overwrite, storage_options)
        header = {
            "format_version": FORMAT_VERSION,
            "views": list(views),
            "image_size": [int(image_size[0]), int(image_size[1])],
            "env_id": env_id,
            "state_dim": int(state_dim),
            "action_dim": int(action_dim),
        }
        _create_arrays(group, header, compression_level)
        group.update_attributes(
            {FORMAT_KEY: header, "commit": {"num_episodes": 0, "num_steps": 0}, "provenance": []}
        )
        store = cls(group, _location(url), writable=True)
        store.add_provenance(collect_provenance(env_id=env_id, event="create"))
        return store

    @classmethod
    def open(
        cls,
        url: StoreLike,
        mode: Literal["r", "a"] = "r",
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> EpisodeStore:
        """Open an existing episode store.

        Args:
            url: a local path, an fsspec URL or a zarr Store.
            mode: ``"r"`` to read, ``"a"`` to read and append.
            storage_options: fsspec options for remote URLs.

        Raises:
            StoreError: ``url`` is not an episode store, or ``mode`` is invalid.
        """
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' (read) or 'a' (append), got {mode!r}")
        group = _open_group(url, "r" if mode == "r" else "r+", storage_options)
        return cls(group, _location(url), writable=mode == "a")

    # ----------------------------------------------------------------- properties

    @property
    def views(self) -> tuple[str, ...]:
        """Camera names, in the order of the frames' view axis."""
        return self._views

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of every frame."""
        return self._image_size

    @property
    def env_id(self) -> str:
        """The environment id shared by every episode."""
        return self._env_id

    @property
    def state_dim(self) -> int:
        """Width ``S`` of ``states``."""
        return self._state_dim

    @property
    def action_dim(self) -> int:
        """Width ``A`` of ``actions``."""
        return self._action_dim

    @property
    def num_steps(self) -> int:
        """Total steps over all committed episodes."""
        return self._num_steps

    @property
    def provenance(self) -> list[dict[str, Any]]:
        """Provenance records, oldest first."""
        return list(self._group.attrs.get("provenance", []))

    def __len__(self) -> int:
        return self._num_episodes

    def __iter__(self) -> Iterator[Episode]:
        for index in range(len(self)):
            yield self.episode(index)

    def __repr__(self) -> str:
        return (
            f"EpisodeStore({self._location!r}, episodes={len(self)}, steps={self._num_steps}, "
            f"views={self._views}, image_size={self._image_size}, env_id={self._env_id!r})"
        )

    # ----------------------------------------------------------------- reading

    def episode_meta(self, index: int) -> EpisodeMeta:
        """Metadata of episode ``index`` (negative counts from the end), no step data read."""
        index = self._check_index(index)
        table = self._load_table()
        return EpisodeMeta(
            index=index,
            start=int(table["start"][index]),
            length=int(table["length"][index]),
            task=str(table["task"][index]),
            env_id=str(table["env_id"][index]),
            seed=int(table["seed"][index]),
            policy=str(table["policy"][index]),
            outcome=str(table["outcome"][index]),
            extra=json.loads(str(table["extra"][index])),
        )

    def episode(self, index: int) -> Episode:
        """Read episode ``index`` (negative counts from the end) in full."""
        meta = self.episode_meta(index)
        rows = slice(meta.start, meta.start + meta.length)
        steps = {name: np.asarray(self._arrays[name][rows]) for name in STEP_DTYPES}
        return Episode(
            **steps,
            task=meta.task,
            env_id=meta.env_id,
            seed=meta.seed,
            policy=meta.policy,
            outcome=meta.outcome,  # type: ignore[arg-type]
            extra=meta.extra,
        )

    def sample_frames(
        self, n: int, rng: np.random.Generator | int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample ``n`` steps uniformly (with replacement) and read only their frames.

        Args:
            n: number of frames to sample.
            rng: a numpy Generator or a seed.

        Returns:
            ``(episode_idx, step_idx, frames)``: int64 ``(n,)`` episode indices, int64
            ``(n,)`` step indices within those episodes, uint8 ``(n, V, H, W, 3)``.

        Raises:
            StoreError: the store has no episodes, or ``n < 1``.
        """
        if self._num_steps == 0:
            raise StoreError(f"cannot sample frames from {self._location}: it has no episodes yet")
        if int(n) < 1:
            raise StoreError(f"sample_frames needs n >= 1, got {n}")
        generator = np.random.default_rng(rng)
        flat = generator.integers(0, self._num_steps, size=int(n))
        starts = self._load_table()["start"]
        episode_idx = np.searchsorted(starts, flat, side="right") - 1
        step_idx = flat - starts[episode_idx]
        order = np.argsort(flat, kind="stable")  # sorted reads; zarr fetches one chunk per step
        frames = np.empty((len(flat), *self._arrays["frames"].shape[1:]), dtype=np.uint8)
        frames[order] = self._arrays["frames"].oindex[flat[order]]
        return episode_idx.astype(np.int64), step_idx.astype(np.int64), frames

    # ----------------------------------------------------------------- writing

    def append_episode(self, episode: Episode) -> int:
        """Append a complete episode; it becomes visible only once fully written.

        Any uncommitted tail left by a writer that was cut off is discarded first.

        Args:
            episode: the episode; its views, image size, env id and state/action
                widths must match the store.

        Returns:
            The new episode's index.

        Raises:
            StoreError: the store is read-only or the episode does not match it.
        """
        self._require_writable("append episodes")
        self._check_compatible(episode)
        start, index = self._num_steps, self._num_episodes
        end = start + len(episode)
        discarded = max(array.shape[0] for array in self._step_arrays()) - start
        if discarded > 0:
            logger.info("%s: discarding %d uncommitted steps", self._location, discarded)
        for name in STEP_DTYPES:
            array = self._arrays[name]
            array.resize((end, *array.shape[1:]))
            array[start:end] = getattr(episode, name)
        row = self._table_row(episode, start)
        for name, value in row.items():
            array = self._arrays[f"episodes/{name}"]
            array.resize((index + 1,))
            array[index] = value
        self._group.update_attributes({"commit": {"num_episodes": index + 1, "num_steps": end}})
        self._num_episodes, self._num_steps = index + 1, end
        self._table = None  # reloaded on demand
        return index

    def add_provenance(self, record: Mapping[str, Any]) -> None:
        """Append one JSON-able provenance record (see :func:`collect_provenance`).

        Raises:
            StoreError: the store is read-only or the record is not JSON-able.
        """
        self._require_writable("add provenance")
        try:
            record = json.loads(json.dumps(dict(record)))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"provenance record must be JSON-able: {exc}") from None
        self._group.update_attributes({"provenance": [*self.provenance, record]})

    # ----------------------------------------------------------------- internals

    def _step_arrays(self) -> list[zarr.Array]:
        return [self._arrays[name] for name in STEP_DTYPES]

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(
                f"episode index {index} out of range for a store of {len(self)} episodes"
            )
        return index % len(self)

    def _load_table(self) -> dict[str, np.ndarray]:
        if self._table is None:
            count = self._num_episodes
            self._table = {
                name: np.asarray(self._arrays[f"episodes/{name}"][:count])
                for name in (*TABLE_INT_FIELDS, *TABLE_STR_FIELDS)
            }
        return self._table

    def _table_row(self, episode: Episode, start: int) -> dict[str, Any]:
        return {
            "start": start,
            "length": len(episode),
            "seed": int(episode.seed),
            "task": episode.task,
            "env_id": episode.env_id,
            "policy": episode.policy,
            "outcome": episode.outcome,
            "extra": json.dumps(episode.extra, sort_keys=True),
        }

    def _require_writable(self, what: str) -> None:
        if not self._writable:
            raise StoreError(
                f"cannot {what}: {self._location} is open read-only; use EpisodeStore.open(url, mode='a')"
            )

    def _check_compatible(self, episode: Episode) -> None:
        if not isinstance(episode, Episode):
            raise StoreError(f"append_episode takes an Episode, got {_describe(episode)}")
        got = episode.frames.shape[1:4]
        want = (len(self._views), *self._image_size)
        if got != want:
            raise StoreError(
                f"episode frames are (V, H, W) = {got} but the store holds {want} "
                f"(views {self._views}); render with the store's cameras and image size"
            )
        if episode.env_id != self._env_id:
            raise StoreError(
                f"episode env_id {episode.env_id!r} differs from the store's {self._env_id!r}; "
                "use one store per environment"
            )
        widths = (episode.states.shape[1], episode.actions.shape[1])
        if widths != (self._state_dim, self._action_dim):
            raise StoreError(
                f"episode (state_dim, action_dim) = {widths} but the store holds "
                f"{(self._state_dim, self._action_dim)}"
            )

    def _warn_uncommitted(self) -> None:
        extra_steps = max(array.shape[0] for array in self._step_arrays()) - self._num_steps
        if extra_steps > 0:
            warnings.warn(
                f"{self._location}: found {extra_steps} uncommitted steps of a cut-off episode "
                f"after {self._num_episodes} complete episodes; they are ignored and will be "
                "discarded on the next append",
                IncompleteEpisodeWarning,
                stacklevel=3,
            )


def _check_layout(
    views: tuple[str, ...],
    image_size: tuple[int, int],
    env_id: str,
    state_dim: int,
    action_dim: int,
) -> None:
    if (
        not views
        or not all(isinstance(v, str) and v for v in views)
        or len(set(views)) != len(views)
    ):
        raise StoreError(f"views must be distinct non-empty camera names, got {views!r}")
    if len(image_size) != 2 or min(int(s) for s in image_size) < 1:
        raise StoreError(f"image_size must be (H, W) with positive sides, got {image_size!r}")
    if not isinstance(env_id, str) or not env_id:
        raise StoreError(f"env_id must be a non-empty string, got {env_id!r}")
    if min(int(state_dim), int(action_dim)) < 1:
        raise StoreError(
            f"state_dim and action_dim must be positive, got {state_dim}, {action_dim}"
        )


def _create_group(
    url: StoreLike, overwrite: bool, storage_options: Mapping[str, Any] | None
) -> zarr.Group:
    """Create the dataset group; only an existing episode store may be overwritten."""
    exists = False
    try:
        existing = _open_group(url, "r", storage_options)
        exists = FORMAT_KEY in existing.attrs
    except StoreError:
        pass
    if exists and not overwrite:
        raise StoreError(
            f"an episode store already exists at {_location(url)}; pass overwrite=True to replace "
            "it or EpisodeStore.open(url, mode='a') to append"
        )
    options = _fsspec_options(url, storage_options)
    try:
        return zarr.open_group(store=url, mode="w" if exists else "w-", storage_options=options)  # type: ignore[arg-type]
    except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
        raise StoreError(
            f"{_location(url)} already holds data that is not an episode store; "
            "choose an empty or new location"
        ) from None
    except (NotADirectoryError, FileNotFoundError) as exc:
        raise StoreError(f"cannot create an episode store at {_location(url)}: {exc}") from None


def _create_arrays(group: zarr.Group, header: dict[str, Any], compression_level: int) -> None:
    num_views, (height, width) = len(header["views"]), header["image_size"]
    widths = {"states": (header["state_dim"],), "actions": (header["action_dim"],)}
    flat_keys = {"name": "default", "separator": "."}  # one flat folder, not a dir per step
    group.create_array(
        "frames",
        shape=(0, num_views, height, width, 3),
        chunks=(1, num_views, height, width, 3),
        dtype=np.uint8,
        compressors=ZstdCodec(level=compression_level),
        chunk_key_encoding=flat_keys,
    )
    for name, dtype in STEP_DTYPES.items():
        if name != "frames":
            tail = widths.get(name, ())
            group.create_array(name, shape=(0, *tail), chunks=(ROW_BLOCK, *tail), dtype=dtype)
    table = group.create_group("episodes")
    for name in TABLE_INT_FIELDS:
        table.create_array(name, shape=(0,), chunks=(TABLE_BLOCK,), dtype=np.int64)
    for name in TABLE_STR_FIELDS:
        table.create_array(name, shape=(0,), chunks=(TABLE_BLOCK,), dtype=str)


def _read_header(group: zarr.Group, location: str) -> dict[str, Any]:
    header = group.attrs.get(FORMAT_KEY)
    if not isinstance(header, dict):
        raise StoreError(
            f"{location} is a zarr group but not an episode store (no '{FORMAT_KEY}' marker); "
            "point at a dataset made by EpisodeStore.create"
        )
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{location} has episode-store format version {version}, this code reads "
            f"{FORMAT_VERSION}; upgrade robo-reward or convert the dataset"
        )
    return header


def _load_arrays(group: zarr.Group, location: str) -> dict[str, zarr.Array]:
    names = [*STEP_DTYPES, *(f"episodes/{n}" for n in (*TABLE_INT_FIELDS, *TABLE_STR_FIELDS))]
    arrays: dict[str, zarr.Array] = {}
    for name in names:
        try:
            node = group[name]
        except KeyError:
            node = None
        if not isinstance(node, zarr.Array):
            raise StoreError(
                f"{location} is damaged: array '{name}' is missing; restore it from a backup"
            )
        arrays[name] = node
    return arrays
