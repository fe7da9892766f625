"""Potential-based shaping: policy invariance on tabular MDPs, the naive trap, the wrappers."""

import numpy as np
import pytest

from models.base import TaskContext
from models.grm.config import GRMConfig
from models.grm.inference import GRMProgressModel
from models.grm.model import GRM
from robo.errors import RoboError
from robo.shaping import (
    ShapedRewardWrapper,
    ShapingConfig,
    ShapingMode,
    make_reward_vec_env,
    shaped_reward,
)
from tests.tiny import TINY_GRM


def value_iteration(P, R, terminal, gamma, iters=2000):
    """P (S, A, S), R (S, A, S) rewards; terminal states absorb with value 0. Returns greedy policy, Q."""
    S, A, _ = P.shape
    V = np.zeros(S)
    for _ in range(iters):
        Q = (P * (R + gamma * np.where(terminal, 0.0, V)[None, None, :])).sum(-1)
        V = np.where(terminal, 0.0, Q.max(1))
    return Q.argmax(1), Q


def shaped_table(mode, R, phi, terminal, gamma):
    S = len(phi)
    phi_s = np.broadcast_to(phi[:, None, None], (S, 1, S))
    phi_next = np.broadcast_to(phi[None, None, :], (S, 1, S))
    term = np.broadcast_to(terminal[None, None, :], (S, 1, S))
    return shaped_reward(ShapingMode(mode), R, phi_s, phi_next, term, gamma)


@pytest.mark.parametrize("seed", range(5))
def test_pbrs_keeps_the_optimal_policy_for_random_potentials(seed):
    rng = np.random.default_rng(seed)
    S, A, gamma = 12, 3, 0.95
    P = rng.dirichlet(np.ones(S) * 0.3, size=(S, A))
    terminal = np.zeros(S, bool)
    terminal[-1] = True
    R = np.zeros((S, A, S))
    R[:, :, -1] = 1.0  # sparse: reaching the goal
    pi_sparse, q_sparse = value_iteration(P, R, terminal, gamma)
    for _ in range(5):
        phi = rng.uniform(0, 1, S)
        pi, q = value_iteration(P, shaped_table("pbrs", R, phi, terminal, gamma), terminal, gamma)
        live = ~terminal
        assert np.array_equal(pi[live], pi_sparse[live])
        # Q shifts by exactly -phi(s) (Ng et al.), the ordering of actions is untouched
        np.testing.assert_allclose(q[live], q_sparse[live] - phi[live, None], atol=1e-6)


def test_naive_shaping_falls_into_the_semantic_trap():
    # Chain 0 -> 1 -> 2 (goal, terminal). In state 1 the agent can "hover" (stay) or finish.
    S, gamma = 3, 0.95
    P = np.zeros((S, 2, S))
    P[0, :, 1] = 1.0
    P[1, 0, 1] = 1.0  # action 0: hover
    P[1, 1, 2] = 1.0  # action 1: complete the task
    P[2, :, 2] = 1.0
    terminal = np.array([False, False, True])
    R = np.zeros((S, 2, S))
    R[:, :, 2] = 1.0
    phi = np.array([0.0, 0.9, 1.0])  # a learned progress: state 1 looks almost done
    assert value_iteration(P, R, terminal, gamma)[0][1] == 1
    assert (
        value_iteration(P, shaped_table("pbrs", R, phi, terminal, gamma), terminal, gamma)[0][1]
        == 1
    )
    naive = shaped_table("naive", R, phi, terminal, gamma)
    assert value_iteration(P, naive, terminal, gamma)[0][1] == 0, (
        "naive shaping should prefer hovering"
    )


TINY = TINY_GRM


def tiny_model():
    return GRMProgressModel(GRM(GRMConfig(**TINY)))


def env_fn(**kw):
    import sim

    return lambda: sim.make(
        "tabletop/reach-v0",
        views=("front", "side", "wrist"),
        image_size=32,
        max_episode_steps=6,
        **kw,
    )


def test_vec_wrapper_rewards_match_the_formula_across_episode_ends():
    cfg = ShapingConfig(mode="pbrs", gamma=0.9)
    venv = make_reward_vec_env([env_fn(), env_fn()], tiny_model(), cfg, TaskContext("reach"))
    venv.seed(0)
    venv.reset()
    prev_next, prev_done = None, None
    ends = 0
    for _ in range(14):
        _, reward, dones, infos = venv.step(np.zeros((2, 4), np.float32))
        for k, info in enumerate(infos):
            terms = info["reward_terms"]
            truncated = info.get("TimeLimit.truncated", False)
            terminal = dones[k] and not truncated
            expected = (
                terms["success_bonus"]
                + 0.9 * (0.0 if terminal else terms["next_potential"])
                - terms["potential"]
            )
            assert reward[k] == pytest.approx(expected, abs=1e-5)
            assert "original_env_rew" in info and "frames" not in info
            if prev_next is not None and not prev_done[k]:
                # the potential of s is the next-potential of the previous step
                assert terms["potential"] == pytest.approx(prev_next[k])
        prev_next = [i["reward_terms"]["next_potential"] for i in infos]
        prev_done = dones.copy()
        ends += int(dones.sum())
    assert ends >= 2  # time limit hit (truncation) at least once per env


def test_modes_and_single_env_wrapper():
    import sim

    for mode in ("sparse", "naive", "oracle", "pbrs"):
        env = ShapedRewardWrapper(env_fn()(), tiny_model(), ShapingConfig(mode=mode), TaskContext())
        env.reset(seed=1)
        _, r, _, _, info = env.step(np.array([1.0, 0, 0, 0], np.float32))
        t = info["reward_terms"]
        expected = {
            "sparse": t["success_bonus"],
            "naive": t["success_bonus"] + t["next_potential"],
            "oracle": info["original_env_rew"],
            "pbrs": t["success_bonus"] + 0.99 * t["next_potential"] - t["potential"],
        }[mode]
        assert r == pytest.approx(expected, abs=1e-5)
    with pytest.raises(RoboError, match="views"):
        ShapedRewardWrapper(
            sim.make("tabletop/reach-v0", views=("front",), image_size=32),
            tiny_model(),
            ShapingConfig(),
            TaskContext(),
        )
    with pytest.raises(RoboError, match="px"):
        ShapedRewardWrapper(
            sim.make("tabletop/reach-v0", views=("front", "wrist"), image_size=48),
            tiny_model(),
            ShapingConfig(),
            TaskContext(),
        )
    for gamma in (0.0, 1.5, -0.1):
        with pytest.raises(RoboError, match="gamma"):
            ShapingConfig(gamma=gamma)


def test_single_env_wrapper_reports_the_episodes_key_frames_at_its_end():
    """For refinement: the first frames, the frames where the potential peaked (with its
    value) and, where the env succeeded, the frames of its first success."""
    env = ShapedRewardWrapper(env_fn()(), tiny_model(), ShapingConfig(), TaskContext())
    _, info = env.reset(seed=2)
    rng, peak, done = np.random.default_rng(0), -np.inf, False
    while not done:
        _, _, term, trunc, info = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        peak, done = max(peak, info["reward_terms"]["next_potential"]), term or trunc
        assert done or "episode_key_frames" not in info
    key = info["episode_key_frames"]
    assert key["peak_potential"] == pytest.approx(peak)
    assert key["peak"].shape == key["first"].shape == (len(TINY["views"]), 32, 32, 3)
    assert key["success"] is None and not info.get("success")
    env.reset(seed=3)
    assert env.shaper.key_frames(0)["peak"] is None  # a new episode starts clean


def test_privileged_potential_reads_the_simulators_progress():
    """The evaluation-only potential: Phi is info['privileged_progress'], nothing rendered."""
    import sim
    from robo.rl.train import load_reward

    env = ShapedRewardWrapper(
        sim.make("tabletop/reach-v0", max_episode_steps=10),
        load_reward("privileged"),
        ShapingConfig(mode="pbrs", gamma=0.9),
        TaskContext(),
    )
    _, info = env.reset(seed=3)
    prev = info["privileged_progress"]
    for _ in range(5):
        _, r, term, _, info = env.step(np.array([1.0, 0.5, 0, -1], np.float32))
        t = info["reward_terms"]
        assert t["potential"] == pytest.approx(prev)
        assert t["next_potential"] == pytest.approx(info["privileged_progress"])
        expected = t["success_bonus"] + 0.9 * (0.0 if term else t["next_potential"]) - prev
        assert r == pytest.approx(expected, abs=1e-6)
        prev = info["privileged_progress"]
