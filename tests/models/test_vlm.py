"""VLM reward (CLIP goal-baseline projection) on a tiny, randomly initialised open_clip model."""

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from models.base import ModelInputError, ProgressModel, TaskContext
from models.vlm import VLMConfig, VLMReward, load, load_config
from models.vlm.clip_reward import preprocess
from models.vlm.weights import state_dict_cpu

TINY = "robo-test-tiny-clip"
TINY_WIDE = "robo-test-tiny-clip-wide"
SIZE = 32
VIEWS = ("front", "wrist")
TARGET = ("the cube is on the target", "a cube placed on the goal")
BASELINE = ("a robot arm on a table",)


def tiny_cfg(width=64, embed=32):
    return {
        "embed_dim": embed,
        "vision_cfg": {
            "image_size": SIZE,
            "layers": 2,
            "width": width,
            "patch_size": 16,
            "head_width": 32,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": width,
            "heads": 2,
            "layers": 2,
        },
    }


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(tiny_cfg()))
    (folder / f"{TINY_WIDE}.json").write_text(json.dumps(tiny_cfg(width=96, embed=48)))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    return open_clip.create_model(TINY, pretrained=None).eval()


def make(clip, **kw):
    base = dict(
        arch=TINY,
        pretrained="",
        weights="random",
        views=VIEWS,
        image_size=(SIZE, SIZE),
        target_prompts=TARGET,
        baseline_prompts=BASELINE,
    )
    return VLMReward(VLMConfig(**{**base, **kw}), clip=clip)


def frames(b, v=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (b, v, size, size, 3), dtype=np.uint8)


def hand_embed(clip, f):
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        return F.normalize(clip.encode_image(x), dim=-1)


def hand_text(clip, prompts):
    with torch.no_grad():
        return F.normalize(
            clip.encode_text(open_clip.tokenize(list(prompts), context_length=16)), dim=-1
        )


def test_formula_matches_hand_computation(clip):
    alpha = 0.3
    model = make(clip, alpha=alpha, calibration=[[0.0, 1.0]])
    f = frames(3)
    model.reset(range(3), [TaskContext()] * 3, f)
    got = model.rewards(f)
    g, b = hand_text(clip, TARGET).mean(0), hand_text(clip, BASELINE).mean(0)
    d = (g - b)[:, None]
    proj = alpha * d @ d.T / (d.T @ d) + (1 - alpha) * torch.eye(d.shape[0])
    x = hand_embed(clip, f.reshape(-1, SIZE, SIZE, 3))
    want = (1 - 0.5 * ((x - g) @ proj).norm(dim=-1) ** 2).view(3, 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.projection(), proj, atol=1e-6, rtol=1e-5)


def test_alpha_zero_is_cosine_and_alpha_one_is_projection(clip):
    f = frames(2, seed=1)
    target = TARGET[:1]
    g, b = hand_text(clip, target)[0], hand_text(clip, BASELINE)[0]
    x = hand_embed(clip, f.reshape(-1, SIZE, SIZE, 3)).view(2, 2, -1)
    m0 = make(clip, alpha=0.0, target_prompts=target, calibration=[[0.0, 1.0]])
    m0.reset(range(2), [TaskContext()] * 2, f)
    torch.testing.assert_close(
        m0.rewards(f), x @ g, atol=1e-5, rtol=1e-5
    )  # |g| = 1: cosine similarity
    m1 = make(clip, alpha=1.0, target_prompts=target, calibration=[[0.0, 1.0]])
    m1.reset(range(2), [TaskContext()] * 2, f)
    dhat = (g - b) / (g - b).norm()
    torch.testing.assert_close(m1.rewards(f), 1 - 0.5 * ((x - g) @ dhat) ** 2, atol=1e-5, rtol=1e-5)
    p = m1.projection(target)
    torch.testing.assert_close(p @ p, p, atol=1e-5, rtol=1e-4)  # a rank-1 projector
    assert torch.linalg.matrix_rank(p) == 1


def test_text_embeddings_are_cached_and_images_batched(clip, monkeypatch):
    model = make(clip, calibration=[[0.0, 1.0]])
    calls = {"text": 0, "image": 0, "image_batch": []}
    enc_text, enc_image = clip.encode_text, clip.encode_image

    def count_text(*a, **k):
        calls["text"] += 1
        return enc_text(*a, **k)

    def count_image(x, *a, **k):
        calls["image"] += 1
        calls["image_batch"].append(x.shape[0])
        return enc_image(x, *a, **k)

    monkeypatch.setattr(clip, "encode_text", count_text)
    monkeypatch.setattr(clip, "encode_image", count_image)
    f = frames(3)
    ctx = TaskContext(start_frames=f[0], goal_frames=f[1])
    model.reset(range(3), [ctx] * 3, f)
    model.reset([0], [ctx], f[:1])
    model.predict(f)
    model.projection()
    assert calls["text"] == 1  # every prompt encoded once, in one call
    # reset: 3 first frame sets + 3 x (start, goal) in one pass; predict: 3 envs x 2 views in one pass
    assert calls["image_batch"] == [(3 + 6) * 2, (1 + 2) * 2, 3 * 2]


def test_preprocessing_matches_open_clip_transform(clip):
    rng = np.random.default_rng(0)
    f = np.clip(
        np.cumsum(np.cumsum(rng.normal(0, 6, (48, 64, 3)), axis=0), axis=1) / 4 + 128, 0, 255
    ).astype(np.uint8)
    ref = open_clip.image_transform(SIZE, is_train=False)(Image.fromarray(f))
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    ours = preprocess(torch.from_numpy(f)[None], SIZE, mean, std, "bicubic")[0]
    assert ours.shape == ref.shape
    # same resize + crop + normalisation (PIL vs torch bicubic differ a little)
    assert (ours - ref).abs().mean() < 0.05 * ref.std()
    assert (
        preprocess(torch.from_numpy(f)[None, :, :48], SIZE, mean, std, "bicubic")[0] - ref
    ).abs().mean() > 0.2 * ref.std()


def goal_setup(clip, **kw):
    model = make(clip, mode="goal_image", **kw)
    demo = frames(2, seed=3)  # demo[0] = start, demo[1] = goal
    return model, demo, TaskContext(start_frames=demo[0], goal_frames=demo[1])


def test_goal_image_variant_is_zero_at_start_and_one_at_goal(clip):
    model, demo, ctx = goal_setup(clip)
    assert isinstance(model, ProgressModel)
    out = model.reset([4, 9], [ctx, ctx], demo[:1].repeat(2, 0))
    assert out.progress.dtype == torch.float32 and out.progress.shape == (2,)
    torch.testing.assert_close(out.progress, torch.zeros(2), atol=1e-4, rtol=0)
    out = model.predict(demo[[1, 0]], env_indices=[4, 9])
    torch.testing.assert_close(out.progress, torch.tensor([1.0, 0.0]), atol=1e-4, rtol=0)
    assert out.success.tolist() == [1.0, 0.0] and out.confidence.tolist() == [1.0, 1.0]
    mid = ((demo[0].astype(float) + demo[1]) / 2).astype(np.uint8)[None]
    p = model.predict(mid, env_indices=[4]).progress.item()
    assert 0.05 < p < 0.95
    # without start frames the episode's first frame is the baseline
    model.reset([1], [TaskContext(goal_frames=demo[1])], demo[:1])
    assert model.predict(demo[1:], env_indices=[1]).progress.item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("fusion", "weights", "want"),
    [("mean", (), 0.5), ("max", (), 1.0), ("weighted", (3.0, 1.0), 0.75)],
)
def test_multi_view_fusion(clip, fusion, weights, want):
    model, demo, ctx = goal_setup(clip, fusion=fusion, view_weights=weights)
    model.reset([0], [ctx], demo[:1])
    mixed = np.stack([demo[1][0], demo[0][1]])[None]  # front at the goal, wrist at the start
    assert model.predict(mixed).progress.item() == pytest.approx(want, abs=1e-4)
    # one view only: fused over the given views
    assert model.predict(demo[1:, 1:], views=("wrist",)).progress.item() == pytest.approx(
        1.0, abs=1e-4
    )


def test_text_mode_normalises_with_reference_frames_or_calibration(clip):
    f = frames(2, seed=5)
    model = make(clip)
    model.reset([0], [TaskContext(start_frames=f[0], goal_frames=f[1])], f[:1])
    assert model.predict(f, env_indices=[0, 0]).progress.tolist() == pytest.approx(
        [0.0, 1.0], abs=1e-4
    )
    with pytest.raises(ModelInputError, match="calibration"):
        model.reset([1], [TaskContext(text="pick")], f[:1])
    cfg = model.calibrate(f[:1], f[1:])
    assert len(cfg.calibration) == 2
    model.reset([0, 1], [TaskContext()] * 2, f)
    assert model.predict(f).progress.tolist() == pytest.approx([0.0, 1.0], abs=1e-4)


def test_text_from_context(clip, monkeypatch):
    model = make(clip, text_from_context=True, calibration=[[0.0, 1.0]])
    f = frames(2)
    model.reset([0, 1], [TaskContext(text="stack the red cube"), TaskContext()], f)
    g_ctx = model._state[0]["g"][0]
    torch.testing.assert_close(
        g_ctx, hand_text(clip, ["stack the red cube"])[0], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        model._state[1]["g"][0], hand_text(clip, TARGET).mean(0), atol=1e-5, rtol=1e-5
    )


def test_save_load_round_trip(clip, tmp_path):
    model = make(clip, alpha=0.7, fusion="max", calibration=[[0.1, 0.9], [0.2, 0.8]])
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["clip.safetensors", "config.json"]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["config"]["arch"] == TINY and meta["config"]["weights"] == "clip.safetensors"
    again = load(str(tmp_path / "m"))
    assert again.cfg == model.cfg.__class__(
        **{**model.cfg.to_dict(), "weights": str(tmp_path / "m" / "clip.safetensors")}
    )
    f = frames(3, seed=7)
    for m in (model, again):
        m.reset(range(3), [TaskContext()] * 3, f)
    torch.testing.assert_close(again.rewards(f), model.rewards(f))
    torch.testing.assert_close(again.predict(f).progress, model.predict(f).progress)
    # a model built from a weights file references it instead of copying it
    save_file(state_dict_cpu(clip), str(tmp_path / "tiny.safetensors"))
    from_file = VLMReward(
        VLMConfig(**{**model.cfg.to_dict(), "weights": str(tmp_path / "tiny.safetensors")})
    )
    from_file.save_pretrained(tmp_path / "ref")
    assert [p.name for p in (tmp_path / "ref").iterdir()] == ["config.json"]
    assert json.loads((tmp_path / "ref" / "config.json").read_text())["config"]["weights"] == str(
        tmp_path / "tiny.safetensors"
    )
    from_file.reset(range(3), [TaskContext()] * 3, f)
    torch.testing.assert_close(from_file.rewards(f), model.rewards(f))


def test_clip_input_size_is_configurable(clip, tmp_path):
    save_file(state_dict_cpu(clip), str(tmp_path / "tiny.safetensors"))
    model = VLMReward(
        VLMConfig(
            arch=TINY,
            pretrained="",
            weights=str(tmp_path / "tiny.safetensors"),
            clip_image_size=48,
            views=VIEWS,
            image_size=(40, 40),
            calibration=[[0.0, 1.0]],
        )
    )
    assert model.clip_size == 48 and model.image_size == (40, 40)
    f = frames(2, size=40)
    model.reset(range(2), [TaskContext()] * 2, f)  # 40 px frames resized to 48 inside the model
    assert torch.isfinite(model.rewards(f)).all() and model.predict(f).progress.shape == (2,)


def test_offline_missing_weights_say_where_to_put_them(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBO_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr("models.vlm.weights._hf_cached", lambda arch, tag: None)
    want = tmp_path / "open_clip" / "ViT-B-32_laion2b_s34b_b79k.safetensors"
    with pytest.raises(
        ModelInputError,
        match=r"ViT-B-32 weights not found at .*: download open_clip's ViT-B-32 \(laion2b_s34b_b79k\)",
    ) as e:
        VLMReward(VLMConfig())
    assert (
        str(want) in str(e.value) and "weights=<path>" in str(e.value) and "\n" not in str(e.value)
    )
    with pytest.raises(ModelInputError, match="not found at /nowhere/clip.bin"):
        VLMReward(VLMConfig(weights="/nowhere/clip.bin"))
    # a file at the default place is picked up
    save_file(state_dict_cpu(clip), str(tmp_path / "tiny.safetensors"))
    (tmp_path / "open_clip").mkdir()
    (tmp_path / "tiny.safetensors").rename(tmp_path / "open_clip" / f"{TINY}_mytag.safetensors")
    model = VLMReward(
        VLMConfig(arch=TINY, pretrained="mytag", views=VIEWS, image_size=(SIZE, SIZE))
    )
    assert model.weights_path.name == f"{TINY}_mytag.safetensors"


def test_weights_of_another_architecture(clip, tmp_path):
    save_file(state_dict_cpu(clip), str(tmp_path / "tiny.safetensors"))
    with pytest.raises(
        ModelInputError, match=f"holds weights for another architecture than {TINY_WIDE}"
    ):
        VLMReward(
            VLMConfig(arch=TINY_WIDE, pretrained="", weights=str(tmp_path / "tiny.safetensors"))
        )
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelInputError, match="not a readable weights file"):
        VLMReward(VLMConfig(arch=TINY, pretrained="", weights=str(tmp_path / "junk.bin")))
    with pytest.raises(ModelInputError, match="no architecture 'ViT-Nope'"):
        VLMReward(VLMConfig(arch="ViT-Nope", weights="random"))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(target_prompts=()), "target_prompts is empty"),
        (dict(baseline_prompts=[" "]), "baseline_prompts is empty or has a blank"),
        (dict(baseline_prompts=TARGET), "d = g - b = 0"),
        (dict(alpha=1.5), r"alpha=1.5 must lie in \[0, 1\]"),
        (dict(alpha=-0.1), "alpha"),
        (dict(fusion="weighted", view_weights=(1.0,)), "weighted fusion needs 2"),
        (dict(fusion="median"), "median"),
        (dict(calibration=[[0.5, 0.5]]), "r_start == r_goal"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ModelInputError, match=match):
        VLMConfig(**{**dict(views=VIEWS, target_prompts=TARGET, baseline_prompts=BASELINE), **kw})


def test_bad_inputs(clip):
    model = make(clip, calibration=[[0.0, 1.0]])
    f = frames(2)
    with pytest.raises(ModelInputError, match="never reset"):
        model.predict(f)
    model.reset(range(2), [TaskContext()] * 2, f)
    with pytest.raises(ModelInputError, match="have 3 views but the model expects 2"):
        model.predict(frames(2, v=3))
    with pytest.raises(ModelInputError, match="48x48 px but the model expects 32x32"):
        model.predict(frames(2, size=48))
    with pytest.raises(ModelInputError, match="uint8"):
        model.predict(f.astype(np.float32))
    with pytest.raises(ModelInputError, match="shape"):
        model.predict(f[0])
    with pytest.raises(ModelInputError, match="unknown views"):
        model.predict(f[:, :1], views=("side",))
    with pytest.raises(ModelInputError, match="3 frame sets but 2 env indices"):
        model.predict(frames(3), env_indices=[0, 1])
    # prompts that differ only in case tokenise (and so embed) identically: d = 0
    same = make(
        clip,
        target_prompts=("Pick the cube",),
        baseline_prompts=("pick the cube",),
        calibration=[[0.0, 1.0]],
    )
    with pytest.raises(ModelInputError, match="embed identically"):
        same.reset([0], [TaskContext()], f[:1])
    goal = make(clip, mode="goal_image")
    with pytest.raises(ModelInputError, match="needs TaskContext.goal_frames"):
        goal.reset([0], [TaskContext()], f[:1])
    with pytest.raises(
        ModelInputError, match=r"goal and start frames embed identically .*\(d = 0\)"
    ):
        goal.reset([0], [TaskContext(start_frames=f[0], goal_frames=f[0])], f[:1])
    with pytest.raises(ModelInputError, match="context goal frames"):
        goal.reset([0], [TaskContext(goal_frames=f[0, :1])], f[:1])


def test_config_files_load(tmp_path):
    for name in ("default", "goal_image"):
        cfg = load_config(f"configs/vlm/{name}.yaml")
        assert cfg.arch == "ViT-B-32"
    assert load_config("configs/vlm/goal_image.yaml").mode.value == "goal_image"
    (tmp_path / "bad.yaml").write_text("alpha: 2\n")
    with pytest.raises(ModelInputError, match="alpha=2"):
        load(str(tmp_path / "bad.yaml"))
    (tmp_path / "typo.yaml").write_text("alpah: 0.5\n")
    with pytest.raises(ModelInputError, match="no field.*alpah"):
        load_config(tmp_path / "typo.yaml")


def test_int8_quantization_stays_close_to_fp32(clip):
    import copy

    from models.base import TaskContext

    start, goal, now = frames(1, seed=1), frames(1, seed=2), frames(3, seed=3)
    ctx = TaskContext(None, start[0], goal[0])
    out = []
    for int8 in (False, True):
        m = make(copy.deepcopy(clip), mode="goal_image", int8=int8)
        m.reset([0, 1, 2], [ctx] * 3, now)
        out.append(m.predict(now).progress)
    assert isinstance(
        m.clip.visual.transformer.resblocks[0].mlp.c_fc, torch.ao.nn.quantized.dynamic.Linear
    )
    assert torch.allclose(out[0], out[1], atol=0.05)
