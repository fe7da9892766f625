"""AWR (`--algo awr`): Monte Carlo returns, weights, the refit on the replay buffer, a smoke run."""

import json

import numpy as np
import pytest
import torch

from robo.cli import main
from robo.rl.awr import AWR, awr_weights, mc_returns
from robo.shaping import ShapingMode, shaped_reward
from tests.robo.test_demosac import Line


def test_mc_returns_sum_to_each_episodes_end():
    rew = np.array([0.0, 0.0, 1.0, 0.0, 0.5])
    ends = np.array([False, False, True, False, False])
    np.testing.assert_allclose(mc_returns(rew, ends, 0.9), [0.81, 0.9, 1.0, 0.45, 0.5])


@pytest.mark.parametrize("success", [True, False])
def test_pbrs_return_is_the_sparse_return_plus_progress_against_the_potential(success):
    """Under pbrs the return from t telescopes to the sparse one + gamma^(T-t) Phi(s_T) -
    Phi(s_t) (Phi = 0 at a success): the potential is the baseline of AWR's advantage."""
    rng = np.random.default_rng(0)
    gamma, T = 0.97, 12
    phi = rng.uniform(0, 1, T + 1)
    gold = np.zeros(T)
    terminated = np.zeros(T, bool)
    if success:
        gold[-1], terminated[-1] = 1.0, True
    ends = np.zeros(T, bool)
    ends[-1] = True
    pbrs = mc_returns(
        shaped_reward(ShapingMode.pbrs, gold, phi[:-1], phi[1:], terminated, gamma), ends, gamma
    )
    sparse = mc_returns(gold, ends, gamma)
    end = 0.0 if success else phi[-1]
    t = np.arange(T)
    np.testing.assert_allclose(pbrs, sparse + gamma ** (T - t) * end - phi[:-1], atol=1e-12)


def test_weights_are_exponential_in_positive_returns_and_clipped():
    w = awr_weights(np.array([-0.5, 0.0, 0.1, 1.0, 1e9]), beta=0.1, max_weight=20.0)
    np.testing.assert_allclose(w, [0.0, 0.0, np.e, 20.0, 20.0])


def _episode(a, xs, action, reward_last):
    """Add one episode to the replay buffer: states xs, the same action everywhere, a reward
    only on the last transition (which ends the episode)."""
    for k, x in enumerate(xs):
        done = k == len(xs) - 1
        a.replay_buffer.add(
            np.array([[x]], np.float32),
            np.array([[x]], np.float32),
            np.array([[action]], np.float32),
            np.array([reward_last if done else 0.0]),
            np.array([done]),
            [{}],
        )


def test_refit_clones_the_successes_and_ignores_the_failures():
    """Sparse returns: successful episodes (action -0.5) carry all the weight, failed ones
    (action +0.5, on the same states) none, so the refitted actor plays -0.5; the demos join."""
    torch.manual_seed(0)
    a = AWR("MlpPolicy", Line(), learning_starts=0, seed=0, awr_std=0.2)
    xs = np.linspace(-1, 1, 20)
    for _ in range(3):
        _episode(a, xs, -0.5, 1.0)
        _episode(a, xs, 0.5, 0.0)
    a.set_demo_returns(xs[:5, None], np.full((5, 1), -0.5), np.ones(5))
    a.train(gradient_steps=300, batch_size=64)
    rec = a.awr_history[-1]
    assert rec["transitions"] == 5 + 6 * 20 and rec["weighted"] == 5 + 3 * 20
    mean, log_std, _ = a.actor.get_action_dist_params(
        torch.as_tensor(xs[:, None], dtype=torch.float32)
    )
    np.testing.assert_allclose(torch.tanh(mean).detach().numpy(), -0.5, atol=0.1)
    np.testing.assert_allclose(log_std.exp().detach().numpy(), 0.2, atol=0.05)


def test_no_positive_return_leaves_the_actor_alone():
    torch.manual_seed(0)
    a = AWR("MlpPolicy", Line(), learning_starts=0, seed=0)
    _episode(a, np.linspace(-1, 1, 10), 0.5, 0.0)
    before = [p.detach().clone() for p in a.actor.parameters()]
    a.train(gradient_steps=10, batch_size=8)
    assert a.awr_history[-1]["weighted"] == 0
    assert all(torch.equal(x, y) for x, y in zip(before, a.actor.parameters(), strict=True))


def test_awr_run_refits_between_episodes_and_saves_a_loadable_policy(tmp_path):
    from robo.rl.demosac import DemoSAC

    demos = str(tmp_path / "reach")
    assert main(["collect", "--env", "tabletop/reach-v0", "--episodes", "2", "--size", "32",
                 "--out", demos]) == 0  # fmt: skip
    out = tmp_path / "awr"
    args = ["rl", "train", "--env", "tabletop/reach-v0", "--algo", "awr", "--reward",
            "privileged", "--shaping.mode", "pbrs", "--demos", demos, "--steps", "90",
            "--eval_every", "45", "--eval_episodes", "2", "--bc_epochs", "5",
            "--max_episode_steps", "15", "--awr_episodes", "2", "--awr_fit_steps", "5",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warm_start"]["demo_transitions_in_fits"] > 0
    fits = summary["awr_fits"]
    assert len(fits) >= 2 and all(f["transitions"] > 0 for f in fits)
    # each refit sees the demos and every transition so far
    assert fits[-1]["transitions"] > fits[0]["transitions"]
    policy = DemoSAC.load(out / "final_policy")
    action, _ = policy.predict(np.zeros(policy.observation_space.shape, np.float32), True)
    assert action.shape == policy.action_space.shape


@pytest.mark.parametrize(
    "args, message",
    [
        (["--awr_beta", "0"], "--awr_episodes and --awr_fit_steps must be at least 1"),
        (["--action_chunk", "2"], "--algo awr takes one action per decision"),
        (["--ibrl", "true"], "--ibrl true needs --algo sac"),
    ],
)
def test_awr_bad_input(args, message, capsys, tmp_path):
    cmd = ["rl", "train", "--env", "tabletop/reach-v0", "--algo", "awr", "--out",
           str(tmp_path / "x"), *args]  # fmt: skip
    assert main(cmd) == 2
    assert message in capsys.readouterr().err
