"""LeRobotDataset v3 export and re-import of the episode store (needs the lerobot extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robo.store import EpisodeStore, StoreError
from tests.robo.test_store import assert_same, make_episode, new_store

pytestmark = pytest.mark.lerobot
pytest.importorskip("lerobot")
# Import LeRobotDataset (and with it torch._dynamo -> triton) at collection, before any
# test renders with MuJoCo: triton's bundled LLVM segfaults when loaded after Mesa's.
pytest.importorskip("lerobot.datasets.lerobot_dataset", reason="lerobot extra incomplete")

from robo.lerobot_io import SIDECAR, export_lerobot, import_lerobot  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def source(tmp_path: Path) -> tuple[EpisodeStore, list]:
    store = new_store(tmp_path / "source.zarr")
    episodes = [make_episode(length, i) for i, length in enumerate((6, 1, 4))]
    episodes[0].success[0] = True  # row 0 has no next.* slot: must survive via the sidecar
    episodes[0].privileged_progress[2] = np.nan
    for episode in episodes:
        store.append_episode(episode)
    return store, episodes


def test_export_then_import_round_trip(tmp_path: Path, source) -> None:
    store, episodes = source
    root = export_lerobot(store, tmp_path / "lerobot", "local/pick-cube", fps=10)

    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 3 and info["total_frames"] == 11 and info["fps"] == 10
    assert {"observation.images.front", "observation.images.wrist", "next.reward"} <= set(
        info["features"]
    )
    assert info["features"]["observation.images.front"]["dtype"] == "image"

    back = import_lerobot(root, "local/pick-cube", tmp_path / "back.zarr")
    assert back.views == store.views and back.image_size == store.image_size
    assert len(back) == 3
    for got, want in zip(back, episodes, strict=True):
        assert_same(got, want)
    events = [record.get("event") for record in back.provenance]
    assert events == ["create", "create", "export_lerobot", "import_lerobot"]


def test_lerobot_semantics_of_next_columns(tmp_path: Path, source) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    store, episodes = source
    root = export_lerobot(store, tmp_path / "lr", "local/x", fps=5)
    dataset = LeRobotDataset("local/x", root=root)
    first = episodes[0]
    item = dataset[2]
    assert item["task"] == first.task
    assert float(item["next.reward"]) == pytest.approx(float(first.env_reward[3]))
    assert bool(item["next.success"]) == bool(first.success[3])
    assert not bool(item["next.done"]) and bool(dataset[5]["next.done"])
    assert int(item["stage"]) == int(first.stage[2])
    np.testing.assert_array_equal(item["action"].numpy(), first.actions[2])


def test_import_without_sidecar_needs_env_id(tmp_path: Path, source) -> None:
    store, episodes = source
    root = export_lerobot(store, tmp_path / "lr", "local/x", fps=10)
    (root / SIDECAR).unlink()
    with pytest.raises(StoreError, match="env_id"):
        import_lerobot(root, "local/x", tmp_path / "a.zarr")

    back = import_lerobot(root, "local/x", tmp_path / "b.zarr", env_id="tabletop/pick-v0")
    got = back.episode(0)
    np.testing.assert_array_equal(got.frames, episodes[0].frames)
    np.testing.assert_array_equal(got.env_reward[1:], episodes[0].env_reward[1:])
    assert got.seed == -1 and got.policy == "unknown"
    assert got.extra["source"] == "lerobot"


def test_bad_paths(tmp_path: Path, source) -> None:
    store, _ = source
    with pytest.raises(StoreError, match="no LeRobotDataset"):
        import_lerobot(tmp_path, "local/x", tmp_path / "c.zarr")
    (tmp_path / "taken").mkdir()
    with pytest.raises(StoreError, match="already exists"):
        export_lerobot(store, tmp_path / "taken", "local/x", fps=10)
