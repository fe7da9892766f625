"""Non-expert rollout policies: outcomes, privileged progress, determinism."""

import numpy as np
import pytest

import sim
from sim.base import SimError
from sim.rollouts import make_policy, outcome_of, run_rollout


def rollout(env_id, spec, seed=0, render=False):
    env = sim.make(env_id, terminate_on_success=False, image_size=24)
    return run_rollout(
        env, make_policy(spec, env, np.random.default_rng(seed)), seed, render=render
    )


def test_outcome_definition():
    assert outcome_of(np.array([0, 1, 0], bool), np.array([0.1, 1.0, 0.2])) == "success"
    assert outcome_of(np.zeros(3, bool), np.array([0.1, 0.5, 0.3])) == "partial"
    assert outcome_of(np.zeros(3, bool), np.array([0.1, 0.5, 0.29])) == "failure"


def test_rollout_row_convention():
    r = rollout("tabletop/pick-place-v0", "expert", render=True)
    T = len(r)
    assert r.frames.shape == (T, 3, 24, 24, 3)
    assert r.actions.shape == (T, 4) and np.all(r.actions[-1] == 0)
    assert r.env_reward[0] == 0 and r.outcome == "success"
    assert r.success[-1] and r.privileged_progress[-1] == 1.0


def test_undo_reverses_progress():
    r = rollout("tabletop/pick-place-v0", "undo", seed=2)
    p = r.privileged_progress
    peak = int(np.argmax(p))
    assert p[peak] == 1.0
    assert p[-1] < 0.5, "undo should bring progress back down"
    assert np.any(np.diff(p[peak:]) < -0.05)


@pytest.mark.parametrize("env_id", ["tabletop/pick-place-v0", "tabletop/stack-v0"])
def test_non_expert_outcomes(env_id):
    outs = {
        spec: [rollout(env_id, spec, s).outcome for s in range(4)]
        for spec in ("half", "near-miss", "random-freeze")
    }
    assert all(o == "partial" for o in outs["half"])
    assert all(o == "failure" for o in outs["random-freeze"])
    assert sum(o != "success" for o in outs["near-miss"]) >= 3


def test_half_freezes_mid_task():
    r = rollout("tabletop/push-v0", "half", seed=1)
    p = r.privileged_progress
    assert 0.3 <= p[-1] <= 0.75
    assert np.allclose(r.actions[-10:-1, :3], 0)


def test_noisy_rollout_differs_from_expert_and_is_seeded():
    a = rollout("tabletop/push-v0", "noisy:0.3", seed=4)
    b = rollout("tabletop/push-v0", "noisy:0.3", seed=4)
    e = rollout("tabletop/push-v0", "expert", seed=4)
    np.testing.assert_array_equal(a.actions, b.actions)
    n = min(len(a), len(e)) - 1
    assert not np.allclose(a.actions[:n], e.actions[:n])


@pytest.mark.parametrize("spec,slips", [("recover", 1), ("recover:2", 2)])
def test_recover_drops_the_cube_and_the_expert_grasps_it_again(spec, slips):
    r = rollout("tabletop/pick-place-v0", spec, seed=3)
    assert r.outcome == "success" and r.policy == spec
    perturbed = np.asarray(r.extra["perturbed"])
    assert 3 * slips <= len(perturbed) <= 6 * slips
    assert np.all(r.actions[perturbed, 3] == -1.0)  # the gripper opens on every slip step
    # the grasp is lost (back to the reach stage) after each slip and regained later
    drops = np.flatnonzero((r.stage[1:] == 0) & (r.stage[:-1] >= 1))
    assert len(drops) == slips
    assert r.stage[-1] == 3
    assert len(r) > len(rollout("tabletop/pick-place-v0", "expert", seed=3))


def test_bad_policy_specs():
    env = sim.make("tabletop/push-v0")
    rng = np.random.default_rng(0)
    with pytest.raises(SimError, match="unknown policy"):
        make_policy("expertt", env, rng)
    with pytest.raises(SimError, match="noisy"):
        make_policy("noisy:abc", env, rng)
    with pytest.raises(SimError, match="sigma"):
        make_policy("noisy:-1", env, rng)
    with pytest.raises(SimError, match="recover:<n>"):
        make_policy("recover:x", env, rng)
    with pytest.raises(SimError, match="1..5"):
        make_policy("recover:0", env, rng)


def test_retreat_withdraws_the_arm_while_the_task_stays_solved():
    r = rollout("tabletop/push-v0", "retreat", seed=0)
    first = int(np.argmax(r.success))
    assert r.outcome == "success" and len(r) > first + 5
    assert r.success[first:].all(), "retreat stops as soon as success is lost"
    assert np.linalg.norm(r.obs[-1, :3] - r.obs[first, :3]) > 0.1  # the hand went away
    assert r.obs[first + 8, 2] > r.obs[first, 2]  # lifting first
    # reaching is a pose of the arm: withdrawing undoes it, and the retreat stops there
    r = rollout("tabletop/reach-v0", "retreat", seed=0)
    first = int(np.argmax(r.success))
    assert not r.success[-1] and r.success[first:-1].all()


def test_give_up_withdraws_the_arm_mid_task_and_fails():
    r = rollout("tabletop/push-v0", "give-up", seed=0)
    assert r.outcome != "success" and not r.success.any()
    p = r.privileged_progress
    assert 0.25 <= p.max() < 1.0
    z = r.obs[:, 2]
    assert z[-1] > z[int(np.argmax(p))] + 0.03  # lifted and went home


@pytest.mark.parametrize("env_id", ["tabletop/pick-place-v0", "tabletop/push-v0"])
def test_undo_early_retraces_the_arm_mid_task_and_fails(env_id):
    r = rollout(env_id, "undo-early", seed=1)
    assert r.outcome != "success" and not r.success.any()
    p = r.privileged_progress
    peak = int(np.argmax(p))
    assert 0.25 <= p[peak] < 1.0
    # the way back retraces the way there: the hand ends near where it started
    hand = r.obs[:, :3]
    assert np.linalg.norm(hand[-1] - hand[0]) < 0.5 * np.linalg.norm(hand[peak] - hand[0])
