"""The main job (`make demo`) end to end with tiny settings: every stage runs and reports;
a re-run replaces its own earlier outputs and nothing else."""

import json

from robo.demo import DemoConfig, run


def test_demo_pipeline_smoke(tmp_path):
    report = run(
        DemoConfig(
            out=str(tmp_path / "demo"),
            demos=3,
            train_rollouts=1,
            rollouts=1,
            size=32,
            grm_config="configs/grm/tiny.yaml",
            grm_steps=4,
            rl_steps=60,
            exploit_sequences=2,
        )
    )
    out = tmp_path / "demo"
    saved = json.loads((out / "report.json").read_text())
    assert saved["env"] == "tabletop/pick-place-v0" and set(saved["rl_final_success"]) == {
        "sparse",
        "pbrs(grm)",
    }
    assert -1 <= report["grm_eval"]["voc"] <= 1
    for f in ("demo_ep0.mp4", "policy_pbrs.mp4", "rl/curves.png", "eval/summary.json"):
        assert (out / f).stat().st_size > 1000, f


def test_rerun_replaces_only_the_demos_own_outputs(tmp_path, capsys):
    from robo.demo import clear_previous

    (tmp_path / "demos").mkdir()
    (tmp_path / "demos" / "zarr.json").write_text("{}")
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "my_notes.txt").write_text("keep me")
    clear_previous(tmp_path)
    assert not (tmp_path / "demos").exists() and not (tmp_path / "report.json").exists()
    assert (tmp_path / "my_notes.txt").read_text() == "keep me"
    assert "replacing the previous demo report" in capsys.readouterr().out
