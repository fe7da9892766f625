"""The fixed-rate control loop and `robo robot run|record` on the simulated arm (dry run)."""

import queue
import threading

import pytest

from hardware.registry import make_robot_from_config
from robo.cli import main
from robo.control import ControlLoop, Event, make_policy
from robo.store import EpisodeStore

CART = {
    "type": "sim",
    "id": "tabletop",
    "task": "pick-place",
    "action_space": "cartesian",
    "control_hz": 25,
    "cameras": {
        "front": {"camera": "front", "width": 32, "height": 32},
        "side": {"camera": "side", "width": 32, "height": 32},
        "wrist": {"camera": "wrist", "width": 32, "height": 32},
    },
}


@pytest.fixture
def robot():
    r = make_robot_from_config(dict(CART))
    with r:
        yield r


def test_expert_episode_at_fixed_rate(robot):
    loop = ControlLoop(robot, make_policy("expert", robot), rate_hz=25)
    result = loop.run_episode(max_steps=80)
    assert result.steps == 80 and result.label is None
    assert robot.unwrapped._success()
    t = result.timing
    assert 30 < t["period_mean_ms"] < 60  # 40 ms ticks
    assert {"jitter_ms", "overruns", "compute_p99_ms"} <= set(t)


def test_operator_events_label_pause_and_quit(robot):
    loop = ControlLoop(robot, make_policy("expert", robot), rate_hz=50)
    events = queue.Queue()
    events.put(Event.failure.value)
    r = loop.run_episode(events, max_steps=50)
    assert r.label == "failure" and r.steps == 0
    events.put(Event.pause.value)
    threading.Timer(0.3, lambda: events.put(Event.quit.value)).start()
    r = loop.run_episode(events, max_steps=500)
    assert r.quit and r.label is None and 0 < r.steps < 500
    hold = robot._hold_action()
    assert all(sent["dx"] == hold["dx"] == 0.0 for sent in r.rows["sent"])  # paused: the arm held


def test_robot_record_and_run_cli(tmp_path):
    import yaml

    cfg = tmp_path / "robot.yaml"
    cfg.write_text(yaml.safe_dump(CART))
    demos = str(tmp_path / "demos")
    assert main(["robot", "record", "--robot", str(cfg), "--max_steps", "80", "--out", demos]) == 0
    store = EpisodeStore.open(demos)
    meta = store.episode_meta(0)
    assert (
        meta.policy == "expert"
        and meta.outcome == "success"
        and meta.env_id == "tabletop/pick-place-v0"
    )
    assert store.views == ("front", "side", "wrist")
    assert (
        main(
            [
                "reward",
                "train",
                "--data",
                demos,
                "--config",
                "configs/grm/tiny.yaml",
                "--out",
                str(tmp_path / "grm"),
                "--steps",
                "2",
            ]
        )
        == 0
    )
    runs = str(tmp_path / "runs")
    assert (
        main(
            [
                "robot",
                "run",
                "--robot",
                str(cfg),
                "--policy",
                "hold",
                "--reward",
                f"grm:{tmp_path}/grm/model",
                "--reference",
                f"{demos}:0",
                "--max_steps",
                "10",
                "--out",
                runs,
            ]
        )
        == 0
    )
    ep = EpisodeStore.open(runs).episode(0)
    assert len(ep.extra["progress"]) == 11 and ep.env_reward.shape == (11,)
    assert ep.outcome == "failure"  # held still: the simulator's verdict labels it
    # labelled robot episodes feed the reward model's refinement
    adapted = tmp_path / "adapted"
    assert (
        main(
            [
                "reward",
                "adapt",
                "--model",
                f"{tmp_path}/grm/model",
                "--demo",
                f"{demos}:0",
                "--outcomes",
                runs,
                "--steps",
                "2",
                "--groups",
                "2",
                "--out",
                str(adapted),
            ]
        )
        == 0
    )
    import json

    meta = json.loads((adapted / "config.json").read_text())
    assert meta["adaptation"]["outcomes"] == {runs: [0]}


def test_bad_robot_input(tmp_path, capsys):
    assert main(["robot", "run", "--robot", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert (
        main(["robot", "run", "--robot", "configs/robots/sim_tabletop.yaml", "--policy", "magic"])
        == 2
    )
    assert "--policy" in capsys.readouterr().err


def test_a_chunked_sb3_policy_sends_its_actions_on_consecutive_ticks(robot, tmp_path):
    """A policy trained with --action_chunk 2 outputs 2 x 4 values: the loop sends them on
    two ticks and asks the policy again on the third; a policy of another size is refused."""
    import gymnasium as gym
    import numpy as np

    from robo.errors import RoboError
    from robo.rl.demosac import DemoSAC

    class Spaces(gym.Env):
        observation_space = robot.unwrapped.observation_space

        def __init__(self, n):
            self.action_space = gym.spaces.Box(-1.0, 1.0, (n,), np.float32)

    DemoSAC("MlpPolicy", Spaces(8), seed=0).save(tmp_path / "chunked")
    policy = make_policy(f"sb3:{tmp_path / 'chunked.zip'}", robot)
    calls = []
    predict = policy.model.predict
    policy.model.predict = lambda *a, **k: calls.append(1) or predict(*a, **k)
    obs = robot.get_observation()
    sent = [policy(obs) for _ in range(3)]
    assert len(calls) == 2 and all(set(s) == {"dx", "dy", "dz", "grip"} for s in sent)
    state = robot.unwrapped._obs()
    chunk = predict(state, deterministic=True)[0].reshape(2, 4)
    assert [sent[0][k] for k in ("dx", "dy", "dz", "grip")] == pytest.approx(chunk[0].tolist())
    assert [sent[1][k] for k in ("dx", "dy", "dz", "grip")] == pytest.approx(chunk[1].tolist())
    policy.reset()
    assert policy.pending == []
    DemoSAC("MlpPolicy", Spaces(6), seed=0).save(tmp_path / "odd")
    with pytest.raises(RoboError, match="outputs 6 values per decision, the robot takes 4"):
        make_policy(f"sb3:{tmp_path / 'odd.zip'}", robot)
