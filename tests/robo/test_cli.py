"""The `robo` CLI: collect, append, preview, info, and one-line errors."""

import pytest

from robo.cli import main
from robo.store import EpisodeStore


def test_collect_append_preview_info(tmp_path, capsys):
    out = str(tmp_path / "pp")
    args = [
        "collect",
        "--env",
        "tabletop/pick-place-v0",
        "--episodes",
        "2",
        "--size",
        "32",
        "--out",
        out,
    ]
    assert main(args) == 0
    assert (
        main(
            args[:-2]
            + ["--out", out, "--policy", "half", "--seed", "50", "--views", "front,side,wrist"]
        )
        == 0
    )
    store = EpisodeStore.open(out)
    assert len(store) == 4 and store.views == ("front", "side", "wrist")
    assert [store.episode_meta(i).policy for i in range(4)] == ["expert", "expert", "half", "half"]
    assert [store.episode_meta(i).seed for i in range(4)] == [0, 1, 50, 51]
    assert store.episode(0).outcome == "success"
    assert sum(p.get("event") == "collect" for p in store.provenance) == 2
    assert all("mujoco" in str(p) for p in store.provenance if p.get("event") == "collect")
    video = tmp_path / "ep.mp4"
    assert main(["preview", "--data", out, "--episode", "-1", "--out", str(video)]) == 0
    assert video.stat().st_size > 1000
    gif = tmp_path / "ep.gif"
    assert main(["preview", "--data", out, "--out", str(gif), "--overlay", "false"]) == 0
    assert gif.stat().st_size > 1000
    capsys.readouterr()
    assert main(["data", "info", "--data", out]) == 0
    assert "episodes: 4" in capsys.readouterr().out


def test_config_file_and_dotted_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    out = tmp_path / "st"
    cfg.write_text(
        f"env: tabletop/stack-v0\nepisodes: 1\nsize: 24\nout: {out}\nrandomization:\n  colors: true\n"
    )
    assert main(["collect", "--config_path", str(cfg), "--randomization.lighting", "true"]) == 0
    assert EpisodeStore.open(str(out)).image_size == (24, 24)


@pytest.mark.parametrize(
    "args, message",
    [
        (["collect", "--env", "tabletop/nope-v0", "--episodes", "1"], "unknown env id"),
        (["collect", "--env", "tabletop/push-v0", "--views", "front,eye"], "unknown camera 'eye'"),
        (["collect", "--env", "tabletop/push-v0", "--size", "0"], "image size"),
        (["collect", "--env", "tabletop/push-v0", "--size", "100000"], "image size"),
        (["collect", "--env", "tabletop/push-v0", "--policy", "wiggle"], "unknown policy"),
        (["collect"], "--env is required"),
        (["collect", "--env", "tabletop/push-v0", "--episodes", "lots"], "episodes"),
        (["preview", "--data", "/nonexistent/store"], "/nonexistent/store"),
    ],
)
def test_bad_input_is_one_line(args, message, capsys, tmp_path):
    if args[0] == "collect" and "--out" not in args:
        args = args + ["--out", str(tmp_path / "x")]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert message in err[-1] and len(err[-1]) < 300


def test_collect_refuses_mismatching_store(tmp_path, capsys):
    out = str(tmp_path / "pp")
    assert (
        main(
            [
                "collect",
                "--env",
                "tabletop/reach-v0",
                "--episodes",
                "1",
                "--size",
                "24",
                "--out",
                out,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "collect",
                "--env",
                "tabletop/push-v0",
                "--episodes",
                "1",
                "--size",
                "24",
                "--out",
                out,
            ]
        )
        == 2
    )
    assert "holds tabletop/reach-v0" in capsys.readouterr().err
    assert len(EpisodeStore.open(out)) == 1


def test_unknown_command_prints_usage(capsys):
    assert main(["fly"]) == 2
    assert "usage: robo" in capsys.readouterr().err
