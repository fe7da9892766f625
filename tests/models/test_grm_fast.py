"""GRM fast path: same results as the plain model, caching kept, padded fixed shapes, CUDA when present."""

import numpy as np
import pytest
import torch

from models.base import ModelInputError, TaskContext
from models.grm.config import GRMConfig
from models.grm.fast import FastGRM, bucket, make_fast, resolve_dtype, warmup
from models.grm.inference import GRMProgressModel
from models.grm.model import GRM
from tests.tiny import TINY_GRM

TINY = TINY_GRM


def frames(t, b, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (t, b, 2, 32, 32, 3), dtype=np.uint8)


def pair(device="cpu", **fast):
    """A plain and a fast progress model with the same weights (separate modules)."""
    torch.manual_seed(0)
    plain = GRM(GRMConfig(**TINY))
    other = GRM(GRMConfig(**TINY))
    other.load_state_dict(plain.state_dict())
    return GRMProgressModel(plain, device=device), make_fast(
        GRMProgressModel(other, device=device), **fast
    )


def contexts(fr, b):
    return [
        TaskContext("put the red cube on the plate", fr[0, 0], fr[-1, 0]),
        TaskContext(text="reach"),
        TaskContext(start_frames=fr[1, -1]),
    ][:b] + [TaskContext("reach", goal_frames=fr[2, 0])] * max(0, b - 3)


def run(pm, fr, b):
    outs = [pm.reset(list(range(b)), contexts(fr, b), fr[0])]
    outs += [pm.predict(fr[t]) for t in range(1, len(fr))]
    return outs


def assert_close(a, b, atol):
    for x, y in zip(a, b, strict=True):
        for name in ("progress", "success", "confidence"):
            got, want = getattr(x, name), getattr(y, name)
            assert got.dtype == torch.float32 and got.shape == want.shape
            torch.testing.assert_close(got, want, atol=atol, rtol=0)


@pytest.mark.parametrize("b", [1, 3])
def test_fast_fp32_equals_plain_on_cpu(b):
    plain, fast = pair(dtype="auto")
    assert isinstance(fast.model, FastGRM) and fast.model.settings.dtype == "float32"
    fr = frames(6, b)
    assert_close(run(fast, fr, b), run(plain, fr, b), atol=1e-5)


@pytest.mark.parametrize("b", [3, 5])
def test_padded_fixed_shape_path_equals_plain(b):
    # the compile wiring with a cheap backend: batches padded to powers of two, sliced back
    plain, fast = pair(dtype="fp32", compile=True, backend="eager")
    assert fast.model.pad_batches and not fast.model.settings.cuda_graphs
    fr = frames(5, b, seed=1)
    assert_close(run(fast, fr, b), run(plain, fr, b), atol=1e-5)


def test_cpu_bf16_within_a_loose_tolerance():
    plain, fast = pair(dtype="bf16")
    assert fast.model.settings.dtype == "bfloat16"
    fr = frames(5, 4, seed=2)
    assert_close(run(fast, fr, 4), run(plain, fr, 4), atol=0.05)


def test_caching_is_kept_each_frame_encoded_once():
    _, fast = pair(dtype="fp32")
    rows = []
    encode = fast.model._encode
    fast.model._encode = lambda x: (rows.append(x.shape[0]), encode(x))[1]
    fr = frames(4, 3)
    fast.reset([0, 1, 2], contexts(fr, 3), fr[0])
    rows.clear()
    for t in range(1, 4):
        fast.predict(fr[t])
    assert rows == [
        3,
        3,
        3,
    ]  # only the new frames; previous and reference features come from the cache
    prev = fast._state[0]["prev"]
    assert prev.dtype == torch.float32
    torch.testing.assert_close(prev, fast.model.encode(torch.from_numpy(fr[3][:1]))[0])


def test_make_fast_twice_unwraps_and_warmup_covers_buckets():
    _, fast = pair(dtype="fp32", compile=True, backend="eager")
    grm = fast.model.grm
    make_fast(fast, dtype="fp32")
    assert fast.model.grm is grm and not fast.model.pad_batches
    make_fast(fast, dtype="fp32", compile=True, backend="eager")
    assert warmup(fast, max_batch=20) == 6  # 1, 2, 4, 8, 16, 32


def test_bucket_and_dtype_resolution():
    assert [bucket(n) for n in (1, 2, 3, 5, 64, 65)] == [1, 2, 4, 8, 64, 128]
    assert resolve_dtype("auto", torch.device("cpu")) is None
    assert resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ModelInputError, match="fp16 autocast is for CUDA"):
        resolve_dtype("fp16", torch.device("cpu"))
    with pytest.raises(ModelInputError, match="use auto, fp32"):
        resolve_dtype("int8", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_fast_path_matches_fp32(compile):
    plain, fast = pair(device="cuda", dtype="auto", compile=compile)
    assert fast.model.settings.dtype in ("bfloat16", "float16")
    assert fast.model.settings.cuda_graphs == compile
    if compile:
        warmup(fast, max_batch=8)
    fr = frames(8, 5, seed=3)
    # several steps: cached features must survive later CUDA-graph replays
    assert_close(run(fast, fr, 5), run(plain, fr, 5), atol=0.05)


@pytest.mark.slow
def test_inductor_compiled_cpu_path_equals_plain():
    # real torch.compile (inductor, C++ codegen): about 40 s on 2 cores
    plain, fast = pair(dtype="fp32", compile=True)
    fr = frames(4, 3, seed=4)
    assert_close(run(fast, fr, 3), run(plain, fr, 3), atol=1e-5)
