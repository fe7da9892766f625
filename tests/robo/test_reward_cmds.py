"""`robo reward train|adapt|eval` end to end with a tiny model, resume, DDP on gloo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.grm.model import GRM
from robo.cli import main
from robo.store import EpisodeStore
from tests.tiny import TINY_GRM

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/grm/tiny.yaml")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("reward")
    pp, rollouts = str(base / "pp"), str(base / "pp-roll")
    common = ["--env", "tabletop/pick-place-v0", "--size", "32"]
    assert main(["collect", *common, "--episodes", "4", "--out", pp]) == 0
    assert (
        main(
            [
                "collect",
                *common,
                "--episodes",
                "2",
                "--policy",
                "near-miss",
                "--seed",
                "100",
                "--out",
                pp,
            ]
        )
        == 0
    )
    assert main(["collect", *common, "--episodes", "2", "--seed", "500", "--out", rollouts]) == 0
    for k, policy in enumerate(("undo", "half", "random-freeze")):
        assert (
            main(
                [
                    "collect",
                    *common,
                    "--episodes",
                    "1",
                    "--policy",
                    policy,
                    "--seed",
                    str(600 + k),
                    "--out",
                    rollouts,
                ]
            )
            == 0
        )
    return base, pp, rollouts


def test_train_records_what_it_saw_and_resumes(stores, tmp_path):
    _, pp, _ = stores
    out = tmp_path / "run"
    assert (
        main(
            ["reward", "train", "--data", pp, "--config", TINY, "--out", str(out), "--steps", "10"]
        )
        == 0
    )
    meta = json.loads((out / "model" / "config.json").read_text())
    seen = meta["training"]["tasks"][0]
    assert seen["env_id"] == "tabletop/pick-place-v0"
    assert seen["demos"] == [0, 1, 2, 3] and seen["outcome_rollouts"] == [4, 5]
    assert (out / "checkpoint" / "optimizer.safetensors").is_file()
    assert list((out / "tb").iterdir())
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 10
    assert (
        main(
            [
                "reward",
                "train",
                "--data",
                pp,
                "--config",
                TINY,
                "--out",
                str(out),
                "--steps",
                "14",
                "--resume",
                "true",
            ]
        )
        == 0
    )
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 14
    GRM.from_pretrained(out / "model")


def test_train_from_init_with_outcome_stores(stores, tmp_path, capsys):
    """--init starts from a trained model (and records what it saw); --outcomes adds
    outcome-only stores, pooled with their env's rollouts."""
    _, pp, rollouts = stores
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    args = ["reward", "train", "--data", pp, "--config", TINY]
    assert main([*args, "--out", str(base), "--steps", "4"]) == 0
    code = main(
        [*args, "--out", str(tuned), "--steps", "2", "--lr", "1e-12"]
        + ["--init", str(base / "model"), "--outcomes", rollouts]
    )
    assert code == 0
    meta = json.loads((tuned / "model" / "config.json").read_text())["training"]
    assert meta["init"]["model"] == str(base / "model")
    assert meta["init"]["training"]["steps"] == 4  # the starting weights' own record
    pooled = meta["tasks"][1]
    assert pooled["data"] == rollouts and pooled["demos"] == []  # its experts are not demos
    labels = EpisodeStore.open(rollouts)
    assert pooled["outcome_rollouts"] == [
        i for i in range(len(labels)) if labels.episode_meta(i).policy != "expert"
    ]
    a = GRM.from_pretrained(base / "model").state_dict()
    b = GRM.from_pretrained(tuned / "model").state_dict()
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a)  # started from the init weights
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "x"), "--init", str(tmp_path / "none")]) != 0
    assert "is not a GRM checkpoint" in capsys.readouterr().err
    # a training run's folder in place of its model: the error names the model inside
    assert main([*args, "--out", str(tmp_path / "y"), "--init", str(base)]) != 0
    err = capsys.readouterr().err
    assert f"its model is {base / 'model'}" in err and "\n" not in err.strip()


def test_training_never_reads_privileged_progress(stores, tmp_path):
    """Scrambling privileged progress must not change a single trained weight."""
    import shutil

    import zarr

    _, pp, _ = stores
    scrambled = tmp_path / "scrambled"
    shutil.copytree(pp, scrambled)
    arr = zarr.open_array(str(scrambled / "privileged_progress"), mode="r+")
    arr[:] = np.random.default_rng(0).random(arr.shape).astype(np.float32)
    outs = []
    for data in (pp, str(scrambled)):
        out = tmp_path / Path(data).name
        assert (
            main(
                [
                    "reward",
                    "train",
                    "--data",
                    data,
                    "--config",
                    TINY,
                    "--out",
                    str(out),
                    "--steps",
                    "3",
                ]
            )
            == 0
        )
        outs.append(GRM.from_pretrained(out / "model").state_dict())
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k].numpy(), outs[1][k].numpy())


def test_training_set_discipline(stores, tmp_path, capsys):
    base, _, _ = stores
    other = str(base / "door-lock")
    assert (
        main(
            [
                "collect",
                "--env",
                "metaworld/door-lock-v3",
                "--size",
                "32",
                "--episodes",
                "1",
                "--out",
                other,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["reward", "train", "--data", other, "--config", TINY, "--out", str(tmp_path / "x")])
        == 2
    )
    assert "not a training task" in capsys.readouterr().err


def test_adapt_from_one_demo_and_eval(stores, tmp_path):
    _, pp, rollouts = stores
    run = tmp_path / "run"
    assert (
        main(["reward", "train", "--data", pp, "--config", TINY, "--out", str(run), "--steps", "6"])
        == 0
    )
    adapted = tmp_path / "adapted"
    assert (
        main(
            [
                "reward",
                "adapt",
                "--model",
                str(run / "model"),
                "--demo",
                f"{pp}:1",
                "--out",
                str(adapted),
                "--steps",
                "5",
                "--groups",
                "2",
            ]
        )
        == 0
    )
    meta = json.loads((adapted / "config.json").read_text())
    assert meta["adaptation"]["demo"] == {
        "data": pp,
        "episode": 1,
        "env_id": "tabletop/pick-place-v0",
    }
    assert (
        main(["reward", "adapt", "--model", str(run / "model"), "--demo", f"{pp}:4"]) == 2
    )  # not a demo
    report = tmp_path / "eval"
    assert (
        main(
            [
                "reward",
                "eval",
                "--model",
                f"grm:{adapted}",
                "--data",
                rollouts,
                "--reference",
                f"{pp}:0",
                "--out",
                str(report),
                "--calibrate",
                "true",
                "--exploit_sequences",
                "4",
                "--exploit_starts",
                "1",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    bad = ["reward", "eval", "--model", f"grm:{adapted}", "--data", rollouts, "--threads", "-1"]
    assert main(bad) == 2  # a one-line error, nothing evaluated
    summary = json.loads((report / "summary.json").read_text())
    assert summary["episodes"] == 5
    for key in ("voc", "progress_mae", "outcome_accuracy", "false_success_rate", "epic_distance"):
        assert key in summary
    assert 0 <= summary["exploitation"]["exploit_rate"] <= 1
    assert (adapted / "thresholds.json").is_file()
    assert list((report / "plots").glob("episode_*.png")) and list(
        (report / "videos").glob("*.mp4")
    )


def test_ensemble_folder_is_a_model_folder(stores, tmp_path, capsys):
    import shutil

    import torch

    from models.ensemble import EnsembleProgressModel
    from models.grm.config import GRMConfig
    from robo.reward.registry import as_spec, load_progress_model

    _, pp, rollouts = stores
    cfg = GRMConfig(**{**TINY_GRM, "views": ("front", "side", "wrist")})
    for k in range(2):
        torch.manual_seed(k)
        GRM(cfg).save_pretrained(tmp_path / "models" / f"m{k}")
    ens = tmp_path / "models" / "ens"
    members = ",".join(str(tmp_path / "models" / f"m{k}") for k in range(2))
    assert main(["reward", "ensemble", "--members", members, "--out", str(ens)]) == 0
    assert as_spec(str(ens)) == f"ensemble:{ens}"  # a bare ensemble folder is recognised
    report = tmp_path / "eval"
    args = ["reward", "eval", "--model", str(ens), "--data", rollouts, "--reference", f"{pp}:0"]
    args += ["--out", str(report), "--calibrate", "true", "--video_episodes", "0"]
    assert main(args) == 0
    assert (ens / "thresholds.json").is_file()  # calibration kept with the ensemble
    assert json.loads((report / "summary.json").read_text())["episodes"] == 5
    # one-shot: every member adapts to the demo, and the adapted members form the ensemble
    adapted = tmp_path / "models" / "ens-adapted"
    args = ["reward", "adapt", "--model", str(ens), "--demo", f"{pp}:1", "--out", str(adapted)]
    assert main([*args, "--steps", "3", "--groups", "2"]) == 0
    for k in range(2):
        meta = json.loads((adapted / f"member{k}" / "config.json").read_text())
        assert meta["adaptation"]["base_model"] == str(tmp_path / "models" / f"m{k}")
    assert len(load_progress_model(f"ensemble:{adapted}").members) == 2
    # members are stored relative to the folder: moving them together keeps it loadable
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "models", moved)
    pm = load_progress_model(f"ensemble:{moved / 'ens'}")
    assert isinstance(pm, EnsembleProgressModel) and len(pm.members) == 2
    # bad input: one-line errors, nothing written
    capsys.readouterr()
    bad = tmp_path / "bad"
    one = str(moved / "m0")
    assert main(["reward", "ensemble", "--members", one, "--out", str(bad)]) == 2
    assert "at least 2 members" in capsys.readouterr().err and not bad.exists()
    (moved / "ens" / "ensemble.json").write_text("[1, 2]")
    assert main(["reward", "eval", "--model", str(moved / "ens"), "--data", rollouts]) == 2
    assert "not an ensemble manifest" in capsys.readouterr().err
    assert main(["reward", "eval", "--model", f"ensemble:{tmp_path}", "--data", rollouts]) == 2
    assert "has no ensemble.json" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_ddp_two_cpu_processes_on_gloo(stores, tmp_path):
    _, pp, _ = stores
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "robo.cli",
        "reward",
        "train",
        "--data",
        pp,
        "--config",
        TINY,
        "--out",
        str(out),
        "--steps",
        "4",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "model" / "config.json").read_text())
    assert meta["training"]["world_size"] == 2
    assert len(EpisodeStore.open(pp)) == 6


@pytest.mark.parametrize("path", sorted((ROOT / "configs/grm").glob("*.yaml")))
def test_grm_configs_parse_as_training_configs(path) -> None:
    import draccus

    from robo.reward.train import TrainConfig

    cfg = draccus.parse(TrainConfig, config_path=str(path), args=["--data", "d"])
    assert cfg.model.views and cfg.steps > 0
    # only the undo-demos config trains on successful undo rollouts as demonstrations
    assert cfg.sampler.undo_demos == (path.stem == "undo-demos")
