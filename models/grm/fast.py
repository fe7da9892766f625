"""Fast GRM inference: reduced-precision autocast, fixed-shape ``torch.compile`` and CUDA graphs.

:func:`make_fast` swaps the network inside a :class:`GRMProgressModel` for a
:class:`FastGRM` proxy that runs the two hot calls, per-view encoding and the batched
fusion pass, under autocast (bf16 on CUDA, fp16 where bf16 is unsupported) and,
optionally, through ``torch.compile``. Everything else is the plain model's: the
per-environment caching of :class:`GRMProgressModel` is untouched, so each observed frame
is still encoded once, the AFTER features of step *t* are the BEFORE features of *t+1*,
and the reference start/goal features are encoded once per episode.

* Features leave the fast calls in float32, so cached state has one dtype whatever the
  autocast setting and the fusion arithmetic stays in float32.
* With ``compile=True`` the batch dimension is padded to the next power of two, so a
  server whose batch sizes vary triggers at most ``log2(max_batch)`` compilations
  (and CUDA-graph captures) per call site; :func:`warmup` runs them before serving.
* On CUDA, ``compile=True`` uses the ``reduce-overhead`` mode (CUDA graphs); outputs are
  cloned out of the graph pool because the GRM caches them across steps.

On CPU the default is float32 and no compilation, which returns exactly what the plain
model returns; ``dtype="bf16"`` on CPU is offered for machines with fast bf16 units.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from models.base import ModelInputError
from models.grm.inference import GRMProgressModel
from models.grm.model import GRM

DType = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class FastSettings:
    """What :func:`make_fast` chose (kept on the proxy for reports)."""

    device: str
    dtype: str
    compiled: bool
    cuda_graphs: bool
    pad_batches: bool


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``dtype`` on ``device``; ``None`` means plain float32."""
    if dtype not in ("auto", "fp32", "bf16", "fp16"):
        raise ModelInputError(f"fast dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    if dtype == "fp32" or (dtype == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        if dtype in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if dtype == "fp16":
        raise ModelInputError("fp16 autocast is for CUDA: use dtype=bf16 or fp32 on the CPU")
    return torch.bfloat16


def bucket(n: int) -> int:
    """The next power of two >= ``n`` (the padded batch size of compiled calls)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x
    return F.pad(x, (0, 0) * (x.ndim - 1) + (0, rows - x.shape[0]))


class FastGRM:
    """A :class:`GRM` with fast ``encode`` and ``hop_logits``; every other attribute is the GRM's.

    Args:
        grm: the network (already on its inference device, in eval mode).
        autocast_dtype: ``None`` for float32, else the autocast dtype.
        compile: wrap the two calls in ``torch.compile`` (fixed, padded shapes).
        cuda_graphs: use CUDA graphs (``reduce-overhead``); CUDA and ``compile`` only.
        backend: ``torch.compile`` backend (``inductor``; ``eager`` checks the wiring cheaply).
    """

    def __init__(
        self,
        grm: GRM,
        autocast_dtype: torch.dtype | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        backend: str = "inductor",
    ):
        self.grm = grm
        self.device = next(grm.parameters()).device
        self.autocast_dtype = autocast_dtype
        self.pad_batches = compile
        self.cuda_graphs = bool(cuda_graphs and compile and self.device.type == "cuda")
        self._encode: Callable = self._encode_impl
        self._hop: Callable = self._hop_impl
        if compile:
            _raise_recompile_limit(32)
            mode = "reduce-overhead" if self.cuda_graphs else None
            self._encode = torch.compile(
                self._encode_impl, dynamic=False, mode=mode, backend=backend
            )
            self._hop = torch.compile(self._hop_impl, dynamic=False, mode=mode, backend=backend)
        self.settings = FastSettings(
            self.device.type,
            str(autocast_dtype or torch.float32).removeprefix("torch."),
            compile,
            self.cuda_graphs,
            self.pad_batches,
        )

    def __getattr__(self, name: str):
        # Only reached for attributes this proxy lacks: cfg, bins, text, text_features, expected_hop...
        return getattr(self.__dict__["grm"], name)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _encode_impl(self, frames: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.grm.encode(frames).float()

    def _hop_impl(self, feats: dict, masks: dict, text: torch.Tensor | None) -> torch.Tensor:
        with self._autocast():
            return self.grm.hop_logits(feats, masks, text).float()

    def _run(self, fn: Callable, n: int, *args):
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = fn(*args)
        # Graph-pool outputs are overwritten by the next replay; the GRM caches features.
        return out[:n].clone() if self.cuda_graphs else out[:n]

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, V, H, W, 3)`` -> float32 features ``(B, V, d)``."""
        n = frames.shape[0]
        if self.pad_batches:
            frames = _pad_rows(frames, bucket(n))
        return self._run(self._encode, n, frames)

    def hop_logits(
        self, feats: dict, masks: dict, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Float32 hop logits ``(B, num_bins)`` (see :meth:`GRM.hop_logits`)."""
        n = next(iter(feats.values())).shape[0]
        if self.pad_batches:
            rows = bucket(n)
            # Padded rows see all views (mask False): a fully masked row would give NaN attention.
            feats = {k: _pad_rows(v, rows) for k, v in feats.items()}
            masks = {k: _pad_rows(v, rows) for k, v in masks.items()}
            text = None if text is None else _pad_rows(text, rows)
        return self._run(self._hop, n, feats, masks, text)


def _raise_recompile_limit(limit: int) -> None:
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)


def make_fast(
    pm: GRMProgressModel,
    dtype: DType = "auto",
    compile: bool = False,
    cuda_graphs: bool | None = None,
    backend: str = "inductor",
) -> GRMProgressModel:
    """Prepare ``pm`` for fast inference in place and return it.

    Args:
        pm: a GRM progress model on its inference device.
        dtype: ``auto`` (bf16 autocast on CUDA, fp16 where bf16 is unsupported; float32 on
            CPU), ``fp32``, ``bf16`` or ``fp16`` (CUDA only).
        compile: ``torch.compile`` the encoder and fusion calls for padded fixed shapes.
        cuda_graphs: capture CUDA graphs (default: on when compiling on CUDA).
        backend: ``torch.compile`` backend.

    Returns:
        ``pm``, whose ``model`` is now a :class:`FastGRM` (``pm.model.settings`` says what was chosen).
    """
    grm = pm.model.grm if isinstance(pm.model, FastGRM) else pm.model
    device = pm.device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelInputError("the model is on CUDA but CUDA is not available: use device=cpu")
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    grm = grm.eval().to(memory_format=torch.channels_last)
    graphs = (device.type == "cuda") if cuda_graphs is None else cuda_graphs
    pm.model = FastGRM(
        grm, resolve_dtype(dtype, device), compile=compile, cuda_graphs=graphs, backend=backend
    )
    return pm


@torch.inference_mode()
def warmup(pm: GRMProgressModel, max_batch: int = 64) -> int:
    """Run the fast calls once per padded batch size up to ``max_batch`` (compilations,
    CUDA-graph captures, cuDNN autotuning) so that serving never pays for them.

    Returns:
        how many batch sizes were warmed up.
    """
    model = pm.model
    cfg = model.cfg
    v, d, n_persp = len(cfg.views), cfg.d_model, len(pm.perspectives)
    sizes = sorted({bucket(b) for b in range(1, max(1, max_batch) + 1)})
    if isinstance(model, FastGRM) and not model.pad_batches:
        sizes = [1, max(1, max_batch)]
    hop_sizes = sorted({bucket(k * b) for b in sizes for k in range(1, n_persp + 1)})
    for b in sizes:
        model.encode(torch.zeros((b, v, *cfg.image_size, 3), dtype=torch.uint8, device=pm.device))
    text = model.text_features(["warm up"], pm.device)
    for b in hop_sizes:
        feats = {
            r: torch.zeros((b, v, d), device=pm.device)
            for r in ("start", "goal", "before", "after")
        }
        masks = {r: torch.zeros((b, v), dtype=torch.bool, device=pm.device) for r in feats}
        model.hop_logits(feats, masks, None if text is None else text.expand(b, -1))
    if pm.device.type == "cuda":
        torch.cuda.synchronize(pm.device)
    return len(sizes)
