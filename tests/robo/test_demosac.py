"""DemoSAC and the warm start: cloning fits the demonstrations, critic pre-training leaves
the actor untouched, RL updates keep the actor near the demonstrations."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from robo.rl.demosac import DemoSAC
from robo.rl.warmstart import behaviour_clone, pretrain_critic


class Line(gym.Env):
    """1-D: move a point to the origin; the expert action is -x (clipped)."""

    observation_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, 1).astype(np.float32)
        self.t = 0
        return self.x.copy(), {}

    def step(self, action):
        self.x = np.clip(self.x + 0.5 * np.asarray(action, np.float32), -2, 2)
        self.t += 1
        done = bool(abs(self.x[0]) < 0.05)
        return self.x.copy(), float(done), done, self.t >= 20, {"success": done}


def demos(n=400, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    act = np.clip(-2 * obs, -1, 1)
    nxt = np.clip(obs + 0.5 * act, -2, 2)
    done = np.abs(nxt[:, 0]) < 0.05
    return {"obs": obs, "act": act, "rew": done.astype(np.float32), "next": nxt, "done": done}


def actor_params(algo):
    return [p.detach().clone() for p in algo.actor.parameters()]


@pytest.fixture()
def algo():
    torch.manual_seed(0)
    a = DemoSAC(
        "MlpPolicy", Line(), learning_starts=0, seed=0, ent_coef="auto_0.01", bc_weight=10.0
    )
    tr = demos()
    behaviour_clone(a.policy, tr["obs"], tr["act"], epochs=150, std=0.2)
    a.set_demos(tr)
    return a, tr


def test_behaviour_clone_fits_mean_and_noise(algo):
    a, tr = algo
    mean, log_std, _ = a.actor.get_action_dist_params(torch.as_tensor(tr["obs"]))
    err = (torch.tanh(mean).detach().numpy() - np.clip(tr["act"], -0.999, 0.999)).__abs__().mean()
    assert err < 0.1
    assert np.allclose(log_std.exp().detach().numpy(), 0.2, atol=0.1)


def test_critic_pretraining_leaves_actor_and_entropy_untouched(algo):
    a, _ = algo
    before, ent = actor_params(a), a.log_ent_coef.item()
    critic_before = [p.detach().clone() for p in a.critic.parameters()]
    pretrain_critic(a, 20)
    assert all(torch.equal(x, y) for x, y in zip(before, actor_params(a), strict=True))
    assert a.log_ent_coef.item() == ent
    assert any(
        not torch.equal(x, y) for x, y in zip(critic_before, a.critic.parameters(), strict=True)
    )


def test_rl_with_bc_term_keeps_the_cloned_policy(algo):
    a, tr = algo
    pretrain_critic(a, 50)
    a.learn(300)
    pred, _ = a.predict(tr["obs"], deterministic=True)
    assert np.abs(pred - tr["act"]).mean() < 0.25
    assert a.logger.name_to_value.get("train/bc_loss", 0.0) >= 0.0


def test_actor_delay_trains_the_critic_on_replay_while_the_actor_stays_the_clone():
    """Within ``actor_delay`` env steps only the critic moves, and its batches hold the
    policy's own rollouts beside the demos; past the delay the actor learns as usual."""
    torch.manual_seed(0)
    a = DemoSAC(
        "MlpPolicy", Line(), learning_starts=0, seed=0, ent_coef="auto_0.01", actor_delay=200
    )
    a.set_demos(demos())
    before, ent = actor_params(a), a.log_ent_coef.item()
    critic_before = [p.detach().clone() for p in a.critic.parameters()]
    a.learn(150)
    assert all(torch.equal(x, y) for x, y in zip(before, actor_params(a), strict=True))
    assert a.log_ent_coef.item() == ent
    assert any(
        not torch.equal(x, y) for x, y in zip(critic_before, a.critic.parameters(), strict=True)
    )
    *_, n_demo, _ = a._batch(64, demos_only=False)
    assert n_demo == 16  # the default demo_ratio 0.25: the rest comes from replay
    a.learn(150, reset_num_timesteps=False)  # past the delay
    assert any(not torch.equal(x, y) for x, y in zip(before, actor_params(a), strict=True))
    with pytest.raises(ValueError, match="actor_delay"):
        DemoSAC("MlpPolicy", Line(), actor_delay=-1)


def test_demo_share_of_batches():
    a = DemoSAC("MlpPolicy", Line(), learning_starts=0, seed=0, demo_ratio=0.5)
    a.set_demos(demos(50))
    a.learn(10)
    *_, n_demo, clone = a._batch(64, demos_only=False)
    assert n_demo == 32 and clone.shape == (32, 1) and bool((clone == 1).all())
    *_, n_all, _ = a._batch(64, demos_only=True)
    assert n_all == 64
    with pytest.raises(ValueError, match="demo_ratio"):
        DemoSAC("MlpPolicy", Line(), demo_ratio=1.0)


def test_bc_term_skips_demo_rows_not_marked_for_cloning():
    """Rows whose action is not the expert's (a recovery demo's scripted slip) are in the
    critic's batches but not cloned: with half the demos' actions replaced by junk (+1
    everywhere) and masked out, the actor still follows the expert (-2x); unmasked, the
    junk pulls it off."""
    tr = demos(400)
    junk = dict(tr, act=tr["act"].copy())
    junk["act"][::2] = 1.0
    errs = {}
    for masked in (True, False):
        torch.manual_seed(0)
        a = DemoSAC(
            "MlpPolicy", Line(), learning_starts=0, seed=0, ent_coef="auto_0.01", bc_weight=10.0
        )
        clone = np.ones(len(tr["obs"]), bool)
        if masked:
            clone[::2] = False
        a.set_demos(dict(junk, clone=clone))
        a.learn(400)
        pred, _ = a.predict(tr["obs"], deterministic=True)
        errs[masked] = float(np.abs(pred - tr["act"]).mean())
    assert errs[True] < 0.25 < errs[False]


class _PreferSmallActions(torch.nn.Module):
    """A stand-in critic pair rating an action by -a^2 (for the Q-filter's decision only)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, obs, action):
        q = -(action**2).sum(1, keepdim=True) + self.w
        return (q, q)


@pytest.mark.parametrize("q_filter, bc_positive", [(False, True), (True, False)])
def test_q_filter_drops_bc_where_the_critic_prefers_the_actor(q_filter, bc_positive):
    a = DemoSAC("MlpPolicy", Line(), learning_starts=0, seed=0, q_filter=q_filter, demo_ratio=0.5)
    tr = demos()
    tr["act"] = np.sign(tr["act"]) * 0.9  # large demo actions: rated below the actor's (~0)
    a.set_demos(tr)
    a.learn(2)  # one transition in the replay buffer
    _swap_critic(a, _PreferSmallActions())
    a.train(1, batch_size=32)
    bc = a.logger.name_to_value["train/bc_loss"]
    assert (bc > 0) == bc_positive


def ibrl_algo():
    torch.manual_seed(0)
    a = DemoSAC("MlpPolicy", Line(), learning_starts=0, seed=0, ent_coef="auto_0.01", ibrl=True)
    tr = demos()
    behaviour_clone(a.policy, tr["obs"], tr["act"], epochs=100, std=0.2)
    a.freeze_bc_actor()
    a.set_demos(tr)
    return a, tr


def test_ibrl_acts_with_the_proposal_the_critic_rates_higher():
    a, tr = ibrl_algo()
    with torch.no_grad():  # the RL actor drifts away from the clone
        for p in a.actor.parameters():
            p.add_(torch.randn_like(p))
    pretrain_critic(a, 50)
    obs = torch.as_tensor(tr["obs"][:64])
    chosen, _ = a.predict(tr["obs"][:64], deterministic=True)
    with torch.no_grad():
        a_rl, a_bc = a.actor(obs, True), a.bc_actor(obs, True)
        q_rl, q_bc = a._q_value(a.critic, obs, a_rl), a._q_value(a.critic, obs, a_bc)
    expected = torch.where(q_bc > q_rl, a_bc, a_rl).numpy()
    np.testing.assert_allclose(chosen, expected, atol=1e-6)
    assert 0 < (q_bc > q_rl).float().mean() < 1 or not np.allclose(a_rl, a_bc)
    # the clone is frozen: RL updates move the actor, never the proposal
    before = [p.clone() for p in a.bc_actor.parameters()]
    actor_before = actor_params(a)
    a.learn(40, progress_bar=False)
    assert not all(torch.equal(x, y) for x, y in zip(actor_before, actor_params(a), strict=True))
    assert all(torch.equal(x, y) for x, y in zip(before, a.bc_actor.parameters(), strict=True))


def test_ibrl_policy_saves_and_loads_with_its_proposal(tmp_path):
    a, tr = ibrl_algo()
    with torch.no_grad():
        for p in a.actor.parameters():
            p.add_(torch.randn_like(p))
    pretrain_critic(a, 20)
    a.save(tmp_path / "policy")
    b = DemoSAC.load(tmp_path / "policy")
    assert b.ibrl and b.bc_actor is not None
    x = tr["obs"][:32]
    np.testing.assert_allclose(
        b.predict(x, deterministic=True)[0], a.predict(x, deterministic=True)[0], atol=1e-6
    )
    # one observation (not vectorised) gives one action
    assert b.predict(x[0], deterministic=True)[0].shape == (1,)


def test_layernorm_critic_trains_saves_and_loads(tmp_path):
    from robo.rl.demosac import LayerNormSACPolicy

    torch.manual_seed(0)
    a = DemoSAC(LayerNormSACPolicy, Line(), learning_starts=0, seed=0)
    for critic in (a.critic, a.critic_target):
        assert [type(m).__name__ for m in critic.qf0].count("LayerNorm") == 2
    norm = a.critic.qf0[1]
    assert any(p is norm.weight for g in a.critic.optimizer.param_groups for p in g["params"])
    before = norm.weight.detach().clone()
    a.learn(60, progress_bar=False)
    assert not torch.equal(before, norm.weight)  # the norms are trained with the critic
    a.save(tmp_path / "ln")
    b = DemoSAC.load(tmp_path / "ln")
    x = torch.zeros(4, 1), torch.zeros(4, 1)
    with torch.no_grad():
        assert torch.allclose(b.critic(*x)[0], a.critic(*x)[0])


def test_critic_ensemble_target_is_the_min_of_a_random_subset(tmp_path):
    torch.manual_seed(0)
    a = DemoSAC(
        "MlpPolicy",
        Line(),
        learning_starts=0,
        seed=0,
        critic_subset=2,
        policy_kwargs={"n_critics": 5},
    )
    assert len(a.critic.q_networks) == 5
    obs = torch.as_tensor(demos(64)["obs"])
    act = torch.zeros(64, 1)
    q = torch.cat(a.critic(obs, act), dim=1)
    # the actor's value is the ensemble mean; the target the minimum of 2 of the 5
    assert torch.allclose(a._q_value(a.critic, obs, act), q.mean(1, keepdim=True))
    subsets = set()
    for _ in range(40):
        t = a._q_target(a.critic, obs, act)
        cols = [i for i in range(5) if torch.all(t[:, 0] <= q[:, i] + 1e-6)]
        assert cols and torch.all(t >= q.min(1, keepdim=True)[0] - 1e-6)
        subsets.add(tuple(t[:3, 0].tolist()))
    assert len(subsets) > 1  # a different subset on different updates
    a.set_demos(demos())
    a.learn(20, progress_bar=False)  # ensemble updates run
    a.save(tmp_path / "p")
    b = DemoSAC.load(tmp_path / "p")
    assert len(b.critic.q_networks) == 5 and b.critic_subset == 2


def test_critic_subset_larger_than_the_ensemble_is_an_error():
    with pytest.raises(ValueError, match="critic_subset"):
        DemoSAC("MlpPolicy", Line(), critic_subset=3)


def test_bounded_td_targets_keep_the_critic_within_the_return_range():
    torch.manual_seed(0)
    tr = demos()
    tr["rew"] = np.full(len(tr["obs"]), 5.0, np.float32)  # would drive Q towards 5 / (1 - gamma)
    tr["done"] = np.zeros(len(tr["obs"]), bool)
    qs = {}
    for bounds in (None, (-1.0, 2.0)):
        a = DemoSAC("MlpPolicy", Line(), learning_starts=0, seed=0, q_bounds=bounds)
        a.set_demos(tr)
        pretrain_critic(a, 300)
        with torch.no_grad():
            obs = torch.as_tensor(tr["obs"][:64])
            qs[bounds] = torch.cat(a.critic(obs, a.actor(obs, True)), 1).max().item()
    assert qs[(-1.0, 2.0)] < 2.5 < qs[None]
    with pytest.raises(ValueError, match="q_bounds"):
        DemoSAC("MlpPolicy", Line(), q_bounds=(1.0, 1.0))


def test_without_entropy_backup_the_critic_learns_the_plain_return():
    torch.manual_seed(0)
    tr = demos()
    tr["rew"] = np.zeros(len(tr["obs"]), np.float32)  # the plain return is 0 everywhere
    tr["done"] = np.zeros(len(tr["obs"]), bool)
    qs = {}
    for backup in (True, False):
        a = DemoSAC(
            "MlpPolicy", Line(), learning_starts=0, seed=0, ent_coef=5.0, backup_entropy=backup
        )
        a.set_demos(tr)
        pretrain_critic(a, 300)
        with torch.no_grad():
            obs = torch.as_tensor(tr["obs"][:64])
            qs[backup] = torch.cat(a.critic(obs, a.actor(obs, True)), 1).abs().max().item()
    # soft values collect the entropy bonus; plain ones stay at the return
    assert qs[False] < 0.25 < 2.0 < qs[True]


def test_backup_entropy_auto_is_off_where_targets_are_clipped():
    from robo.rl.train import RLConfig, backup_entropy
    from robo.shaping import ShapingConfig

    def cfg(mode, **kw):
        return RLConfig(env="tabletop/reach-v0", shaping=ShapingConfig(mode=mode), **kw)

    assert not backup_entropy(cfg("sparse")) and not backup_entropy(cfg("pbrs"))
    assert backup_entropy(cfg("oracle")) and backup_entropy(cfg("naive"))
    assert backup_entropy(cfg("pbrs", q_clip=False))
    assert not backup_entropy(cfg("pbrs", q_clip=False, q_clip_potential=True))
    assert backup_entropy(cfg("sparse", backup_entropy="true"))
    assert not backup_entropy(cfg("oracle", backup_entropy="false"))


def test_recovery_demos_feed_the_critic_and_clone_only_expert_actions(tmp_path):
    """A store of an expert demo, a recovery demo and a non-demo rollout: the warm start
    takes the two demos, all their transitions go to the critic, and the recovery demo's
    slip steps are left out of cloning."""
    from robo.cli import main
    from robo.rl.train import RLConfig, _NoModel
    from robo.rl.warmstart import demo_transitions, load_demos
    from robo.store import EpisodeStore

    out = str(tmp_path / "pp")
    for policy in ("expert", "recover", "half"):
        args = ["collect", "--env", "tabletop/pick-place-v0", "--episodes", "1"]
        assert (
            main([*args, "--size", "24", "--views", "front", "--policy", policy, "--out", out]) == 0
        )
    store = EpisodeStore.open(out)
    slips = store.episode(1).extra["perturbed"]
    assert len(slips) >= 3
    eps, views = load_demos(out, _NoModel())
    assert [e.policy for e in eps] == ["expert", "recover"]
    tr = demo_transitions(eps, views, _NoModel(), None, RLConfig(env="tabletop/pick-place-v0"))
    n_expert, n_recover = len(eps[0]) - 1, len(eps[1]) - 1
    assert len(tr["obs"]) == len(tr["clone"]) == n_expert + n_recover
    assert tr["clone"][:n_expert].all()
    assert np.flatnonzero(~tr["clone"]).tolist() == [n_expert + t for t in slips]
    assert tr["done"].sum() == 2  # both demos end in success
    succ = np.concatenate([e.success[1:] for e in eps])
    np.testing.assert_array_equal(tr["rew"] > 0, succ)  # sparse reward by default


def test_n_step_returns_of_a_demo():
    from robo.rl.warmstart import n_step_returns

    rew, term = np.array([0.0, 0.0, 0.0, 1.0]), np.array([False, False, False, True])
    ret, last, disc = n_step_returns(rew, term, 0.5, 3)
    np.testing.assert_allclose(ret, [0.0, 0.25, 0.5, 1.0])  # 1 * 0.5^2 from row 1
    assert last.tolist() == [2, 3, 3, 3]
    np.testing.assert_allclose(disc, [0.125, 0.125, 0.25, 0.5])
    one, last1, disc1 = n_step_returns(rew, term, 0.5, 1)
    np.testing.assert_allclose(one, rew)
    assert last1.tolist() == [0, 1, 2, 3] and np.allclose(disc1, 0.5)


def test_observation_stats_floor_constant_dimensions_and_reject_bad_states():
    from robo.errors import RoboError
    from robo.rl.warmstart import observation_stats

    rng = np.random.default_rng(0)
    states = np.stack([rng.normal(1.0, 0.2, 500), rng.normal(0, 0.4, 500), np.zeros(500)], 1)
    mean, std = observation_stats(states, floor=0.1)
    np.testing.assert_allclose(mean, [1.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(std[:2], [0.2, 0.4], rtol=0.1)
    # the constant (padding) slot gets a tenth of the median std of the varying ones
    assert std[2] == pytest.approx(0.1 * np.median(std[:2]))
    with pytest.raises(RoboError, match="at least 2 finite"):
        observation_stats(np.full((3, 2), np.nan))
    with pytest.raises(RoboError, match="at least 2 finite"):
        observation_stats(np.zeros((1, 2)))


def test_observation_stats_take_the_scenes_spread_where_the_demos_show_one_scene():
    from robo.errors import RoboError
    from robo.rl.warmstart import observation_stats, scene_states

    rng = np.random.default_rng(0)
    # one demonstration: the hand moves (dim 0), the object sits still at 0.3 (dim 1)
    demo = np.stack([np.linspace(0, 1, 50), np.full(50, 0.3)], 1)
    scenes = np.stack([np.zeros(200), rng.uniform(-0.5, 0.5, 200)], 1)
    mean, std = observation_stats(demo)
    # alone, the demo puts the object's std at the floor: other scenes land many stds away
    assert abs(-0.4 - mean[1]) / std[1] > 5
    mean, std = observation_stats(demo, scenes=scenes)
    # the hand keeps the demo's statistics, the object takes the scenes'
    assert mean[0] == pytest.approx(0.5) and std[0] == pytest.approx(np.linspace(0, 1, 50).std())
    assert mean[1] == pytest.approx(scenes[:, 1].mean()) and std[1] == pytest.approx(
        scenes[:, 1].std()
    )
    assert np.all(np.abs((scenes - mean) / std) < 2)  # every scene inside the clip
    with pytest.raises(RoboError, match="do not fit"):
        observation_stats(demo, scenes=np.zeros((4, 3)))

    class Resets(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    got = scene_states(Resets, n=8, seed=5)
    assert got.shape == (8, 2) and np.allclose(got, scene_states(Resets, n=8, seed=5))
    assert len(np.unique(got[:, 0])) == 8  # a new scene every reset


class MilliLine(Line):
    """``Line`` observed in millimetres' worth of metres: the state is 0.003 x."""

    observation_space = gym.spaces.Box(-0.006, 0.006, (1,), np.float32)

    def reset(self, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        return obs * 0.003, info

    def step(self, action):
        obs, *rest = super().step(action)
        return (obs * 0.003, *rest)


def test_normalised_observations_let_cloning_resolve_millimetres_and_save_with_the_policy(
    tmp_path,
):
    from robo.errors import RoboError
    from robo.rl.warmstart import ObsNormalizer, observation_stats

    tr = demos()
    obs = tr["obs"] * 0.003
    mean, std = observation_stats(obs)
    kw = {
        "features_extractor_class": ObsNormalizer,
        "features_extractor_kwargs": {"mean": mean, "std": std},
    }
    losses = {}
    for name, policy_kwargs in (("raw", {}), ("normalised", kw)):
        torch.manual_seed(0)
        a = DemoSAC(
            "MlpPolicy", MilliLine(), learning_starts=0, seed=0, policy_kwargs=policy_kwargs
        )
        losses[name] = behaviour_clone(a.policy, obs, tr["act"], epochs=60, std=0.2)
    assert losses["normalised"] < 0.2 * losses["raw"], losses
    for net in (a.actor, a.critic, a.critic_target):
        assert isinstance(net.features_extractor, ObsNormalizer)
    # far outside the demonstrations the normalised input is clipped
    big = a.actor.features_extractor(torch.full((1, 1), 10.0))
    assert float(big) == pytest.approx(5.0)
    a.save(tmp_path / "norm")
    b = DemoSAC.load(tmp_path / "norm")
    np.testing.assert_allclose(
        b.predict(obs[:16], deterministic=True)[0],
        a.predict(obs[:16], deterministic=True)[0],
        atol=1e-6,
    )
    with pytest.raises(RoboError, match="do not fit observations of 1 values"):
        ObsNormalizer(MilliLine.observation_space, [0.0, 0.0], [1.0, 1.0])


def test_normaliser_can_select_the_inputs_the_networks_see():
    from robo.errors import RoboError
    from robo.rl.warmstart import ObsNormalizer

    space = gym.spaces.Box(-10, 10, (4,), np.float32)
    norm = ObsNormalizer(space, [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 2.0, 1.0], keep=[3, 0, 2])
    assert norm.features_dim == 3
    x = torch.tensor([[1.0, 5.0, 6.0, 4.0]])
    np.testing.assert_allclose(norm(x).numpy(), [[1.0, 1.0, 2.0]])
    for keep in ([], [0, 4], [1, 1]):
        with pytest.raises(RoboError, match="must be distinct and lie in 0..3"):
            ObsNormalizer(space, [0.0] * 4, [1.0] * 4, keep=keep)
    # the selection comes from the kwargs: weights saved without it, or with it, both load
    weights = {"mean": norm.mean.clone(), "std": norm.std.clone()}
    fresh = ObsNormalizer(space, [0.0] * 4, [1.0] * 4, keep=[3, 0, 2])
    fresh.load_state_dict(weights)
    fresh.load_state_dict({**weights, "keep": torch.tensor([0, 1, 2, 3])})
    np.testing.assert_allclose(fresh(x).numpy(), [[1.0, 1.0, 2.0]])


def test_normaliser_appends_relative_positions_and_drops_unused_object_slots():
    """Relative positions obs[a] - obs[b] follow the observation; keep indices past its
    length pick them; a pair whose object slot is zero in every demo and scene is not seen
    (it would be the hand's absolute position)."""
    from types import SimpleNamespace

    from robo.errors import RoboError
    from robo.rl.warmstart import ObsNormalizer, extend_obs, obs_norm_kwargs

    space = gym.spaces.Box(-10, 10, (4,), np.float32)
    rel = [(1, 0), (3, 0)]
    std = [1.0, 1.0, 1.0, 1.0, 2.0, 1.0]
    norm = ObsNormalizer(space, [0.0] * 6, std, keep=[2, 4], relative=rel)
    x = torch.tensor([[1.0, 5.0, 4.0, 0.0]])
    np.testing.assert_allclose(norm(x).numpy(), [[4.0, 2.0]])  # (5 - 1) / 2
    np.testing.assert_allclose(extend_obs(x.numpy(), rel), [[1.0, 5.0, 4.0, 0.0, 4.0, -1.0]])
    with pytest.raises(RoboError, match="relative observation pairs"):
        ObsNormalizer(space, [0.0] * 5, [1.0] * 5, relative=[(4, 0)])
    with pytest.raises(RoboError, match="2 relative positions"):
        ObsNormalizer(space, [0.0] * 4, [1.0] * 4, relative=rel)
    rng = np.random.default_rng(0)
    states = rng.normal(size=(20, 4))
    states[:, 3] = 0.0  # an object slot the task does not use
    scenes = rng.normal(size=(8, 4))
    scenes[:, 3] = 0.0
    kw = obs_norm_kwargs([SimpleNamespace(states=states)], [2, 4, 5], scenes, rel)
    fe = kw["features_extractor_kwargs"]
    assert fe["keep"] == [2, 4] and fe["relative"] == [[1, 0], [3, 0]]
    assert len(fe["mean"]) == 6
    # the relative features' statistics are those of the differences
    ext = extend_obs(np.concatenate([states]), rel)
    assert fe["mean"][4] == pytest.approx(ext[:, 4].mean(), abs=0.5)
    # the same slot in use: its relative position stays
    states[:, 3] = rng.normal(size=20)
    kw = obs_norm_kwargs([SimpleNamespace(states=states)], [2, 4, 5], scenes, rel)
    assert kw["features_extractor_kwargs"]["keep"] == [2, 4, 5]


def test_self_imitation_rows_join_the_bc_term(algo):
    """The policy's own successes are cloned beside the demos: in states the demos never
    show (x in [1.5, 2]) the actor follows the successful episodes' action, not the demos'
    extrapolation (-1 there)."""
    a, _ = algo
    x = np.linspace(1.5, 2.0, 64, dtype=np.float32)[:, None]
    a.add_self_demos(x[:32], np.ones((32, 1)))
    a.add_self_demos(x[32:], np.full((32, 1), 1.5))  # clipped to the action range
    assert len(a.self_demos["obs"]) == 64 and float(a.self_demos["act"].max()) == 1.0
    a.learn(300, progress_bar=False)
    mu = a.actor(torch.as_tensor(x), deterministic=True).detach().numpy()
    assert mu.mean() > 0.5
    a.max_self_demos = 40
    a.add_self_demos(x[:8], np.zeros((8, 1)))
    assert len(a.self_demos["obs"]) == 40 and float(a.self_demos["act"][-1]) == 0.0


def test_self_imitation_callback_hands_over_whole_successful_episodes():
    from robo.rl.callbacks import SelfImitationCallback

    torch.manual_seed(0)
    a = DemoSAC("MlpPolicy", Line(), learning_starts=0, seed=0, ent_coef="auto_0.01")
    tr = demos()
    behaviour_clone(a.policy, tr["obs"], tr["act"], epochs=150, std=0.2)
    a.set_demos(tr)
    episodes = []
    add = a.add_self_demos
    a.add_self_demos = lambda o, act: (episodes.append((o, act)), add(o, act))
    cb = SelfImitationCallback()
    a.learn(200, callback=cb, progress_bar=False)
    assert cb.episodes == len(episodes) > 3
    assert cb.transitions == sum(len(o) for o, _ in episodes) == len(a.self_demos["obs"])
    for o, act in episodes:
        assert abs(o[0, 0]) <= 1.0  # starts where Line resets
        # the last action takes the point to the origin: the episode's success
        assert abs(np.clip(o[-1, 0] + 0.5 * act[-1, 0], -2, 2)) < 0.05
        # each action leads to the next observation
        np.testing.assert_allclose(
            np.clip(o[:-1, 0] + 0.5 * act[:-1, 0], -2, 2), o[1:, 0], atol=1e-5
        )


class _PreferLargeActions(torch.nn.Module):
    """A stand-in critic pair rating an action by its value: it always wants more."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, obs, action):
        q = action.sum(1, keepdim=True) + self.w
        return (q, q)


def _swap_critic(a, critic):
    """Put a stand-in critic (fixed ratings, zero learning rate) in place of ``a``'s, keeping
    the real one's parameters for the target update."""
    real = a.critic
    a.critic = critic
    a.critic.optimizer = torch.optim.SGD([critic.w], lr=0.0)
    a.critic.parameters = real.parameters  # keep the target update working
    return a


def _awac(**kwargs):
    """DemoSAC on Line with AWAC, mostly demonstrations in the batch and no BC term."""
    torch.manual_seed(0)
    args = dict(learning_starts=0, seed=0, demo_ratio=0.9, bc_weight=0.0, actor_update="awac")
    return DemoSAC("MlpPolicy", Line(), **{**args, **kwargs})


def _two_mode_demos(n=512):
    """Demonstrations whose actions are -0.5 (even rows) and +0.5 (odd rows)."""
    tr = demos(n=n)
    tr["act"] = np.where(np.arange(n) % 2 == 1, 0.5, -0.5).astype(np.float32)[:, None]
    return tr


@pytest.mark.parametrize("update", ["sac", "awac"])
def test_awac_actor_moves_to_the_better_data_action_and_not_beyond(update):
    """Demonstrated actions are -0.5 and +0.5 at random; the critic rates larger actions
    higher everywhere. SAC's actor follows the critic past the data to the bound; AWAC's
    weighted likelihood moves it to the better demonstrated action and stops there."""
    a = _awac(ent_coef="auto_0.01", actor_update=update, awac_beta=0.1)
    tr = _two_mode_demos()
    behaviour_clone(a.policy, tr["obs"], np.zeros_like(tr["act"]), epochs=50, std=0.3)
    a.set_demos(tr)
    a.learn(2)  # a transition in the replay buffer
    _swap_critic(a, _PreferLargeActions())
    ent = a.log_ent_coef.item()
    a.train(300, batch_size=64)
    mu = a.actor(torch.as_tensor(tr["obs"]), deterministic=True).mean().item()
    if update == "awac":
        assert 0.3 < mu < 0.65
        assert a.log_ent_coef.item() == ent  # no entropy tuning under AWAC
        assert a.logger.name_to_value["train/awac_max_weight"] > 1.0
    else:
        assert mu > 0.9


def test_awac_with_uninformative_critic_clones_the_batch():
    """Equal advantages give equal weights: AWAC is plain maximum likelihood on the batch."""
    a = _awac()
    tr = _two_mode_demos()
    a.set_demos(tr)
    a.learn(2)
    critic = _PreferLargeActions()
    critic.forward = lambda obs, action: (critic.w.expand(len(obs), 1),) * 2
    _swap_critic(a, critic)
    a.train(300, batch_size=64)
    mu = a.actor(torch.as_tensor(tr["obs"]), deterministic=True).mean().item()
    assert abs(mu) < 0.2


def test_awac_settings_are_checked():
    with pytest.raises(ValueError, match="actor_update"):
        DemoSAC("MlpPolicy", Line(), actor_update="td3")
    with pytest.raises(ValueError, match="awac_beta"):
        DemoSAC("MlpPolicy", Line(), actor_update="awac", awac_beta=0.0)
    with pytest.raises(ValueError, match="awac_advantage"):
        DemoSAC("MlpPolicy", Line(), actor_update="awac", awac_advantage="gae")


@pytest.mark.parametrize("normalize, beta, gap", [(False, 0.02, 0.1), (True, 1.0, 0.001)])
def test_awac_return_advantage_follows_the_batch_returns_without_the_critic(normalize, beta, gap):
    """Critic-free advantage: the transitions' own (n-step, shaped) returns weight them. The
    +0.5 actions carry a higher return than the -0.5 ones, whatever the critic thinks; with
    standardised advantages even a tiny gap decides."""
    a = _awac(awac_advantage="return", awac_beta=beta, awac_normalize=normalize)
    tr = _two_mode_demos()
    tr["rew"] = np.where(np.arange(512) % 2 == 1, gap, 0.0).astype(np.float32)
    a.set_demos(tr)
    a.learn(2)
    _swap_critic(a, _PreferSmallActions())  # would pull toward 0; ignored here
    a.train(300, batch_size=64)
    mu = a.actor(torch.as_tensor(tr["obs"]), deterministic=True).mean().item()
    assert 0.3 < mu < 0.65


def residual_algo(scale: float, **kwargs):
    torch.manual_seed(0)
    args = dict(learning_starts=0, seed=0, ent_coef="auto_0.01", residual_scale=scale)
    a = DemoSAC("MlpPolicy", Line(), **{**args, **kwargs})
    tr = demos()
    behaviour_clone(a.policy, tr["obs"], tr["act"], epochs=100, std=0.2)
    clone = a.actor(torch.as_tensor(tr["obs"]), deterministic=True).detach()
    a.freeze_bc_actor(residual_std=0.1)
    a.set_demos(tr)
    return a, tr, clone


def test_residual_starts_at_the_clone_and_stays_within_its_bound():
    """The residual starts at zero (the executed actions are the clone's); a critic that
    always wants larger actions pulls the correction to its bound and never past it."""
    a, tr, clone = residual_algo(0.3, bc_weight=0.0, demo_ratio=0.9)
    obs = torch.as_tensor(tr["obs"])
    start, _ = a.predict(tr["obs"], deterministic=True)
    np.testing.assert_allclose(start, clone.numpy(), atol=1e-6)
    with torch.no_grad():
        assert a.actor(obs, deterministic=True).abs().max() < 1e-6
        _, log_std, _ = a.actor.get_action_dist_params(obs)
    np.testing.assert_allclose(log_std.exp().numpy(), 0.1, rtol=1e-5)
    a.learn(2)  # a transition in the replay buffer
    _swap_critic(a, _PreferLargeActions())
    base = [p.clone() for p in a.bc_actor.parameters()]
    a.train(300, batch_size=64)
    moved = a.predict(tr["obs"], deterministic=True)[0] - clone.numpy()
    assert moved.max() <= 0.3 + 1e-5  # never past the bound
    assert moved[clone.numpy() < 0.6].mean() > 0.2  # pulled up to it where there is room
    assert all(torch.equal(x, y) for x, y in zip(base, a.bc_actor.parameters(), strict=True))
    # without the residual the same critic drags the actor far from the clone
    b = DemoSAC("MlpPolicy", Line(), learning_starts=0, seed=0, bc_weight=0.0, demo_ratio=0.9)
    behaviour_clone(b.policy, tr["obs"], tr["act"], epochs=100, std=0.2)
    b.set_demos(tr)
    b.learn(2)
    _swap_critic(b, _PreferLargeActions())
    b.train(300, batch_size=64)
    assert (b.predict(tr["obs"], deterministic=True)[0] - clone.numpy()).max() > 0.6


def test_residual_policy_saves_and_loads_with_its_base(tmp_path):
    a, tr, _ = residual_algo(0.5)
    with torch.no_grad():
        for p in a.actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    a.save(tmp_path / "policy")
    b = DemoSAC.load(tmp_path / "policy")
    assert b.residual_scale == 0.5 and b.bc_actor is not None
    x = tr["obs"][:32]
    np.testing.assert_allclose(
        b.predict(x, deterministic=True)[0], a.predict(x, deterministic=True)[0], atol=1e-6
    )
    assert b.predict(x[0], deterministic=True)[0].shape == (1,)


@pytest.mark.parametrize(
    "kwargs", [{"residual_scale": -0.1}, {"ibrl": True}, {"actor_update": "awac"}]
)
def test_residual_settings_are_checked(kwargs):
    with pytest.raises(ValueError):
        DemoSAC("MlpPolicy", Line(), **{"residual_scale": 0.5, **kwargs})


class Plane(Line):
    """Line with a second action dimension (a "gripper") that does nothing."""

    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def step(self, action):
        return super().step(np.asarray(action)[:1])


def test_flip_exploration_flips_only_the_given_dimension_in_rollouts():
    torch.manual_seed(0)
    a = DemoSAC(
        "MlpPolicy",
        Plane(),
        learning_starts=0,
        seed=0,
        gradient_steps=0,
        flip_prob=0.5,
        flip_dims=(1,),
    )  # no updates: the rollouts are the clone's, with flips
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (400, 1)).astype(np.float32)
    behaviour_clone(a.policy, obs, np.tile([0.0, 0.9], (400, 1)), epochs=100, std=0.05)
    a.learn(200)
    grip = a.replay_buffer.actions[: a.replay_buffer.pos, 0, 1]
    assert 0.3 < (grip < 0).mean() < 0.7  # about half the rollout steps flipped
    assert np.all(np.abs(np.abs(grip) - 0.9) < 0.3)  # flipped, not noised
    assert np.abs(a.replay_buffer.actions[: a.replay_buffer.pos, 0, 0]).max() < 0.5
    # the deterministic policy (evaluation) never flips
    assert np.all(a.predict(obs[:50], deterministic=True)[0][:, 1] > 0.5)
    with pytest.raises(ValueError):
        DemoSAC("MlpPolicy", Plane(), flip_prob=0.1)
