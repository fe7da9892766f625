"""Tests of the zarr episode store: round trips, appends, sampling, provenance, bad input, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from robo.store import (
    STEP_DTYPES,
    Episode,
    EpisodeStore,
    IncompleteEpisodeWarning,
    StoreError,
    collect_provenance,
)

VIEWS = ("front", "wrist")
SIZE = (16, 16)
STATE_DIM, ACTION_DIM = 5, 4
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_episode(length: int, index: int = 0, **overrides) -> Episode:
    """A small random episode number ``index``, matching :func:`new_store`'s layout."""
    rng = np.random.default_rng(index)
    fields = dict(
        frames=rng.integers(0, 256, (length, len(VIEWS), *SIZE, 3), dtype=np.uint8),
        states=rng.standard_normal((length, STATE_DIM), dtype=np.float32),
        actions=rng.standard_normal((length, ACTION_DIM), dtype=np.float32),
        env_reward=rng.random(length, dtype=np.float32),
        success=rng.random(length) > 0.7,
        stage=rng.integers(-1, 3, length).astype(np.int16),
        privileged_progress=rng.random(length, dtype=np.float32),
        task=f"pick the cube {index}",
        env_id="tabletop/pick-v0",
        seed=1000 + index,
        policy=["expert", "noisy:0.1", "undo"][index % 3],
        outcome=["success", "partial", "failure"][index % 3],
        extra={"index": index, "tags": ["a", "b"]},
    )
    fields.update(overrides)
    return Episode(**fields)


def new_store(url, **overrides) -> EpisodeStore:
    kwargs = dict(
        views=VIEWS,
        image_size=SIZE,
        env_id="tabletop/pick-v0",
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
    )
    kwargs.update(overrides)
    return EpisodeStore.create(url, **kwargs)


def assert_same(got: Episode, want: Episode) -> None:
    for name, dtype in STEP_DTYPES.items():
        value = getattr(got, name)
        assert value.dtype == dtype, name
        np.testing.assert_array_equal(value, getattr(want, name), err_msg=name)
    for name in ("task", "env_id", "seed", "policy", "outcome", "extra"):
        assert getattr(got, name) == getattr(want, name), name


def test_round_trip_local(tmp_path: Path) -> None:
    url = tmp_path / "data.zarr"
    episodes = [make_episode(length, i) for i, length in enumerate((7, 1, 12))]
    store = new_store(url)
    assert [store.append_episode(ep) for ep in episodes] == [0, 1, 2]

    reread = EpisodeStore.open(url)
    assert len(reread) == 3 and reread.num_steps == 20
    assert reread.views == VIEWS and reread.image_size == SIZE
    assert (reread.state_dim, reread.action_dim) == (STATE_DIM, ACTION_DIM)
    for got, want in zip(reread, episodes, strict=True):
        assert_same(got, want)
    assert_same(reread.episode(-1), episodes[2])
    meta = reread.episode_meta(2)
    assert (meta.index, meta.start, meta.length, meta.seed) == (2, 8, 12, 1002)
    assert (meta.policy, meta.outcome, meta.extra) == ("undo", "failure", episodes[2].extra)
    with pytest.raises(IndexError):
        reread.episode(3)


def test_round_trip_memory_url() -> None:
    url = f"memory://robo-test-{os.getpid()}-{time.monotonic_ns()}"
    episodes = [make_episode(5, i) for i in range(2)]
    store = new_store(url)
    for ep in episodes:
        store.append_episode(ep)
    reread = EpisodeStore.open(url)
    assert len(reread) == 2
    for got, want in zip(reread, episodes, strict=True):
        assert_same(got, want)


def test_append_across_reopen(tmp_path: Path) -> None:
    url = tmp_path / "data.zarr"
    first, second, third = (make_episode(4 + i, i) for i in range(3))
    new_store(url).append_episode(first)

    appender = EpisodeStore.open(url, mode="a")
    assert len(appender) == 1
    assert appender.append_episode(second) == 1
    assert EpisodeStore.open(str(url), mode="a").append_episode(third) == 2

    reader = EpisodeStore.open(url)
    assert len(reader) == 3 and reader.num_steps == 4 + 5 + 6
    for got, want in zip(reader, (first, second, third), strict=True):
        assert_same(got, want)
    with pytest.raises(StoreError, match="read-only"):
        reader.append_episode(first)


def test_sample_frames(tmp_path: Path) -> None:
    episodes = [make_episode(length, i) for i, length in enumerate((3, 9, 5))]
    store = new_store(tmp_path / "data.zarr")
    for ep in episodes:
        store.append_episode(ep)

    episode_idx, step_idx, frames = store.sample_frames(40, np.random.default_rng(0))
    assert episode_idx.shape == step_idx.shape == (40,)
    assert frames.shape == (40, len(VIEWS), *SIZE, 3) and frames.dtype == np.uint8
    assert set(episode_idx.tolist()) == {0, 1, 2}  # 40 draws over 17 steps hit every episode
    for e, s, frame in zip(episode_idx, step_idx, frames, strict=True):
        assert 0 <= s < len(episodes[e])
        np.testing.assert_array_equal(frame, episodes[e].frames[s])
    again = store.sample_frames(40, 0)
    np.testing.assert_array_equal(again[0], store.sample_frames(40, 0)[0])


def test_sample_frames_empty_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no episodes"):
        new_store(tmp_path / "data.zarr").sample_frames(1)


def test_provenance(tmp_path: Path) -> None:
    url = tmp_path / "data.zarr"
    store = new_store(url)
    store.add_provenance(
        collect_provenance(seed=7, env_id="tabletop/pick-v0", policy="expert", run="r1")
    )

    records = EpisodeStore.open(url).provenance
    assert [r.get("event") for r in records] == ["create", None]
    record = records[1]
    assert (record["seed"], record["env_id"], record["policy"], record["run"]) == (
        7,
        "tabletop/pick-v0",
        "expert",
        "r1",
    )
    assert record["time"] and record["command"]
    versions = record["versions"]
    assert set(versions) >= {
        "robo-reward",
        "mujoco",
        "gymnasium",
        "metaworld",
        "torch",
        "numpy",
        "zarr",
    }
    assert versions["zarr"] == zarr.__version__ and versions["numpy"] == np.__version__
    with pytest.raises(StoreError, match="JSON"):
        store.add_provenance({"bad": object()})


def one_line_error(call, match: str) -> None:
    with pytest.raises(StoreError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_open_rejects_non_datasets(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    random_file = tmp_path / "notes.txt"
    random_file.write_text("hello")
    zarr.open_group(store=tmp_path / "plain", mode="w").attrs["x"] = 1
    zarr.create_array(store=tmp_path / "array", shape=(2,), dtype="i4")

    one_line_error(lambda: EpisodeStore.open(empty), "no episode store")
    one_line_error(lambda: EpisodeStore.open(random_file), "no episode store")
    one_line_error(lambda: EpisodeStore.open(tmp_path / "missing"), "no episode store")
    one_line_error(lambda: EpisodeStore.open(tmp_path / "plain"), "not an episode store")
    one_line_error(lambda: EpisodeStore.open(tmp_path / "array"), "zarr array")
    one_line_error(lambda: EpisodeStore.open(empty, mode="w"), "mode")  # type: ignore[arg-type]


def test_create_refuses_existing_data(tmp_path: Path) -> None:
    url = tmp_path / "data.zarr"
    new_store(url).append_episode(make_episode(3))
    one_line_error(lambda: new_store(url), "already exists.*overwrite=True")
    assert len(EpisodeStore.open(url)) == 1

    assert len(new_store(url, overwrite=True)) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    one_line_error(lambda: new_store(other, overwrite=True), "not an episode store")
    assert (other / "keep.txt").read_text() == "precious"
    one_line_error(lambda: new_store(tmp_path / "x", views=()), "views")
    one_line_error(lambda: new_store(tmp_path / "y", image_size=(0, 4)), "image_size")


def test_append_rejects_mismatched_episodes(tmp_path: Path) -> None:
    store = new_store(tmp_path / "data.zarr")
    rng = np.random.default_rng(0)
    one_view = rng.integers(0, 256, (3, 1, *SIZE, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (3, 2, 8, 8, 3), dtype=np.uint8)
    wide = np.zeros((3, STATE_DIM + 1), np.float32)
    one_line_error(lambda: store.append_episode(make_episode(3, frames=one_view)), "views")
    one_line_error(lambda: store.append_episode(make_episode(3, frames=small)), "image size")
    one_line_error(lambda: store.append_episode(make_episode(3, env_id="other-v0")), "env_id")
    one_line_error(lambda: store.append_episode(make_episode(3, states=wide)), "state_dim")
    assert len(store) == 0 and store.num_steps == 0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"frames": np.zeros((3, 2, 16, 16, 3), np.float32)}, "frames must be uint8"),
        ({"frames": np.zeros((3, 16, 16, 3), np.uint8)}, r"frames must be an array \(T, V"),
        ({"states": np.zeros((3, STATE_DIM), np.float64)}, "astype"),
        ({"actions": np.zeros((2, ACTION_DIM), np.float32)}, "actions must be 2-d with 3 rows"),
        ({"success": np.zeros(3, np.int8)}, "success must be bool"),
        ({"outcome": "win"}, "outcome"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"extra": {"x": object()}}, "JSON"),
    ],
)
def test_episode_validation(overrides: dict, match: str) -> None:
    one_line_error(lambda: make_episode(3, **overrides), match)


CRASH_SCRIPT = """
import asyncio, sys
from pathlib import Path
from zarr.storage import LocalStore
from tests.robo.test_store import make_episode
from robo.store import EpisodeStore

root, ready, first_len, second_len = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

class StallingStore(LocalStore):
    # Writes frame chunks of the second episode slowly, then stalls, so the kill lands mid-append.
    second_episode_chunks = 0

    async def set(self, key, value):
        if key.startswith("frames/c.") and int(key.split(".")[1]) >= first_len:
            StallingStore.second_episode_chunks += 1
            if StallingStore.second_episode_chunks > 5:
                ready.touch()
                await asyncio.sleep(3600)
        await super().set(key, value)

store = EpisodeStore.open(StallingStore(root), mode="a")
store.append_episode(make_episode(first_len, index=0))
store.append_episode(make_episode(second_len, index=1))
print("second episode committed: the kill came too late", flush=True)
"""


def test_writer_killed_mid_episode(tmp_path: Path) -> None:
    url, ready = tmp_path / "data.zarr", tmp_path / "ready"
    new_store(url)
    script = tmp_path / "writer.py"
    script.write_text(CRASH_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    args = [sys.executable, str(script), str(url), str(ready), "6", "40"]
    proc = subprocess.Popen(
        args, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 20
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=10)
    assert ready.exists() and proc.returncode == -signal.SIGKILL, (out + err).decode()[-2000:]

    with pytest.warns(IncompleteEpisodeWarning, match="found 40 uncommitted steps") as caught:
        store = EpisodeStore.open(url, mode="a")
    assert "\n" not in str(caught[0].message)
    assert len(store) == 1 and store.num_steps == 6
    assert_same(store.episode(0), make_episode(6, index=0))

    store.append_episode(make_episode(9, index=2))  # shorter than the cut-off tail
    with warnings.catch_warnings():
        warnings.simplefilter("error", IncompleteEpisodeWarning)
        reopened = EpisodeStore.open(url)
    assert len(reopened) == 2 and reopened.num_steps == 15
    assert_same(reopened.episode(0), make_episode(6, index=0))
    assert_same(reopened.episode(1), make_episode(9, index=2))
