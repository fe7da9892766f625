"""The GRM's pair sampler: which episodes are demonstrations, and their labels."""

import numpy as np

from robo.cli import main
from robo.reward.data import PairSampler, SamplerConfig
from robo.store import EpisodeStore


def test_recovery_demos_train_as_demonstrations_with_their_fall_back(tmp_path):
    out = str(tmp_path / "pp")
    for policy in ("expert", "recover", "half"):
        args = ["collect", "--env", "tabletop/pick-place-v0", "--episodes", "1", "--size", "24"]
        assert main([*args, "--views", "front", "--policy", policy, "--out", out]) == 0
    sampler = PairSampler([out], ("front",), seed=0)
    (seen,) = sampler.describe()
    assert seen["demos"] == [0, 1] and seen["outcome_rollouts"] == [2]
    task = sampler.tasks[0]
    expert, recover = sampler._demo(task, 0).phi, sampler._demo(task, 1).phi
    assert np.all(np.diff(expert) >= 0) and expert[-1] == 1.0
    assert np.diff(recover).min() < -0.2 and recover[-1] == 1.0  # the drop is in the labels
    batch = sampler.sample(4)
    assert batch["frames"].shape[1:] == (1, 24, 24, 3)
    hops = batch["hop"].numpy()
    outcome_rows = batch["outcome_idx"].numpy()
    assert np.isnan(hops[outcome_rows]).all()  # outcome rows carry a label, not a hop
    pair_hops = np.delete(hops, outcome_rows)
    assert len(pair_hops) and np.all((pair_hops >= -1) & (pair_hops <= 1))


def test_gripper_label_spacing_reads_the_demo_states(tmp_path):
    import pytest

    from models.grm.labels import stepwise_progress
    from robo.reward.data import demo_progress

    out = str(tmp_path / "reach")
    args = ["collect", "--env", "tabletop/reach-v0", "--episodes", "1", "--size", "24"]
    assert main([*args, "--views", "front", "--policy", "expert", "--out", out]) == 0
    sampler = PairSampler([out], ("front",), seed=0, label_spacing="gripper")
    ep = sampler.tasks[0].store.episode(0)
    phi = sampler._demo(sampler.tasks[0], 0).phi
    want = stepwise_progress(ep.stage, 1, ep.success, gripper=ep.states[:, :3])
    np.testing.assert_allclose(phi, want[: len(phi)])
    assert phi[-1] == 1.0 and np.all(np.diff(phi) >= 0)
    # the expert closes most of the distance early: ahead of the clock at mid-episode
    mid = len(phi) // 2
    assert phi[mid] > demo_progress(ep, 1)[mid]
    blend = demo_progress(ep, 1, "blend")
    np.testing.assert_allclose(blend, 0.5 * (want + demo_progress(ep, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="choose time, gripper or blend"):
        demo_progress(ep, 1, "distance")
    ep.states = ep.states[:, :2]
    with pytest.raises(ValueError, match=r"states of shape"):
        demo_progress(ep, 1, "gripper")
    ep.env_id = "lerobot/so100"  # joint readings: the gripper's place is unknown
    with pytest.raises(ValueError, match="use label_spacing time"):
        demo_progress(ep, 1, "gripper")
    # blend, the default, keeps working there: time spacing, with a warning
    with pytest.warns(UserWarning, match="spaced evenly in time"):
        np.testing.assert_array_equal(demo_progress(ep, 1, "blend"), demo_progress(ep, 1))


def test_outcome_labels_are_hop_intervals_from_both_anchors(tmp_path):
    import torch

    from robo.reward.data import outcome_interval
    from robo.reward.train import interval_nll

    assert outcome_interval("success", 0.05, True) == (0.95, 2.0)
    assert outcome_interval("partial", 0.05, True) == (0.3, 0.95)
    assert outcome_interval("failure", 0.05, True) == (0.0, 0.3)
    assert outcome_interval("failure", 0.05, False) == (0.0, 0.95)  # only "not success"
    out = str(tmp_path / "reach")
    for policy, seed in (("expert", 0), ("random-freeze", 1)):
        args = ["collect", "--env", "tabletop/reach-v0", "--episodes", "1", "--size", "24"]
        assert (
            main([*args, "--views", "front", "--policy", policy, "--seed", str(seed), "--out", out])
            == 0
        )
    sampler = PairSampler([out], ("front",), seed=0)
    sampler.cfg.p_outcome = 1.0
    batch = sampler.sample(3)
    rows = batch["outcome_idx"].numpy()
    assert len(rows) == 6  # every outcome group: a backward and a forward row
    hi = batch["outcome_hi"].numpy()
    backward, forward = slice(0, None, 2), slice(1, None, 2)
    np.testing.assert_allclose(hi[backward], hi[forward] - 1.0)  # backward: phi = 1 + H
    frames = batch["frames"]
    ep = sampler.tasks[0].store.episode(1)
    # the forward row hops from the rollout's own first frame (up to the shift augmentation)
    before = frames[batch["before_idx"][rows[1]]].float()
    assert (before - torch.from_numpy(ep.frames[0]).float()).abs().mean() < 40
    # interval likelihood: all mass inside -> 0, all mass outside -> large
    bins = torch.linspace(-1, 1, 11)
    inside = torch.full((1, 11), -30.0)
    inside[0, 10] = 30.0
    logp = inside.log_softmax(-1)
    assert float(interval_nll(logp, bins, torch.tensor([0.9]), torch.tensor([2.0]))) < 1e-6
    assert float(interval_nll(logp, bins, torch.tensor([0.0]), torch.tensor([0.3]))) > 10


def test_outcome_only_stores_pool_with_their_env_and_keep_their_label_scheme(tmp_path):
    import pytest

    from robo.errors import RoboError

    def collect(out, policy, seed, env="tabletop/reach-v0"):
        args = ["collect", "--env", env, "--episodes", "1", "--size", "24", "--views", "front"]
        assert main([*args, "--policy", policy, "--seed", str(seed), "--out", out]) == 0

    demos, mined, operator = (str(tmp_path / n) for n in ("demos", "mined", "operator"))
    collect(demos, "expert", 0)
    collect(mined, "half", 1)  # the env's own labels: partial is used -> three classes
    collect(operator, "random-freeze", 2)  # success / failure only -> "not success"
    assert EpisodeStore.open(mined).episode_meta(0).outcome == "partial"
    assert EpisodeStore.open(operator).episode_meta(0).outcome == "failure"
    sampler = PairSampler([demos], ("front",), seed=0, outcome_urls=[mined, operator])
    assert [t.three_class for t in sampler.tasks] == [True, True, False]
    # groups are drawn for the task with demonstrations only: no outcome group unless asked
    sampler.cfg.p_outcome = 0.0
    assert len(sampler.sample(12)["outcome_idx"]) == 0
    # outcome groups draw from both stores of the env, each with its own intervals
    sampler.cfg.p_outcome = 1.0
    batch = sampler.sample(24)
    forward_lo = batch["outcome_lo"].numpy()[1::2]
    # partial: [0.3, 0.95); "not success": below 0.95
    assert sorted({round(float(v), 3) for v in forward_lo}) == [-1.0, 0.3]
    # an outcome-only store of an env without demonstrations is refused up front
    other = str(tmp_path / "push")
    collect(other, "random-freeze", 3, env="tabletop/push-v0")
    with pytest.raises(RoboError, match="no store among the training data has demonstrations"):
        PairSampler([demos], ("front",), seed=0, outcome_urls=[other])


def test_an_undone_success_labels_its_final_frame_not_success(tmp_path):
    from robo.reward.data import NOT_SUCCESS, final_state_outcome, outcome_interval

    assert final_state_outcome("success", np.array([0, 1, 1], bool)) == "success"
    assert final_state_outcome("success", np.array([0, 1, 0], bool)) == NOT_SUCCESS
    assert final_state_outcome("partial", np.array([0, 0, 0], bool)) == "partial"
    assert outcome_interval(NOT_SUCCESS, 0.05, True) == (0.0, 0.95)
    out = str(tmp_path / "pp")
    for policy in ("expert", "undo"):  # undo: placed, then carried back to the start
        args = ["collect", "--env", "tabletop/pick-place-v0", "--episodes", "1", "--size", "24"]
        assert main([*args, "--views", "front", "--policy", policy, "--out", out]) == 0
    sampler = PairSampler([out], ("front",), seed=0)
    task = sampler.tasks[0]
    ep = task.store.episode(1)
    assert ep.outcome == "success" and ep.success.any() and not ep.success[-1]
    assert sampler._rollout_end(task, 1)[2] == NOT_SUCCESS
    sampler.cfg.p_outcome = 1.0
    batch = sampler.sample(2)
    hi = batch["outcome_hi"].numpy()
    np.testing.assert_allclose(hi[0::2], -0.05, atol=1e-6)  # backward rows: phi < 0.95
    # undo_demos: the same rollout is also a demonstration that goes on after success,
    # labelled done up to its last solved frame (the cube carried back is cut off); its
    # final frame keeps its outcome label
    undone = PairSampler([out], ("front",), SamplerConfig(undo_demos=True), seed=0)
    assert undone.describe()[0]["demos"] == [0, 1]
    assert undone.describe()[0]["outcome_rollouts"] == [1]
    assert undone._rollout_end(undone.tasks[0], 1)[2] == NOT_SUCCESS
    demo = undone._demo(undone.tasks[0], 1)
    last = len(ep) - int(np.argmax(ep.success[::-1]))
    assert len(demo.phi) == last and ep.success[last - 1] and not ep.success[last:].any()
    first = int(np.argmax(ep.success))
    assert (demo.phi[first:] == 1.0).all() and (demo.phi[:first] < 1.0).all()


def test_retreat_demos_are_grm_demonstrations_labelled_done_while_success_holds(tmp_path):
    from robo.reward.data import demo_end, is_training_demo

    out = str(tmp_path / "reach")
    for policy in ("expert", "retreat"):
        args = ["collect", "--env", "tabletop/reach-v0", "--episodes", "1", "--size", "24"]
        assert main([*args, "--views", "front", "--policy", policy, "--out", out]) == 0
    store = EpisodeStore.open(out)
    meta = store.episode_meta(1)
    assert meta.policy == "retreat" and is_training_demo(meta)
    assert not is_training_demo(meta, cloning=True)  # the warm start clones no retreat
    ep = store.episode(1)
    assert not ep.success[-1]  # reaching is undone by withdrawing: the last frame is trimmed
    end = demo_end(ep)
    assert end == len(ep) - 1 and ep.success[end - 1]
    assert demo_end(store.episode(0)) == len(store.episode(0))
    sampler = PairSampler([out], ("front",), seed=0)
    assert sampler.describe()[0]["demos"] == [0, 1]
    demo = sampler._demo(sampler.tasks[0], 1)
    assert len(demo.phi) == len(demo.frames) == end and demo.phi[-1] == 1.0
    # the context's goal frame is where the task was just done, as in an expert's demo
    expert = store.episode(0)
    assert expert.goal_index == len(expert) - 1 == int(np.argmax(expert.success)) + 3
    assert demo.goal == min(ep.goal_index, end - 1)


def test_a_retreat_reference_goal_frame_keeps_the_arm_where_the_task_was_done(tmp_path):
    out = str(tmp_path / "push")
    args = ["collect", "--env", "tabletop/push-v0", "--episodes", "1", "--size", "24"]
    assert main([*args, "--views", "front", "--policy", "retreat", "--out", out]) == 0
    ep = EpisodeStore.open(out).episode(0)
    first = int(np.argmax(ep.success))
    assert ep.goal_index == first + 3 < len(ep) - 5
    moved = np.abs(ep.frames[-1].astype(int) - ep.frames[ep.goal_index]).mean()
    assert moved > 1.0  # the arm went home after the goal frame
