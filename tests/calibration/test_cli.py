"""`robo calibrate camera|reward` through the platform CLI."""

import json

from robo.cli import main


def test_calibrate_camera_render_self_test(tmp_path, capsys):
    assert (
        main(
            [
                "calibrate",
                "camera",
                "--render",
                "6",
                "--camera_id",
                "cam0",
                "--store",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "focal error" in out
    calib = json.loads((tmp_path / "cam0.json").read_text())
    assert calib["camera_id"] == "cam0"


def test_calibrate_reward_and_bad_input(tmp_path, capsys):
    data = tmp_path / "rollouts.json"
    data.write_text(
        json.dumps({"progress": [0.97, 0.99, 0.5, 0.8, 0.96, 0.3], "success": [1, 1, 0, 0, 1, 0]})
    )
    assert (
        main(["calibrate", "reward", "--data", str(data), "--out", str(tmp_path / "th.json")]) == 0
    )
    assert 0 < json.loads((tmp_path / "th.json").read_text())["delta"] < 0.2
    assert (
        main(["calibrate", "camera", "--images", str(tmp_path / "empty"), "--store", str(tmp_path)])
        == 2
    )
    assert capsys.readouterr().err.count("\n") == 1
