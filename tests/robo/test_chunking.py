"""Action chunks (`--action_chunk k`): the wrapper, the chunked demonstrations, a smoke run."""

import json

import gymnasium as gym
import numpy as np
import pytest

from robo.cli import main


class _Counter(gym.Env):
    """Reward 1 per step; succeeds (and terminates) at step ``goal``; records its actions."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, goal: int = 5):
        self.goal, self.t, self.seen = goal, 0, []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        self.seen.append(np.asarray(action).tolist())
        done = self.t == self.goal
        return np.full(1, self.t, np.float32), 1.0, done, False, {"success": done}


def test_chunk_wrapper_runs_k_steps_and_stops_where_the_episode_ends():
    from robo.rl.chunking import ActionChunkWrapper

    env = ActionChunkWrapper(_Counter(goal=5), 3, gamma=0.5)
    assert env.action_space.shape == (6,)
    np.testing.assert_array_equal(env.action_space.low, -np.ones(6))
    env.reset(seed=0)
    chunk = np.arange(6, dtype=np.float32) / 10
    obs, reward, term, trunc, info = env.step(chunk)
    assert obs[0] == 3 and not term and info == {"success": False, "chunk_steps": 3}
    assert reward == pytest.approx(1 + 0.5 + 0.25)  # the env's rewards, discounted
    np.testing.assert_allclose(env.unwrapped.seen, chunk.reshape(3, 2))  # in order
    obs, reward, term, trunc, info = env.step(chunk)
    assert obs[0] == 5 and term and info == {"success": True, "chunk_steps": 2}
    assert reward == pytest.approx(1.5)  # stopped at the success: 2 steps run
    with pytest.raises(Exception, match="at least 1"):
        ActionChunkWrapper(_Counter(), 0)


def test_chunk_actions_repeat_the_last_action_past_the_end():
    from robo.rl.chunking import chunk_actions

    a = np.array([[0.0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(chunk_actions(a, 2), [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 4, 5]])
    np.testing.assert_array_equal(chunk_actions(a, 1), a)


class _Demo:
    """The fields of a stored episode that the warm start reads."""

    def __init__(self, T: int, rng, perturbed=()):
        self.states = rng.normal(size=(T, 3)).astype(np.float32)
        self.actions = rng.uniform(-1, 1, (T, 2)).astype(np.float32)
        self.privileged_progress = np.sort(rng.uniform(0, 1, T)).astype(np.float32)
        self.env_reward = rng.normal(size=T).astype(np.float32)
        self.success = np.zeros(T, bool)
        self.success[-1] = True
        self.extra = {"perturbed": list(perturbed)}

    def __len__(self):
        return len(self.states)


def test_chunked_demos_are_the_per_step_shaping_summed_over_each_chunk():
    """pbrs at the chunk's ends with gamma^k equals the per-step pbrs rewards discounted over
    the chunk (the potential terms telescope); a chunk with a scripted slip is not cloned."""
    from robo.rl.train import PrivilegedPotential, RLConfig
    from robo.rl.warmstart import demo_transitions
    from robo.shaping import ShapingConfig

    rng = np.random.default_rng(0)
    ep = _Demo(11, rng, perturbed=[6])
    shaping = ShapingConfig(mode="pbrs", gamma=0.9, success_bonus=0.0)
    cfg1 = RLConfig(env="tabletop/reach-v0", shaping=shaping)
    cfgk = RLConfig(env="tabletop/reach-v0", shaping=shaping, action_chunk=3)
    one = demo_transitions([ep], (), PrivilegedPotential(), None, cfg1)
    tr = demo_transitions([ep], (), PrivilegedPotential(), None, cfgk)
    T = len(ep) - 1
    assert tr["act"].shape == (T, 6) and len(tr["rew"]) == T
    for t in range(T):
        m = min(3, T - t)
        expected = sum(0.9**i * one["rew"][t + i] for i in range(m))
        assert tr["rew"][t] == pytest.approx(expected), t
        np.testing.assert_array_equal(tr["next"][t], ep.states[t + m])
    np.testing.assert_allclose(tr["disc"], 0.9**3)
    assert tr["done"].tolist() == [False] * (T - 3) + [True] * 3  # chunks that reach the end
    # the slip at step 6 is inside the chunks from steps 4, 5 and 6
    assert np.flatnonzero(~tr["clone"]).tolist() == [4, 5, 6]
    np.testing.assert_array_equal(tr["act"][0], ep.actions[:3].reshape(-1))
    # oracle: the env's rewards discounted over the chunk, as the wrapper returns them
    oracle = RLConfig(
        env="tabletop/reach-v0", shaping=ShapingConfig(mode="oracle", gamma=0.9), action_chunk=3
    )
    o = demo_transitions([ep], (), PrivilegedPotential(), None, oracle)
    assert o["rew"][0] == pytest.approx(sum(0.9**i * ep.env_reward[1 + i] for i in range(3)))
    # sparse: the success bonus for every chunk that reaches the success
    sparse = RLConfig(env="tabletop/reach-v0", shaping=ShapingConfig(mode="sparse"), action_chunk=3)
    s = demo_transitions([ep], (), PrivilegedPotential(), None, sparse)
    assert np.flatnonzero(s["rew"]).tolist() == [T - 3, T - 2, T - 1]


def test_rl_train_with_action_chunks(tmp_path):
    """A short SAC run on chunks of 3: the policy outputs 3 actions, the discount per
    decision is gamma^3, and the evaluation runs the chunks in the env."""
    demos = str(tmp_path / "reach")
    args = ["collect", "--env", "tabletop/reach-v0", "--episodes", "2", "--size", "24"]
    assert main([*args, "--views", "front", "--out", demos]) == 0
    out = tmp_path / "rl"
    argv = ["rl", "train", "--env", "tabletop/reach-v0", "--shaping.mode", "sparse"]
    argv += ["--demos", demos, "--steps", "40", "--eval_every", "20", "--eval_episodes", "2"]
    argv += ["--bc_epochs", "5", "--critic_warmup", "5", "--max_episode_steps", "30"]
    argv += ["--actor_delay", "10", "--action_chunk", "3", "--out", str(out)]
    assert main(argv) == 0
    from robo.rl.demosac import DemoSAC

    policy = DemoSAC.load(out / "final_policy")
    assert policy.action_space.shape == (3 * 4,)  # reach: 4 actions (xyz, gripper)
    assert policy.gamma == pytest.approx(0.99**3)
    summary = json.loads((out / "summary.json").read_text())
    assert [e["step"] for e in summary["evaluations"]] == [0, 20, 40]
    # decisions of 3 steps: a 30-step episode is at most 10 of them
    assert all(e["mean_length"] <= 10 for e in summary["evaluations"])
    # the normaliser reads how the scenes vary from the env's resets, not only the demos
    import sim
    from robo.rl.warmstart import scene_states

    scenes = scene_states(lambda: sim.make("tabletop/reach-v0"), 64)
    std = policy.policy.actor.features_extractor.std.numpy()
    assert np.all(std >= scenes.std(0) - 1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--action_chunk", "0"], "--action_chunk 0 must be at least 1"),
        (["--action_chunk", "4", "--n_step", "3"], "--action_chunk already backs up"),
        (["--obs_norm_scenes", "-1"], "--obs_norm_scenes -1 must be 0"),
    ],
)
def test_bad_chunk_settings(args, message, capsys, tmp_path):
    argv = ["rl", "train", "--env", "tabletop/reach-v0", "--out", str(tmp_path / "x"), *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
