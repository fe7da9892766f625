"""Deferred rewards: same values as the synchronous wrapper, one step late, never sampled early."""

import copy

import numpy as np
import pytest
import torch

from models.base import TaskContext
from models.grm.config import GRMConfig
from models.grm.inference import GRMProgressModel
from models.grm.model import GRM
from robo.deferred_reward import SEQ_KEY, DeferredRewardReplayBuffer, DeferredRewardVecEnv
from robo.shaping import ShapingConfig, make_reward_vec_env
from tests.tiny import TINY_GRM

CTX = TaskContext("reach the target")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GRMProgressModel(GRM(GRMConfig(**TINY_GRM)))


def env_fn(seed):
    def fn():
        import sim

        env = sim.make(
            "tabletop/reach-v0",
            views=("front", "side", "wrist"),
            image_size=32,
            max_episode_steps=7,
        )
        env.reset(seed=seed)
        return env

    return fn


def actions(n, steps, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (steps, n, 4)).astype(np.float32)


def run_sync(model, cfg, acts):
    venv = make_reward_vec_env([env_fn(0), env_fn(1)], model, cfg, CTX)
    venv.seed(3)
    venv.reset()
    out = [venv.step(a) for a in acts]
    venv.close()
    return out


def test_deferred_rewards_equal_the_synchronous_ones_across_episode_ends():
    cfg = ShapingConfig(mode="pbrs", gamma=0.9)
    model = tiny_model()
    acts = actions(2, 16)
    sync = run_sync(copy.deepcopy(model), cfg, acts)
    venv = DeferredRewardVecEnv([env_fn(0), env_fn(1)], model, cfg, CTX)
    delivered = []
    venv.reward_sink = lambda seq, r: delivered.append((seq, r.copy()))
    venv.seed(3)
    venv.reset()
    steps = []
    for a in acts:
        obs, reward, dones, infos = venv.step(a)
        assert np.isnan(reward).all() and "reward_terms" not in infos[0]  # not known yet
        steps.append((obs, dones, infos))
    venv.flush()
    venv.close()
    assert [s for s, _ in delivered] == list(range(1, 17))
    ends, peaks = 0, [-np.inf, -np.inf]
    for (obs_s, rew_s, dones_s, infos_s), (obs_d, dones_d, infos_d), (_, rew_d) in zip(
        sync, steps, delivered, strict=True
    ):
        for k, i_s in enumerate(infos_s):  # each episode's key frames: its peak potential
            peaks[k] = max(peaks[k], i_s["reward_terms"]["next_potential"])
            if dones_s[k]:
                key_s, key_d = i_s["episode_key_frames"], infos_d[k]["episode_key_frames"]
                assert key_s["peak_potential"] == pytest.approx(peaks[k], abs=1e-6)
                assert key_d["peak_potential"] == pytest.approx(peaks[k], abs=1e-5)
                np.testing.assert_array_equal(key_d["peak"], key_s["peak"])
                np.testing.assert_array_equal(key_d["first"], i_s["episode_first_frames"])
                assert key_s["success"] is None and key_d["success"] is None  # random actions
                peaks[k] = -np.inf
        np.testing.assert_allclose(obs_d, obs_s, atol=1e-6)
        np.testing.assert_array_equal(dones_d, dones_s)
        np.testing.assert_allclose(rew_d, rew_s, atol=1e-5)
        for i_s, i_d in zip(infos_s, infos_d, strict=True):
            for key in ("potential", "next_potential", "success_bonus", "model_success"):
                assert i_d["reward_terms"][key] == pytest.approx(i_s["reward_terms"][key], abs=1e-5)
            assert i_d["original_env_rew"] == pytest.approx(i_s["original_env_rew"])
            assert ("terminal_frames" in i_d) == ("terminal_frames" in i_s)
            if "terminal_frames" in i_d:
                np.testing.assert_array_equal(i_d["terminal_frames"], i_s["terminal_frames"])
                np.testing.assert_array_equal(
                    i_d["episode_first_frames"], i_s["episode_first_frames"]
                )
                np.testing.assert_allclose(
                    i_d["terminal_observation"], i_s["terminal_observation"], atol=1e-6
                )
        ends += int(dones_s.sum())
    assert ends >= 4  # both envs crossed episode ends (7-step time limit)


def test_resync_sends_the_learners_weights_to_the_worker():
    cfg = ShapingConfig(mode="pbrs")
    model = tiny_model()
    venv = DeferredRewardVecEnv([env_fn(0)], model, cfg, CTX)
    venv.reset()
    acts = actions(1, 3, seed=1)
    venv.step(acts[0])
    before = venv.flush().copy()
    with torch.no_grad():  # the learner's copy changes (as refinement does)
        for p in model.model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    venv.resync_model()
    venv.step(acts[1])
    after = venv.flush()
    venv.close()
    # the same step scored by the changed weights in this process
    ref = copy.deepcopy(model)
    sync = make_reward_vec_env([env_fn(0)], ref, cfg, CTX)
    sync.reset()
    sync.step(acts[0])
    sync.resync_model()
    _, expected, _, _ = sync.step(acts[1])
    sync.close()
    np.testing.assert_allclose(after, expected, atol=1e-5)
    assert not np.allclose(after, before)


def test_resync_keeps_each_episodes_own_start_as_the_forward_anchor():
    """Refinement resyncs mid-episode: the forward hop must still start at the episode's
    first frames, so with unchanged weights a forward-only model's potential is unchanged
    (re-starting from the current frames would read them as progress 0)."""
    torch.manual_seed(0)
    model = GRMProgressModel(GRM(GRMConfig(**{**TINY_GRM, "perspectives": ["forward"]})))
    cfg = ShapingConfig(mode="pbrs")
    acts = actions(1, 4, seed=2)
    sync = make_reward_vec_env([env_fn(0)], model, cfg, CTX)
    sync.seed(3)
    sync.reset()
    for a in acts[:3]:
        sync.step(a)
    phi = sync.shaper.phi.copy()
    assert abs(phi[0]) > 1e-3  # a random model's forward hop is not 0 here
    sync.resync_model()
    np.testing.assert_allclose(sync.shaper.phi, phi, atol=1e-5)
    _, expected, _, _ = sync.step(acts[3])
    sync.close()
    deferred = DeferredRewardVecEnv([env_fn(0)], copy.deepcopy(model), cfg, CTX)
    deferred.seed(3)
    deferred.reset()
    for a in acts[:3]:
        deferred.step(a)
    deferred.resync_model()
    deferred.step(acts[3])
    np.testing.assert_allclose(deferred.flush(), expected, atol=1e-5)
    deferred.close()


def buffer(size=8):
    from gymnasium import spaces

    box = spaces.Box(-1, 1, (2,), np.float32)
    return DeferredRewardReplayBuffer(size, box, box, device="cpu", n_envs=1)


def add(buf, seq, reward=np.nan):
    z = np.zeros((1, 2), np.float32)
    buf.add(z, z, z, np.array([reward], np.float32), np.array([False]), [{SEQ_KEY: seq}])


def test_replay_buffer_never_samples_a_transition_whose_reward_is_due():
    buf = buffer()
    for seq in range(1, 5):
        add(buf, seq)
        if seq < 4:
            buf.fill(seq, np.array([float(seq)]))
    np.random.seed(0)
    r = buf.sample(500).rewards.numpy().ravel()
    assert set(r) == {1.0, 2.0, 3.0}  # the 4th is still due
    buf.fill(4, np.array([4.0]))
    assert set(buf.sample(500).rewards.numpy().ravel()) == {1.0, 2.0, 3.0, 4.0}
    # rewards that arrive before their transition is stored (a callback flushed in between)
    buf.fill(5, np.array([5.0]))
    add(buf, 5)
    assert buf.rewards[4, 0] == 5.0 and not buf._due and not buf._early
    # a full ring buffer: the due position is skipped wherever it is
    for seq in range(6, 12):
        add(buf, seq)
        buf.fill(seq, np.array([float(seq)]))
    add(buf, 12)
    assert buf.full
    assert not np.isnan(buf.sample(1000).rewards.numpy()).any()


def test_n_step_buffer_waits_for_every_reward_it_sums():
    """With 3-step returns a transition is sampled only once its own reward and the next
    two are in; the return and the discount match SB3's n-step buffer on the same data."""
    from gymnasium import spaces
    from stable_baselines3.common.buffers import NStepReplayBuffer

    from robo.deferred_reward import DeferredNStepReplayBuffer

    box = spaces.Box(-1, 1, (2,), np.float32)
    kw = dict(device="cpu", n_envs=1, n_steps=3, gamma=0.5)
    buf, ref = DeferredNStepReplayBuffer(16, box, box, **kw), NStepReplayBuffer(16, box, box, **kw)
    z = np.zeros((1, 2), np.float32)
    for seq in range(1, 7):
        add(buf, seq)
        ref.add(z, z, z, np.array([float(seq)], np.float32), np.array([False]), [{}])
    for seq in range(1, 5):
        buf.fill(seq, np.array([float(seq)]))  # 5 and 6 still due
    np.random.seed(0)
    got = set(np.round(buf.sample(800).rewards.numpy().ravel(), 4))
    # only positions 0-1 (seq 1, 2) may be sampled: 1 + 2/2 + 3/4 and 2 + 3/2 + 4/4
    assert got == {2.75, 4.5}
    buf.fill(5, np.array([5.0]))
    buf.fill(6, np.array([6.0]))
    inds = np.arange(6)
    np.random.seed(1)
    a = buf._get_samples(inds)
    np.random.seed(1)
    b = ref._get_samples(inds)
    np.testing.assert_allclose(a.rewards.numpy(), b.rewards.numpy())
    np.testing.assert_allclose(a.discounts.numpy(), b.discounts.numpy())


def test_starved_buffer_asks_for_the_rewards():
    buf = buffer()
    add(buf, 1)
    calls = []
    buf.on_starved = lambda: (calls.append(1), buf.fill(1, np.array([0.5])))
    assert buf.sample(4).rewards.numpy().ravel().tolist() == [0.5] * 4 and calls == [1]
    buf2 = buffer()
    add(buf2, 1)
    with pytest.raises(RuntimeError, match="no transition"):
        buf2.sample(2)


def test_worker_errors_come_back_as_one_line():
    from robo.errors import RoboError

    def broken():
        raise ValueError("no such scene")

    class Probe:  # a probe env for the view check, then the worker's env fails to build
        calls = 0

    def fn():
        Probe.calls += 1
        if Probe.calls > 1:
            broken()
        return env_fn(0)()

    with pytest.raises(RoboError, match="reward worker: ValueError: no such scene"):
        DeferredRewardVecEnv([fn], tiny_model(), ShapingConfig(), CTX)


def test_sac_with_deferred_rewards_fills_every_reward_and_watches_a_step_late(tmp_path):
    from robo.rl.callbacks import SuccessEvalCallback
    from robo.rl.train import RLConfig, build

    grm_dir = tmp_path / "grm"
    tiny_model().model.save_pretrained(grm_dir)
    cfg = RLConfig(
        env="tabletop/reach-v0",
        reward=f"grm:{grm_dir}",
        steps=50,
        max_episode_steps=12,
        bc_epochs=0,
        out=str(tmp_path / "rl"),
    )
    _, _, venv, algo = build(cfg)
    assert isinstance(venv, DeferredRewardVecEnv)
    algo.learning_starts = 5
    watch = SuccessEvalCallback(env_fn(5), every=10**6, episodes=1, out=tmp_path / "eval.json")
    algo.learn(cfg.steps, callback=watch, progress_bar=False)
    buf = algo.replay_buffer
    rewards = buf.rewards[: buf.pos, 0]
    assert buf.pos == 50 and not np.isnan(rewards).any() and not buf._due
    # pbrs rewards: success bonus (at most 1) plus a potential difference in [-1, 1]
    assert np.abs(rewards).max() <= 2.0 + 1e-6 and np.abs(rewards).max() > 0
    summary = watch.watch_summary()
    assert summary["watched_episodes"] == 4  # 50 steps of 12-step episodes, the last one flushed
    assert np.isfinite(summary["progress_mae"])
    venv.close()


def test_a_dead_worker_is_a_one_line_error_and_close_still_works():
    from robo.errors import RoboError

    venv = DeferredRewardVecEnv([env_fn(0)], tiny_model(), ShapingConfig(), CTX)
    venv.reset()
    venv.process.kill()
    venv.process.join()
    with pytest.raises(RoboError, match="reward worker process died"):
        for _ in range(2):  # the first send may still fit in the pipe
            venv.step(actions(1, 1)[0])
    venv.close()


def test_potential_buffers_keep_each_transitions_next_potential():
    """Synchronous: read from the step's reward terms at the add. Deferred: the env writes
    the terms into the step's infos when the rewards arrive, before or after the add."""
    from gymnasium import spaces

    from robo.deferred_reward import DeferredPotentialReplayBuffer, PotentialReplayBuffer

    box = spaces.Box(-1, 1, (2,), np.float32)
    z = np.zeros((1, 2), np.float32)
    sync = PotentialReplayBuffer(8, box, box, device="cpu", n_envs=1)
    for k in range(4):  # reward 10 * potential: rows stay aligned when sampled
        info = {"reward_terms": {"next_potential": 0.1 * k}}
        sync.add(z, z, z, np.array([float(k)]), np.array([False]), [info])
    s = sync.sample(200)
    np.testing.assert_allclose(s.next_potentials.numpy(), 0.1 * s.rewards.numpy(), atol=1e-6)

    buf = DeferredPotentialReplayBuffer(8, box, box, device="cpu", n_envs=1)
    infos = [{SEQ_KEY: 1}]
    buf.add(z, z, z, np.array([np.nan], np.float32), np.array([False]), infos)
    assert np.isnan(buf.next_potentials[0, 0])
    infos[0]["reward_terms"] = {"next_potential": 0.25}  # what flush() does, then the sink
    buf.fill(1, np.array([1.0]))
    assert buf.next_potentials[0, 0] == 0.25 and not buf._due_infos
    # rewards (and terms) that arrive before the add
    infos = [{SEQ_KEY: 2, "reward_terms": {"next_potential": 0.75}}]
    buf.fill(2, np.array([2.0]))
    buf.add(z, z, z, np.array([np.nan], np.float32), np.array([False]), infos)
    assert buf.rewards[1, 0] == 2.0 and buf.next_potentials[1, 0] == 0.75
    s = buf.sample(100)
    np.testing.assert_allclose(
        s.next_potentials.numpy(), np.where(s.rewards.numpy() == 1, 0.25, 0.75)
    )
