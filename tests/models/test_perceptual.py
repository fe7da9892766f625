"""Perceptual reward: step discovery, progress, persistence, encoders, errors, real frames."""

import itertools
import json
import time

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from models.base import ModelInputError, ProgressModel, TaskContext
from models.perceptual import PerceptualConfig, PerceptualReward, fit, load, load_config
from models.perceptual.steps import discover_steps, segment_dp, segment_to_prototypes

COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
SIZE = 32


def colour_demo(lengths, seed, views=2):
    """A video whose views change colour in len(lengths) phases (a square drifts for texture)."""
    rng = np.random.default_rng(seed)
    frames = []
    for phase, n in enumerate(lengths):
        for _ in range(n):
            f = np.broadcast_to(COLOURS[phase], (views, SIZE, SIZE, 3)).astype(np.int16)
            f = f + rng.normal(0, 12, f.shape)
            y, x = rng.integers(0, SIZE - 8, 2)
            f[:, y : y + 8, x : x + 8] = 128
            frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    lengths = [rng.integers(6, 13, 3) for _ in range(6)]
    demos = [colour_demo(n, seed=i) for i, n in enumerate(lengths)]
    return demos, lengths


@pytest.fixture(scope="module")
def fitted(synthetic):
    demos, _ = synthetic
    t0 = time.perf_counter()
    model = fit(demos[:5], 3, views=("front", "wrist"))
    return model, time.perf_counter() - t0


def test_segment_dp_is_optimal():
    rng = np.random.default_rng(1)
    for _ in range(10):
        x = rng.normal(size=(8, 2))
        k = int(rng.integers(1, 5))

        def sse(cuts, x=x):
            return sum(((s - s.mean(0)) ** 2).sum() for s in np.split(x, list(cuts)))

        best = min(itertools.combinations(range(1, 8), k - 1), key=sse)
        assert segment_dp(x, k) == list(best)


def test_segment_to_prototypes_is_ordered_and_complete():
    x = np.array([[0.0], [2.1], [0.1], [1.0], [2.0], [1.9]])
    labels = segment_to_prototypes(x, np.array([[0.0], [1.0], [2.0]]))
    assert labels[0] == 0 and labels[-1] == 2 and np.all(np.diff(labels) >= 0)
    assert labels[1] != 2  # the early outlier near step 2 cannot jump ahead of step 1
    assert set(discover_steps([x[:4], x], 3)[0]) == {0, 1, 2}


def test_step_discovery_finds_the_colour_boundaries(synthetic, fitted):
    _, lengths = synthetic
    model, seconds = fitted
    want = [np.cumsum(n)[:-1].tolist() for n in lengths[:5]]
    assert model.fit_info["boundaries"] == want
    assert seconds < 5.0 and model.fit_info["num_demos"] == 5


def test_progress_rises_over_a_demo_and_falls_reversed(synthetic, fitted):
    demos, lengths = synthetic
    model, _ = fitted
    held_out = demos[5]
    up = model.progress_curve(held_out)
    assert up.dtype == np.float32 and up.min() >= 0 and up.max() <= 1
    assert up[0] < 0.05 and up[-1] > 0.95
    assert spearmanr(up, np.arange(len(up)))[0] > 0.8
    down = model.progress_curve(held_out[::-1])
    assert down[0] > 0.95 and down[-1] < 0.05
    assert spearmanr(down, np.arange(len(down)))[0] < -0.8
    # linear step weights (1, 2): the middle phase scores 1/3, uniform weights 1/2
    mid = held_out[lengths[5][0] + 2 : lengths[5][0] + 3]
    assert model.progress_curve(mid, filtered=False)[0] == pytest.approx(1 / 3, abs=0.05)


def test_one_odd_frame_does_not_undo_a_step(synthetic, fitted):
    demos, lengths = synthetic
    model, _ = fitted
    video = demos[5].copy()
    glitch = len(video) - 3
    video[glitch] = demos[5][0]  # a frame of the first phase near the end
    curve = model.progress_curve(video)
    raw = model.progress_curve(video, filtered=False)
    assert raw[glitch] < 0.05  # on its own the frame looks like the start...
    assert curve[glitch] > 0.6 and curve[-1] > 0.95  # ...but progress holds


def test_contract_reset_predict_batched(synthetic, fitted):
    demos, _ = synthetic
    model, _ = fitted
    assert isinstance(model, ProgressModel)
    video = demos[5]
    rev = video[::-1]
    out = model.reset(
        [3, 8], [TaskContext(), TaskContext(text="ignored")], np.stack([video[0], rev[0]])
    )
    assert out.progress.dtype == torch.float32 and out.progress.shape == (2,)
    curves = [[out.progress[0].item()], [out.progress[1].item()]]
    for t in range(1, len(video)):
        o = model.predict(np.stack([rev[t], video[t]]), env_indices=[8, 3])
        for arr in (o.progress, o.success, o.confidence):
            assert arr.dtype == torch.float32 and ((arr >= 0) & (arr <= 1)).all()
        curves[0].append(o.progress[1].item())
        curves[1].append(o.progress[0].item())
    np.testing.assert_allclose(curves[0], model.progress_curve(video), atol=1e-5)
    np.testing.assert_allclose(curves[1], model.progress_curve(rev), atol=1e-5)
    assert o.success[1] > 0.9 and o.success[0] < 0.1


def test_save_load_round_trip(synthetic, fitted, tmp_path):
    demos, _ = synthetic
    model, _ = fitted
    model.save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    again = load(str(tmp_path / "p"))
    assert (
        again.cfg == model.cfg
        and again.fit_info == model.fit_info
        and again.views == ("front", "wrist")
    )
    np.testing.assert_allclose(
        again.progress_curve(demos[5]), model.progress_curve(demos[5]), atol=1e-6
    )
    with pytest.raises(ModelInputError, match="not a perceptual reward folder"):
        load(str(tmp_path / "nothing"))
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    (tmp_path / "p" / "config.json").write_text(json.dumps({**meta, "architecture": "vlm"}))
    with pytest.raises(ModelInputError, match="not a perceptual reward"):
        load(str(tmp_path / "p"))
    (tmp_path / "p" / "config.json").write_text(json.dumps(meta))
    (tmp_path / "p" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelInputError, match="corrupt"):
        load(str(tmp_path / "p"))


def test_fit_errors(synthetic):
    demos, _ = synthetic
    with pytest.raises(ModelInputError, match="at least 2 demos, got 1"):
        fit(demos[:1], 3)
    assert fit(demos[:1], 3, PerceptualConfig(min_demos=1)).cfg.num_steps == 3
    with pytest.raises(
        ModelInputError, match="requested 5 steps but the shortest demo has 3 frames"
    ):
        fit([demos[0], demos[1][:3]], 5)
    with pytest.raises(ModelInputError, match="at least 2 steps"):
        fit(demos[:2], 1)
    with pytest.raises(ModelInputError, match="demo 1 are 16x16 px but the model expects 32x32"):
        fit([demos[0], demos[1][:, :, :16, :16]], 3)
    with pytest.raises(ModelInputError, match="demo 1 have 1 views but the model expects 2"):
        fit([demos[0], demos[1][:, :1]], 3)
    with pytest.raises(ModelInputError, match="uint8"):
        fit([demos[0], demos[1].astype(np.float32)], 3)
    with pytest.raises(ModelInputError, match="shape"):
        fit([demos[0][0], demos[1][0]], 3)
    with pytest.raises(ModelInputError, match="fall_prob"):
        PerceptualConfig(advance_prob=0.8, fall_prob=0.3)
    with pytest.raises(ModelInputError, match="needs timm_name"):
        PerceptualConfig(encoder="timm")
    with pytest.raises(ModelInputError, match="needs a fitted config"):
        PerceptualReward(PerceptualConfig(), {})


def test_predict_errors(synthetic, fitted):
    demos, _ = synthetic
    model, _ = fitted
    with pytest.raises(ModelInputError, match="never reset"):
        model.predict(demos[0][:1], env_indices=[99])
    model.reset([0], [TaskContext()], demos[0][:1])
    with pytest.raises(ModelInputError, match="needs all views"):
        model.predict(demos[0][:1, :1], views=("front",))
    with pytest.raises(ModelInputError, match="have 1 views but the model expects 2"):
        model.predict(demos[0][:1, :1])
    with pytest.raises(ModelInputError, match="1 frame sets but 2 env indices"):
        model.predict(demos[0][:1], env_indices=[0, 1])


def test_timm_encoder_from_local_weights(synthetic, tmp_path):
    import timm
    from safetensors.torch import save_file

    demos, _ = synthetic
    net = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "r.safetensors")
    )
    cfg = PerceptualConfig(
        encoder="timm",
        timm_name="test_resnet",
        encoder_weights=str(tmp_path / "r.safetensors"),
        timm_layers=(0, 1, 2),
        encoder_input=32,
    )
    model = fit(demos[:3], 3, cfg)
    maps = net.eval().forward_intermediates(
        torch.zeros(1, 3, 32, 32), indices=[0, 1, 2], intermediates_only=True
    )
    assert model.fit_info["num_features"] == 2 * sum(m.shape[1] for m in maps)
    curve = model.progress_curve(demos[5])
    assert curve[-1] > curve[0] + 0.5
    model.save_pretrained(tmp_path / "m")
    np.testing.assert_allclose(load(str(tmp_path / "m")).progress_curve(demos[5]), curve, atol=1e-5)
    other = timm.create_model("test_convnext", pretrained=False, num_classes=0)
    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "c.safetensors")
    )
    with pytest.raises(ModelInputError, match="another architecture than timm's test_resnet"):
        fit(
            demos[:2],
            3,
            PerceptualConfig(
                **{**cfg.to_dict(), "encoder_weights": str(tmp_path / "c.safetensors")}
            ),
        )
    with pytest.raises(ModelInputError, match="test_resnet weights not found at /nowhere/r.pth"):
        fit(
            demos[:2], 3, PerceptualConfig(**{**cfg.to_dict(), "encoder_weights": "/nowhere/r.pth"})
        )


def test_grm_encoder(synthetic, tmp_path):
    from models.grm.config import GRMConfig
    from models.grm.model import GRM

    demos, _ = synthetic
    from tests.tiny import TINY_GRM

    GRM(GRMConfig(**{**TINY_GRM, "image_size": (SIZE, SIZE), "text_buckets": 0})).save_pretrained(
        tmp_path / "grm"
    )
    model = fit(demos[:3], 3, PerceptualConfig(encoder="grm", grm_dir=str(tmp_path / "grm")))
    assert model.fit_info["num_features"] == 2 * (8 + 16 + 32)  # pooled ReLU maps + encoder output
    curve = model.progress_curve(demos[5])
    assert curve[-1] > curve[0] + 0.5
    with pytest.raises(ModelInputError, match="not a GRM checkpoint"):
        fit(demos[:2], 3, PerceptualConfig(encoder="grm", grm_dir=str(tmp_path / "none")))


def test_config_files_load():
    cfg = load_config("configs/perceptual/default.yaml")
    assert cfg.encoder.value == "random_projection" and cfg.num_steps == 0
    timm_cfg = load_config("configs/perceptual/timm_resnet18.yaml")
    assert timm_cfg.timm_name == "resnet18"


@pytest.fixture(scope="module")
def rendered():
    sim = pytest.importorskip("sim")
    from sim.rollouts import make_policy, run_rollout

    env = sim.make("tabletop/pick-place-v0", image_size=32, terminate_on_success=False)
    try:
        rollouts = [
            run_rollout(env, make_policy("expert", env, np.random.default_rng(s)), s)
            for s in range(6)
        ]
        undo = run_rollout(env, make_policy("undo", env, np.random.default_rng(0)), 100)
    finally:
        env.close()
    return rollouts, undo


def test_smoke_on_rendered_expert_demos(rendered):
    rollouts, undo = rendered
    demos = [r.frames for r in rollouts[:5]]
    views = ("front", "side", "wrist")
    t0 = time.perf_counter()
    model = fit(demos, 4, views=views)
    assert time.perf_counter() - t0 < 5.0
    held = rollouts[5]
    curve = model.progress_curve(held.frames)
    assert curve[-1] > curve[0] + 0.5
    assert spearmanr(curve, held.privileged_progress)[0] > 0.6
    assert model.progress_curve(held.frames[::-1])[-1] < 0.3
    assert model.progress_curve(undo.frames)[-1] < 0.3  # the cube carried back: progress falls
