"""GRM: labels, network, persistence, multi-perspective inference, bad input."""

import json

import numpy as np
import pytest
import torch

from models.base import ModelInputError, ProgressModel, TaskContext
from models.grm.config import GRMConfig
from models.grm.inference import GRMProgressModel
from models.grm.labels import apply_hop, hop, recovery_progress, stepwise_progress
from models.grm.model import GRM
from tests.tiny import TINY_GRM

TINY = TINY_GRM


def frames(b, v=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (b, v, size, size, 3), dtype=np.uint8)


def test_stepwise_progress_gives_each_stage_an_equal_share():
    stage = np.array([0] * 10 + [1] * 2 + [2] * 4)
    success = np.zeros(16, bool)
    success[-1] = True
    phi = stepwise_progress(stage, 3, success)
    assert phi[0] == 0 and phi[-1] == 1
    assert np.all(np.diff(phi) > 0)
    assert phi[10] == pytest.approx(1 / 3) and phi[12] == pytest.approx(2 / 3)  # stage starts


def test_stepwise_progress_ignores_stage_regressions_in_demos():
    phi = stepwise_progress(np.array([0, 0, 1, 0, 1, 1]), 2)
    assert np.all(np.diff(phi) >= 0)


def test_recovery_progress_keeps_the_fall_back_a_stage():
    # reach, lift cut short by a drop (5 of the 6 frames the completed lift takes),
    # reach again, lift, carry, place; success on the last 3 frames
    stage = np.array([0] * 10 + [1] * 5 + [0] * 8 + [1] * 6 + [2] * 5 + [3] * 9)
    success = np.zeros(len(stage), bool)
    success[-3:] = True
    phi = recovery_progress(stage, 4, success)
    assert phi[0] == 0 and np.all(phi[-3:] == 1)
    assert phi[10] == pytest.approx(0.25) and phi[14] == pytest.approx((1 + 4 / 6) / 4)
    assert phi[15] == 0.0  # the drop: back to the start of the reach stage
    assert np.all(np.diff(phi[15:]) >= 0) and np.all(np.diff(phi[:15]) > 0)
    # a one-frame dip is annotation flicker, not a fall back
    flicker = recovery_progress(np.array([0, 0, 1, 0, 1, 1, 1]), 2, np.array([0] * 6 + [1], bool))
    assert np.all(np.diff(flicker) >= 0)
    # without any fall back it is the step-wise labelling
    mono = np.array([0] * 4 + [1] * 3 + [2] * 3)
    s = np.zeros(10, bool)
    s[-1] = True
    np.testing.assert_allclose(recovery_progress(mono, 3, s), stepwise_progress(mono, 3, s))


def test_gripper_spacing_follows_the_approach_not_the_clock():
    # one reach stage of 11 frames: the gripper covers 80% of the way in the first 2 steps,
    # then creeps in; success on the last frame
    x = np.array([0.0, 0.5, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 1.0]) * 0.3
    gripper = np.stack([x, np.zeros(11), np.zeros(11)], 1)
    stage, success = np.zeros(11, int), np.zeros(11, bool)
    success[-1] = True
    timed = stepwise_progress(stage, 1, success)
    spaced = stepwise_progress(stage, 1, success, gripper=gripper)
    assert timed[2] == pytest.approx(0.2) and spaced[2] == pytest.approx(0.8)
    assert spaced[0] == 0 and spaced[-1] == 1 and np.all(np.diff(spaced) >= 0)
    # moving away first (lifting over something) is no progress, and none is taken back
    away = gripper.copy()
    away[1:3, 0] = -0.1
    lifted = stepwise_progress(stage, 1, success, gripper=away)
    assert np.all(lifted[:3] == 0) and np.all(np.diff(lifted) >= 0)
    # a stage the gripper barely moves in (a grasp) stays even in time; shares stay equal
    two = np.array([0] * 5 + [1] * 6)
    still = gripper.copy()
    still[5:] = still[5]
    both = stepwise_progress(two, 2, success, gripper=still)
    assert both[5] == pytest.approx(0.5)
    np.testing.assert_allclose(both[5:], stepwise_progress(two, 2, success)[5:])
    # the blend is the mean of the two, strictly increasing even where the arm moves away
    half = stepwise_progress(stage, 1, success, gripper=away, blend=0.5)
    np.testing.assert_allclose(half, 0.5 * (lifted + timed), atol=1e-6)
    assert np.all(np.diff(half) > 0)
    # a recovery demo's completed runs are spaced the same way
    np.testing.assert_allclose(recovery_progress(stage, 1, success, gripper=gripper), spaced)


def test_hop_and_inverse():
    p = np.linspace(0.05, 0.95, 7)
    for q in np.linspace(0, 1, 9):
        h = hop(p, q)
        assert np.all(np.abs(h) <= 1)
        np.testing.assert_allclose(apply_hop(p, h), q, atol=1e-5)
    assert hop(0.0, 1.0) == 1 and hop(1.0, 0.0) == -1 and hop(0.4, 0.4) == 0


def test_forward_shapes_and_masks():
    model = GRM(GRMConfig(**TINY))
    batch = {"frames": torch.from_numpy(frames(5)), "text": ["pick the cube"] * 3}
    for k, role in enumerate(("start", "goal", "before", "after")):
        batch[f"{role}_idx"] = torch.tensor([k, k, (k + 1) % 5])
    batch["before_mask"] = torch.tensor([[True, False], [False, False], [False, True]])
    logits = model(batch)
    assert logits.shape == (3, 11)
    logits.sum().backward()
    assert model.view_emb.grad is not None


def test_encoder_grid_reads_out_where_things_are(tmp_path):
    """The grid read-out adds a coarse layout of the feature map: the same content moved to
    another quadrant changes the features, and the option survives a save and load."""
    model = GRM(GRMConfig(**TINY, encoder_grid=2)).eval()
    assert model.encoder.proj.in_features == 3 * 16 + 16 * 2 * 2
    img = np.zeros((1, 2, 32, 32, 3), np.uint8)
    a, b = img.copy(), img.copy()
    a[:, :, 2:10, 2:10] = 255
    b[:, :, 22:30, 22:30] = 255
    with torch.no_grad():
        fa, fb = model.encode(torch.from_numpy(a)), model.encode(torch.from_numpy(b))
    assert not torch.allclose(fa, fb)
    model.save_pretrained(tmp_path / "g")
    again = GRM.from_pretrained(tmp_path / "g")
    assert again.cfg.encoder_grid == 2
    with torch.no_grad():
        torch.testing.assert_close(again.eval().encode(torch.from_numpy(a)), fa)
    with pytest.raises(ValueError, match="encoder_grid"):
        GRMConfig(encoder_grid=-1)


def test_save_load_round_trip_and_bad_checkpoints(tmp_path):
    model = GRM(GRMConfig(**TINY))
    model.save_pretrained(tmp_path / "m", extra={"training": {"tasks": ["x"]}})
    again = GRM.from_pretrained(tmp_path / "m")
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert again.metadata["training"]["tasks"] == ["x"]
    with pytest.raises(ModelInputError, match="not a GRM checkpoint"):
        GRM.from_pretrained(tmp_path / "nothing")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelInputError, match="corrupt"):
        GRM.from_pretrained(tmp_path / "m")
    other = GRM(GRMConfig(**{**TINY, "d_model": 64}))
    other.save_pretrained(tmp_path / "o")
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    model.save_pretrained(tmp_path / "m2")
    (tmp_path / "m2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelInputError, match="does not match"):
        GRM.from_pretrained(tmp_path / "m2")
    (tmp_path / "m2" / "config.json").write_text(json.dumps({**cfg, "architecture": "vlm"}))
    with pytest.raises(ModelInputError, match="not a GRM"):
        GRM.from_pretrained(tmp_path / "m2")


def test_inference_contract_fusion_and_state():
    pm = GRMProgressModel(GRM(GRMConfig(**TINY)))
    assert isinstance(pm, ProgressModel)
    ctx = TaskContext("stack", frames(1, seed=1)[0], frames(1, seed=2)[0])
    first = pm.reset([0, 1], [ctx, ctx], frames(2))
    assert first.progress.shape == (2,)
    out = pm.predict(frames(2, seed=3))
    for t in (out.progress, out.success, out.confidence):
        assert t.shape == (2,) and t.dtype == torch.float32
        assert torch.all((t >= 0) & (t <= 1))
    # environments are independent: resetting env 1 does not touch env 0's state
    phi0 = pm._state[0]["phi"].clone()
    pm.reset([1], [ctx], frames(1, seed=4))
    assert torch.equal(pm._state[0]["phi"], phi0)
    single = GRMProgressModel(pm.model, perspectives=("forward",))
    single.reset([0], [ctx], frames(1))
    assert torch.all(single.predict(frames(1)).confidence == 1)


def test_incremental_chaining_follows_hops():
    model = GRM(GRMConfig(**TINY))
    with torch.no_grad():  # make every hop exactly +0.2 (bin 6 of 11 over [-1, 1])
        model.head[-1].weight.zero_()
        model.head[-1].bias.fill_(-30.0)
        model.head[-1].bias[6] = 30.0
    pm = GRMProgressModel(model, perspectives=("incremental",))
    first = pm.reset([0], [TaskContext()], frames(1))
    phis = [float(first.progress)] + [
        float(pm.predict(frames(1, seed=s)).progress) for s in range(3)
    ]
    np.testing.assert_allclose(phis, [0.2, 0.36, 0.488, 0.5904], atol=1e-4)


@pytest.mark.parametrize("eps", [1e-3, 0.1])
def test_consistency_weight_and_conservative_update(eps):
    model = GRM(GRMConfig(**{**TINY, "fusion_eps": eps}))
    with torch.no_grad():  # every hop +0.2: phi_F = 0.2, phi_B = 1 (a hop past the goal)
        model.head[-1].weight.zero_()
        model.head[-1].bias.fill_(-30.0)
        model.head[-1].bias[6] = 30.0
    pm = GRMProgressModel(model, perspectives=("forward", "backward"))
    first = pm.reset([0], [TaskContext()], frames(1))
    w = float(np.exp(-model.cfg.fusion_alpha * (0.8 / (0.6 + eps)) ** 2))
    np.testing.assert_allclose(float(first.confidence), w, rtol=1e-4)
    np.testing.assert_allclose(float(first.progress), 0.6, atol=1e-5)  # first frame: the mean
    out = pm.predict(frames(1, seed=1))  # then the estimate moves w of the way to the mean
    np.testing.assert_allclose(float(out.progress), 0.6, atol=1e-5)
    pm._state[0]["phi"] = torch.zeros(())  # as if the previous estimate were 0
    out = pm.predict(frames(1, seed=2))
    np.testing.assert_allclose(float(out.progress), w * 0.6, atol=1e-5)


def test_missing_view_is_masked_only_with_view_dropout():
    cfg = GRMConfig(**TINY)
    pm = GRMProgressModel(GRM(cfg))
    ctx = TaskContext(None, frames(1)[0], frames(1)[0])
    pm.reset([0], [ctx], frames(1))
    out = pm.predict(frames(1, v=1), views=("wrist",))
    assert 0 <= float(out.progress) <= 1
    strict = GRMProgressModel(GRM(GRMConfig(**{**TINY, "view_dropout": 0.0})))
    strict.reset([0], [ctx], frames(1))
    with pytest.raises(ModelInputError, match="without view dropout"):
        strict.predict(frames(1, v=1), views=("wrist",))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((1, 2, 32, 32, 3), np.float32), "uint8"),
        (np.full((1, 2, 32, 32, 3), np.nan, np.float32), "NaN"),
        (np.zeros((1, 3, 32, 32, 3), np.uint8), "3 views"),
        (np.zeros((1, 2, 48, 48, 3), np.uint8), "32x32"),
        (np.zeros((2, 32, 32, 3), np.uint8), "shape"),
    ],
)
def test_bad_frames_raise_one_line_errors(bad, match):
    pm = GRMProgressModel(GRM(GRMConfig(**TINY)))
    pm.reset([0], [TaskContext()], frames(1))
    with pytest.raises(ModelInputError, match=match):
        pm.predict(bad)


def test_unreset_env_and_bad_config():
    pm = GRMProgressModel(GRM(GRMConfig(**TINY)))
    with pytest.raises(ModelInputError, match="never reset"):
        pm.predict(frames(1), env_indices=[3])
    with pytest.raises(ValueError, match="odd"):
        GRMConfig(num_bins=10)
    with pytest.raises(ValueError, match="perspectives"):
        GRMConfig(perspectives=("sideways",))
    with pytest.raises(ValueError, match="fusion_eps"):
        GRMConfig(fusion_eps=0.0)


def test_forward_perspective_hops_from_the_episodes_own_first_frame():
    torch.manual_seed(0)
    model = GRM(GRMConfig(**TINY))
    with torch.no_grad():  # positive hops, so that progress is not clamped at 0
        model.head[-1].bias += 3.0 * torch.linspace(-1, 1, TINY["num_bins"])
    ctx = TaskContext("stack", frames(1, seed=1)[0], frames(1, seed=2)[0])
    first, now = frames(1, seed=5), frames(1, seed=6)

    def hop_from(before):  # the forward hop computed by hand
        with torch.no_grad():
            enc = {
                r: model.encode(torch.from_numpy(np.ascontiguousarray(f)))
                for r, f in (
                    ("start", ctx.start_frames[None]),
                    ("goal", ctx.goal_frames[None]),
                    ("before", before),
                    ("after", now),
                )
            }
            masks = {r: torch.zeros(1, 2, dtype=torch.bool) for r in enc}
            text = model.text_features(["stack"], "cpu")
            return float(model.expected_hop(model.hop_logits(enc, masks, text)))

    own = GRMProgressModel(model, perspectives=("forward",))
    own.reset([0], [ctx], first)
    h_own, h_ref = hop_from(first), hop_from(ctx.start_frames[None])
    assert 0 < h_own < 1 and abs(h_own - h_ref) > 1e-4
    assert float(own.predict(now).progress) == pytest.approx(h_own, abs=1e-5)
    # A checkpoint without the field was trained from the reference start: it keeps it.
    new_only = ("forward_anchor", "label_spacing")
    legacy = GRMConfig.from_dict(
        {k: v for k, v in GRMConfig(**TINY).to_dict().items() if k not in new_only}
    )
    assert legacy.forward_anchor == "reference"
    ref = GRMProgressModel(GRM(legacy), perspectives=("forward",))
    ref.model.load_state_dict(model.state_dict())
    ref.reset([0], [ctx], first)
    assert float(ref.predict(now).progress) == pytest.approx(h_ref, abs=1e-5)
    with pytest.raises(ValueError, match="forward_anchor"):
        GRMConfig(**TINY, forward_anchor="goal")
    assert legacy.label_spacing == "time"  # older checkpoints were trained on time spacing
    assert GRMConfig(**TINY).label_spacing == "blend"  # new models: blend by default
    with pytest.raises(ValueError, match="label_spacing"):
        GRMConfig(**TINY, label_spacing="distance")
