"""`robo rl train`: smoke runs (SAC with BC warm start and PBRS from a tiny GRM, PPO sparse), bad input."""

import json

import numpy as np
import pytest

from robo.cli import main

TINY = "configs/grm/tiny.yaml"


@pytest.fixture(scope="module")
def demos_and_model(tmp_path_factory):
    base = tmp_path_factory.mktemp("rl")
    demos = str(base / "reach")
    assert (
        main(
            [
                "collect",
                "--env",
                "tabletop/reach-v0",
                "--episodes",
                "3",
                "--size",
                "32",
                "--out",
                demos,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "reward",
                "train",
                "--data",
                demos,
                "--config",
                TINY,
                "--out",
                str(base / "grm"),
                "--steps",
                "3",
            ]
        )
        == 0
    )
    return demos, str(base / "grm" / "model")


def test_sac_pbrs_with_warm_start(demos_and_model, tmp_path):
    demos, model = demos_and_model
    out = tmp_path / "sac"
    assert (
        main(
            [
                "rl",
                "train",
                "--env",
                "tabletop/reach-v0",
                "--reward",
                f"grm:{model}",
                "--shaping.mode",
                "pbrs",
                "--demos",
                demos,
                "--steps",
                "120",
                "--eval_every",
                "60",
                "--eval_episodes",
                "2",
                "--bc_epochs",
                "5",
                "--critic_warmup",
                "5",
                "--max_episode_steps",
                "30",
                "--q_clip",
                "true",
                "--n_critics",
                "3",
                "--critic_subset",
                "2",
                "--ibrl",
                "true",
                "--n_step",
                "3",
                "--self_imitation",
                "true",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from robo.deferred_reward import DeferredNStepReplayBuffer
    from robo.rl.demosac import DemoSAC
    from robo.rl.warmstart import ObsNormalizer, load_demos

    policy = DemoSAC.load(out / "final_policy")
    assert tuple(policy.q_bounds) == (-1.0, 1.0) and len(policy.critic.q_networks) == 3
    # observations are normalised by the demonstrations' statistics, widened by the scenes'
    # spread, in actor and critics
    states = np.concatenate([ep.states for ep in load_demos(demos, None)[0]])
    import sim
    from robo.rl.warmstart import observation_stats, scene_states

    scenes = scene_states(lambda: sim.make("tabletop/reach-v0"), 64)
    mean, std = observation_stats(states, scenes=scenes)
    keep = list(sim.invariant_obs("tabletop/reach-v0"))
    for net in (policy.actor, policy.critic, policy.bc_actor):
        assert isinstance(net.features_extractor, ObsNormalizer)
        np.testing.assert_allclose(net.features_extractor.mean.numpy(), mean, atol=1e-5)
        np.testing.assert_allclose(net.features_extractor.std.numpy(), std, rtol=1e-5)
        # --policy_obs auto: the networks see only the env's invariant part
        assert net.features_extractor.keep.tolist() == keep
        assert net.features_extractor.features_dim == len(keep)
    # so the policy's actions ignore absolute table positions and velocities
    dropped = [i for i in range(states.shape[1]) if i not in keep]
    shifted = states[:8].copy()
    shifted[:, dropped] += np.random.default_rng(0).normal(0, 0.05, (8, len(dropped)))
    np.testing.assert_allclose(
        policy.predict(shifted, deterministic=True)[0],
        policy.predict(states[:8], deterministic=True)[0],
        atol=1e-6,
    )
    assert policy.replay_buffer_class is DeferredNStepReplayBuffer
    assert policy.replay_buffer_kwargs == {"n_steps": 3, "gamma": 0.99}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warm_start"]["transitions"] > 0
    assert summary["warm_start"]["demo_transitions_in_batches"] > 0
    steps = [e["step"] for e in summary["evaluations"]]
    assert steps[0] == 0 and steps[-1] == 120
    assert all(0 <= e["success_rate"] <= 1 for e in summary["evaluations"])
    # the critic's start value beside the return that followed (over-estimation check)
    assert all(np.isfinite(e["q_start"]) for e in summary["evaluations"])
    assert all(0 <= e["return_start"] <= 1 for e in summary["evaluations"])
    assert "false_success_rate" in summary["hacking_watch"]
    assert set(summary["self_imitation"]) == {"episodes", "transitions"}
    assert (out / "final_policy.zip").is_file()
    # the best evaluation's policy is kept (the first of equals, the warm start included)
    rates = [e["success_rate"] for e in summary["evaluations"]]
    best = summary["evaluations"][int(np.argmax(rates))]
    assert summary["best"] == {k: best[k] for k in ("step", "train_episodes", "success_rate")}
    assert DemoSAC.load(out / "best_policy").num_timesteps == best["step"]


def test_ppo_sparse_without_a_model(tmp_path):
    out = tmp_path / "ppo"
    assert (
        main(
            [
                "rl",
                "train",
                "--env",
                "tabletop/reach-v0",
                "--shaping.mode",
                "sparse",
                "--algo",
                "ppo",
                "--steps",
                "128",
                "--eval_every",
                "128",
                "--eval_episodes",
                "1",
                "--max_episode_steps",
                "20",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    row = json.loads((out / "eval.json").read_text())[-1]
    assert row["step"] >= 128 and "q_start" not in row  # PPO has no Q critic
    assert row["train_episodes"] > 0
    # no model, no detection to watch: not "every success missed"
    assert row["watched_episodes"] == 0 and row["missed_success_rate"] != row["missed_success_rate"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shaping.mode", "pbrs"], "needs a reward model"),
        (["--shaping.gamma", "1.5"], "gamma"),
        (["--algo", "dqn"], "algo"),
        (["--n_critics", "2", "--critic_subset", "3"], "critic_subset"),
        (["--n_step", "0"], "n_step"),
        (["--actor_delay", "-5"], "--actor_delay -5 must be at least 0"),
        (["--n_step", "3", "--algo", "ppo"], "n_step applies to --algo sac"),
        (["--actor_update", "td3"], "--actor_update 'td3': use sac or awac"),
        (["--actor_update", "awac", "--algo", "ppo"], "--actor_update awac is SAC's"),
        (["--awac_beta", "0"], "--awac_beta 0.0 must be positive"),
        (["--awac_advantage", "gae"], "--awac_advantage 'gae': use critic or return"),
        (["--self_imitation", "true"], "--self_imitation true adds to SAC's behaviour-cloning"),
        (["--flip_prob", "1"], "--flip_prob 1.0 must lie in [0, 1)"),
        (["--flip_prob", "0.1", "--algo", "ppo"], "--flip_prob explores in SAC's rollouts"),
        (["--residual_scale", "-1"], "--residual_scale -1.0 must be at least 0"),
        (["--residual_scale", "0.5"], "--residual_scale corrects the cloned actor: it needs"),
        (["--policy_obs", "relative"], "--policy_obs 'relative': use auto, all or invariant"),
        (["--policy_obs", "invariant"], "--policy_obs invariant selects inputs inside"),
        (
            ["--q_clip_potential", "true", "--shaping.mode", "sparse"],
            "--q_clip_potential true bounds SAC's one-step pbrs",
        ),
    ],
)
def test_bad_input_before_training(args, message, capsys, tmp_path):
    assert (
        main(["rl", "train", "--env", "tabletop/reach-v0", "--out", str(tmp_path / "x"), *args])
        == 2
    )
    assert message in capsys.readouterr().err


def test_compare_writes_curves_and_table(tmp_path):
    import json

    out = tmp_path / "cmp"
    argv = [
        "rl",
        "compare",
        "--config",
        "configs/rl/smoke.yaml",
        "--out",
        str(out),
        "--workers",
        "2",
    ]
    assert main(argv) == 0
    result = json.loads((out / "compare.json").read_text())
    assert set(result["conditions"]) == {"sparse", "oracle"} and result["seeds"] == [0, 1]
    assert (out / "curves.png").stat().st_size > 5000


def test_refinement_loop_adapts_the_model_on_contradicting_episodes(demos_and_model, tmp_path):
    """A GRM biased to call everything a success fires on failed episodes; refinement must run."""
    import torch

    from models.grm.model import GRM

    demos, model = demos_and_model
    biased = tmp_path / "biased"
    grm = GRM.from_pretrained(model)
    with torch.no_grad():  # every hop = +1: progress 1 everywhere, "success" at every step
        grm.head[-1].weight.zero_()
        grm.head[-1].bias.fill_(-30.0)
        grm.head[-1].bias[-1] = 30.0
    grm.save_pretrained(biased)
    out = tmp_path / "refine"
    assert (
        main(
            [
                "rl",
                "train",
                "--env",
                "tabletop/reach-v0",
                "--reward",
                f"grm:{biased}",
                "--shaping.mode",
                "pbrs",
                "--shaping.success_source",
                "model",
                "--demos",
                demos,
                "--steps",
                "80",
                "--eval_every",
                "80",
                "--eval_episodes",
                "1",
                "--bc_epochs",
                "0",
                "--max_episode_steps",
                "10",
                "--refine",
                "true",
                "--refine_every",
                "40",
                "--refine_min_episodes",
                "1",
                "--refine_steps",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    records = summary["refinement"]
    assert records and records[0]["false_success_rate_before"] > 0.5 and records[0]["refined"]
    assert records[-1]["final_window"] and "false_success_rate_after" in records[-2]
    fsr = summary["refinement_false_success"]
    assert fsr["refinements"] >= 1 and fsr["before"] > 0.5 and "missed_after" in fsr
    assert "missed_success_rate" in summary["hacking_watch"]
    assert fsr["failed_episodes_before"] == records[0]["window_env_failures"] > 0
    refined = GRM.from_pretrained(out / "refined_model")
    assert not torch.equal(refined.head[-1].bias, grm.head[-1].bias)
    from robo.store import EpisodeStore

    added = EpisodeStore.open(str(out / "refine_data"))
    assert len(added) >= 1  # each contradicting episode: its first and its final frames
    ep = added.episode(0)
    assert ep.frames.shape[0] == 2 and added.episode_meta(0).outcome == "failure"
    assert not np.array_equal(ep.frames[0], ep.frames[1])


@pytest.mark.parametrize("path", sorted(__import__("glob").glob("configs/rl/*.yaml")))
def test_every_shipped_compare_config_parses_and_validates(path):
    import draccus

    from robo.rl.compare import CompareConfig

    cfg = draccus.parse(CompareConfig, config_path=path, args=[])
    assert cfg.conditions and cfg.run.env


def test_return_bounds_by_shaping():
    from robo.rl.train import return_bounds
    from robo.shaping import ShapingConfig

    assert return_bounds(ShapingConfig(mode="sparse")) == (0.0, 1.0)
    # pbrs: the sparse value minus the potential (in [0, 1])
    assert return_bounds(ShapingConfig(mode="pbrs", success_bonus=2.0)) == (-1.0, 2.0)
    assert return_bounds(ShapingConfig(mode="pbrs", success_bonus=0.5, gamma=1.0)) == (-1.0, 1.0)
    # the model's success detection does not end the episode: the bonus may recur
    lo, hi = return_bounds(ShapingConfig(mode="pbrs", success_source="model", gamma=0.9))
    assert lo == -1.0 and hi == pytest.approx(10.0)
    assert return_bounds(ShapingConfig(mode="naive")) is None
    assert return_bounds(ShapingConfig(mode="oracle")) is None


def test_pbrs_returns_lie_within_the_bounds():
    """Discounted pbrs returns of random potential sequences (long enough for gamma^T to
    vanish, as the bootstrapped critic sees them), ending in success or not."""
    from robo.rl.train import return_bounds
    from robo.shaping import ShapingConfig, ShapingMode, shaped_reward

    rng = np.random.default_rng(0)
    cfg = ShapingConfig(mode="pbrs", gamma=0.95)
    lo, hi = return_bounds(cfg)
    returns = []
    for _ in range(200):
        success = rng.random() < 0.5
        T = int(rng.integers(2, 20)) if success else 400  # a success ends the episode
        phi = rng.uniform(0, 1, T + 1) ** rng.uniform(0.1, 5)  # near 0 or near 1
        term = np.zeros(T, bool)
        term[-1] = success
        r_gold = term.astype(float)
        r = shaped_reward(ShapingMode.pbrs, r_gold, phi[:-1], phi[1:], term, cfg.gamma)
        returns.append(float(np.sum(r * cfg.gamma ** np.arange(T))))
    assert lo - 1e-9 <= min(returns) and max(returns) <= hi + 1e-6
    assert max(returns) > 0.5 * hi and min(returns) < 0.5 * lo  # the bounds are near-tight


def test_compare_reports_false_successes_before_and_after_refinement():
    from robo.rl.compare import _aggregate

    evals = [
        {
            "step": 0,
            "train_episodes": 0,
            "success_rate": 0.2,
            "false_success_rate": 0.1,
            "progress_mae": 0.2,
        }
    ]
    refs = [
        {"before": 0.2, "after": 0.04, "refinements": 3, "missed_before": 0.5, "missed_after": 0.3},
        {"before": 0.1, "after": 0.02, "refinements": 5, "missed_before": 0.4},
    ]
    agg = _aggregate([evals, evals], refs)
    assert agg["false_success_before_refine"] == pytest.approx(0.15)
    assert agg["false_success_after_refine"] == pytest.approx(0.03)
    assert agg["missed_success_before_refine"] == pytest.approx(0.45)
    assert agg["missed_success_after_refine"] == pytest.approx(0.3)  # the run that has it
    assert agg["missed_success_rate"] != agg["missed_success_rate"]  # no run has it: NaN
    assert agg["refinements"] == 4


def test_demos_recorded_with_another_observation_layout_are_a_clear_error(tmp_path, capsys):
    from tests.robo.test_store import make_episode, new_store

    store = new_store(str(tmp_path / "old"))  # 5-value states: not pick-place's observations
    store.append_episode(make_episode(6, index=0, success=np.ones(6, bool), outcome="success"))
    code = main(
        [
            "rl",
            "train",
            "--env",
            "tabletop/pick-place-v0",
            "--shaping.mode",
            "sparse",
            "--demos",
            str(tmp_path / "old"),
            "--steps",
            "10",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "re-record them with `robo collect --env tabletop/pick-place-v0`" in err


def test_actor_update_settings_reach_the_algorithm(tmp_path):
    from robo.rl.train import RLConfig, build

    cfg = RLConfig(
        env="tabletop/reach-v0",
        actor_update="awac",
        awac_beta=0.05,
        awac_advantage="return",
        n_step=3,
        out=str(tmp_path / "run"),
    )
    _, _, venv, algo = build(cfg)
    try:
        assert (algo.actor_update, algo.awac_beta, algo.awac_advantage) == (
            "awac",
            0.05,
            "return",
        )
    finally:
        venv.close()


def test_compare_conditions_override_run_settings_but_not_the_shared_budget():
    from robo.errors import RoboError
    from robo.rl.compare import CompareConfig, Condition, condition_run
    from robo.rl.train import RLConfig
    from robo.shaping import ShapingConfig

    run = RLConfig(env="tabletop/reach-v0", steps=60, utd=1)
    sparse = ShapingConfig(mode="sparse")
    plain = Condition(name="sac", shaping=sparse)
    faster = Condition(name="sac-utd3", shaping=sparse, run={"utd": 3, "critic_layernorm": True})
    cfg = CompareConfig(run=run, conditions=[plain, faster], seeds=[0])
    a, b = (condition_run(cfg.run, c, seed=5) for c in cfg.conditions)
    assert (a.utd, a.critic_layernorm, b.utd, b.critic_layernorm) == (1, False, 3, True)
    assert a.steps == b.steps == 60 and a.seed == b.seed == 5
    assert b.shaping.mode == "sparse" and run.utd == 1  # the shared settings are untouched
    for overrides, message in [
        ({"utdd": 3}, "run has no setting 'utdd'"),
        ({"steps": 600}, "'steps' is shared by all conditions"),
        ({"reward": "privileged"}, "'reward' is shared by all conditions"),
    ]:
        bad = Condition(name="bad", shaping=sparse, run=overrides)
        with pytest.raises(RoboError, match=message):
            CompareConfig(run=run, conditions=[plain, bad])


def test_flip_dims_cover_every_step_of_a_chunk():
    import gymnasium as gym

    from robo.errors import RoboError
    from robo.rl.train import RLConfig, flip_dims

    space = gym.spaces.Box(-1.0, 1.0, (12,))  # 3 steps of 4 values
    cfg = RLConfig(env="tabletop/reach-v0", action_chunk=3, flip_prob=0.1)
    assert flip_dims(cfg, space) == (3, 7, 11)
    cfg.flip_dim = 0
    assert flip_dims(cfg, space) == (0, 4, 8)
    cfg.flip_dim = 4
    with pytest.raises(RoboError, match="--flip_dim 4: the env's actions have 4 dimensions"):
        flip_dims(cfg, space)


def _ended(model_success: bool, env_success: bool, peak: float, tag: int) -> dict:
    """The info of an episode's last step, with key frames marked by ``tag``."""
    frame = lambda v: np.full((1, 4, 4, 3), v, np.uint8)  # noqa: E731
    return {
        "success": env_success,
        "reward_terms": {"model_success": model_success},
        "terminal_frames": frame(250),
        "episode_key_frames": {
            "first": frame(0),
            "peak": frame(tag),
            "peak_potential": peak,
            "success": frame(100 + tag) if env_success else None,
        },
    }


def test_refinement_labels_the_frames_the_outcome_is_about_and_balances_the_outcomes(tmp_path):
    """A false success adds the frame its detection fired on (the peak), a missed success
    the frame the env first succeeded on; agreeing episodes of the minority outcome (the
    highest-rated failures, recent detected successes) are added to balance them."""
    from robo.rl.refine import RefineCallback

    cb = RefineCallback(None, None, "", tmp_path, pool_size=2)
    episodes = [
        _ended(False, False, 0.5, 1),  # agreeing failures: hard negatives by peak
        _ended(False, False, 0.9, 2),
        _ended(False, False, 0.7, 3),
        _ended(True, True, 1.0, 4),  # agreeing success
        _ended(False, True, 0.8, 5),  # missed successes
        _ended(False, True, 0.6, 6),
        _ended(True, False, 0.97, 7),  # a false success
    ]
    for info in episodes:
        cb._track([info], [True])
    assert [(int(f[1].flat[0]), ok) for f, ok in cb.pending] == [
        (105, True),
        (106, True),
        (7, False),
    ]
    assert cb.window == {
        "episodes": 7,
        "env_failures": 4,
        "false_successes": 1,
        "missed_successes": 2,
    }
    assert all(int(f[0].flat[0]) == 0 for f, _ in cb.pending)  # the episode's first frames
    assert cb._balance_pending() == 1
    assert (int(cb.pending[-1][0][1].flat[0]), cb.pending[-1][1]) == (2, False)  # peak 0.9
    assert [p for p, *_ in sorted(cb._hard_failures)] == [0.7]  # 0.5 fell out of the pool

    cb.pending = [cb.pending[-2]]  # one false success: a detected success balances it
    assert cb._balance_pending() == 1 and cb.pending[-1][1] and not cb._successes
    assert cb._balance_pending() == 0  # balanced now

    off = RefineCallback(None, None, "", tmp_path, balance=False)
    for info in episodes:
        off._track([info], [True])
    assert off._balance_pending() == 0 and not off._hard_failures and len(off.pending) == 3

    legacy = RefineCallback(None, None, "", tmp_path)  # no key frames: the final frames
    info = _ended(True, False, 1.0, 7)
    del info["episode_key_frames"]
    info["episode_first_frames"] = np.zeros((1, 4, 4, 3), np.uint8)
    legacy._track([info], [True])
    assert int(legacy.pending[0][0][1].flat[0]) == 250


def test_eval_reports_the_critics_start_value_and_the_discounted_success():
    import gymnasium as gym
    import torch as th

    from robo.rl.callbacks import run_eval_episodes
    from robo.rl.demosac import DemoSAC

    class SucceedsAtThree(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.full(3, 0.5, np.float32), {}

        def step(self, action):
            self.t += 1
            done = self.t == 3
            return np.full(3, 0.5, np.float32), float(done), done, False, {"success": done}

    env = SucceedsAtThree()
    policy = DemoSAC("MlpPolicy", env, gamma=0.9, seed=0, learning_starts=0)
    row = run_eval_episodes(policy, env, episodes=2, seed=0)
    assert row["success_rate"] == 1.0 and row["mean_length"] == 3.0
    assert row["return_start"] == pytest.approx(0.9**2)  # the success reward of decision 3
    obs = th.full((1, 3), 0.5)
    with th.no_grad():
        act = policy.actor(obs, deterministic=True)
        q = th.min(*policy.critic(obs, act)).item()
    assert row["q_start"] == pytest.approx(q, abs=1e-5)


def test_pbrs_values_are_bounded_per_state_by_the_next_potential(demos_and_model, tmp_path):
    """--q_clip_potential: the demos carry their next-state potentials, the replay buffer
    keeps them, and each bootstrapped value is clipped to the sparse range less Phi(s')."""
    import torch as th

    from robo.rl.demosac import DemoSAC

    demos, grm = demos_and_model
    out = tmp_path / "pot"
    args = ["rl", "train", "--env", "tabletop/reach-v0", "--demos", demos, "--reward", "privileged"]
    args += ["--shaping.mode", "pbrs", "--q_clip_potential", "true", "--steps", "60"]
    args += ["--bc_epochs", "2", "--critic_warmup", "2", "--eval_every", "60"]
    args += ["--eval_episodes", "1", "--max_episode_steps", "20", "--out", str(out)]
    assert main(args) == 0
    policy = DemoSAC.load(out / "final_policy")
    assert tuple(policy.potential_bounds) == (0.0, 1.0)
    # a real deferred run: every stored transition gets its potential once its reward is in
    from robo.deferred_reward import DeferredPotentialReplayBuffer
    from robo.rl.train import RLConfig, build

    cfg = RLConfig(env="tabletop/reach-v0", reward=f"grm:{grm}", demos=demos, q_clip_potential=True)
    cfg.max_episode_steps, cfg.out = 20, str(tmp_path / "b")
    cfg.__post_init__()
    _, _, venv, algo = build(cfg)
    try:
        algo.learn(45)
        venv.flush()
        buf = algo.replay_buffer
        assert isinstance(buf, DeferredPotentialReplayBuffer) and buf.pos == 45
        pots = buf.next_potentials[: buf.pos, 0]
        assert np.isfinite(pots).all() and 0 <= pots.min() and pots.max() <= 1 and pots.std() > 0
    finally:
        venv.close()
    # the bound itself: rows with a known potential are clipped, the others are not
    policy.potential_bounds = (0.0, 1.0)
    next_q = th.tensor([[0.9], [0.9], [-0.5], [0.9]])
    phi = th.tensor([[0.5], [0.0], [0.2], [float("nan")]])
    got = policy._bound_next_value(next_q, phi).ravel().tolist()
    assert got == pytest.approx([0.5, 0.9, -0.2, 0.9])


def test_demo_transitions_carry_the_potential_of_the_bootstrapped_state(demos_and_model):
    from robo.rl.train import PrivilegedPotential, RLConfig
    from robo.rl.warmstart import demo_transitions, load_demos

    demos, _ = demos_and_model
    eps, _ = load_demos(demos, None)
    for n in (1, 3):
        cfg = RLConfig(env="tabletop/reach-v0", reward="privileged", demos=demos, n_step=n)
        tr = demo_transitions(eps, (), PrivilegedPotential(), None, cfg)
        p = np.asarray(eps[0].privileged_progress, np.float64)
        T = len(p) - 1
        last = np.minimum(np.arange(T) + n - 1, T - 1)  # reach demos end on success
        np.testing.assert_allclose(tr["next_phi"][:T], p[1:][last])
