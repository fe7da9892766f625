"""The GRM's pair sampler: which episodes are demonstrations, and their labels."""

import numpy as np

from robo.cli import main
from robo.reward.data import PairSampler


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
