"""Ensemble of progress models: combination, confidence from disagreement, bad input."""

import numpy as np
import pytest
import torch

from models.base import ModelInputError, ProgressModel, TaskContext
from models.ensemble import EnsembleProgressModel
from models.grm.config import GRMConfig
from models.grm.inference import GRMProgressModel
from models.grm.model import GRM
from tests.tiny import TINY_GRM


def frames(b, v=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (b, v, size, size, 3), dtype=np.uint8)


def member(seed):
    torch.manual_seed(seed)
    return GRMProgressModel(GRM(GRMConfig(**TINY_GRM)))


def run(pm, steps=3):
    ctx = TaskContext("stack", frames(1, seed=1)[0], frames(1, seed=2)[0])
    outs = [pm.reset([0, 1], [ctx, ctx], frames(2))]
    outs += [pm.predict(frames(2, seed=10 + t)) for t in range(steps)]
    return outs


@pytest.mark.parametrize("combine", ["mean", "min"])
def test_ensemble_combines_its_members_step_by_step(combine):
    alone = [run(member(s)) for s in (0, 1)]
    together = run(EnsembleProgressModel([member(0), member(1)], combine))
    reduce = {"mean": lambda x: x.mean(0), "min": lambda x: x.min(0).values}[combine]
    for t, out in enumerate(together):
        p = torch.stack([a[t].progress for a in alone])
        s = torch.stack([a[t].success for a in alone])
        torch.testing.assert_close(out.progress, reduce(p))
        torch.testing.assert_close(out.success, reduce(s))
        # disagreement lowers the confidence below the members' mean
        spread = p.max(0).values - p.min(0).values
        mean_conf = torch.stack([a[t].confidence for a in alone]).mean(0)
        torch.testing.assert_close(out.confidence, mean_conf * (1 - spread))
        assert out.progress.shape == (2,) and out.progress.dtype == torch.float32
    assert any(
        float((a0.progress - a1.progress).abs().max()) > 0 for a0, a1 in zip(*alone, strict=True)
    )  # the members differ, so the test compares something


def test_identical_members_keep_the_member_output():
    pm = EnsembleProgressModel([member(0), member(0)])
    assert isinstance(pm, ProgressModel)
    for out, ref in zip(run(pm), run(member(0)), strict=True):
        torch.testing.assert_close(out.progress, ref.progress)
        torch.testing.assert_close(out.confidence, ref.confidence)


def test_ensemble_masks_a_missing_view_through_its_members():
    pm = EnsembleProgressModel([member(0), member(1)])
    pm.reset([0], [TaskContext()], frames(1))
    out = pm.predict(frames(1, v=1), views=("wrist",))
    assert 0 <= float(out.progress) <= 1


def test_ensemble_bad_input():
    with pytest.raises(ModelInputError, match="at least 2 members"):
        EnsembleProgressModel([member(0)])
    with pytest.raises(ModelInputError, match="unknown ensemble combine"):
        EnsembleProgressModel([member(0), member(1)], "median")
    torch.manual_seed(0)
    other = GRMProgressModel(GRM(GRMConfig(**{**TINY_GRM, "image_size": (48, 48)})))
    with pytest.raises(ModelInputError, match="share views and image size"):
        EnsembleProgressModel([member(0), other])
