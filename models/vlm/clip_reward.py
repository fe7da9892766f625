"""Zero-shot VLM reward after VLM-RM (Rocamonde et al. 2023), behind the progress-model contract.

An open_clip model embeds every view. With ``g`` the goal embedding, ``b`` the baseline
embedding, ``d = g - b`` and the partial projection ``P = alpha d d^T / |d|^2 + (1 - alpha) I``,
the reward of a normalised image embedding ``x`` is

    r(x) = 1 - 1/2 |(x - g) P|^2.

``alpha = 0`` gives ``1 - |x - g|^2 / 2`` (the cosine similarity when ``|g| = 1``);
``alpha = 1`` keeps only the component of ``x - g`` along ``d``. ``P`` is never formed:
with ``u = x - g`` and ``s = u . d / |d|``, ``|u P|^2 = (2 alpha - alpha^2) s^2 + (1 - alpha)^2 |u|^2``.

Goal and baseline (``VLMConfig.mode``):

* ``text``: ``g`` / ``b`` are the means of the L2-normalised text embeddings of the
  target / baseline prompts (as in VLM-RM's code: the mean itself is not renormalised).
  Text embeddings are cached per prompt.
* ``goal_image`` (one-shot): per environment and view, ``g`` is the embedding of the
  context's goal frame and ``b`` that of its start frame (the episode's first frame
  when the context has none).

Normalisation into a potential, per environment and view: with ``r_start`` and ``r_goal``
the rewards of the context's reference start and goal frames,
``progress = clip((r - r_start) / (r_goal - r_start), 0, 1)``. In goal-image mode these are
exact (``r_goal = 1``, ``r_start = 1 - |d|^2 / 2``). Without reference frames (text mode)
the fixed range ``VLMConfig.calibration`` is used instead (:meth:`VLMReward.calibrate`
computes one from example frames); a view whose reference frames score the same falls
back to it too. Per-view progress is then fused (mean, max or weighted mean); success is
``progress >= 1 - success_delta``; confidence is 1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from models.base import (
    ModelInputError,
    ProgressOutput,
    TaskContext,
    check_frames,
    resolve_env_indices,
)
from models.vlm.config import Fusion, TargetMode, VLMConfig
from models.vlm.weights import RANDOM, create_clip, state_dict_cpu

CONFIG_FILE, WEIGHTS_FILE, ARCH = "config.json", "clip.safetensors", "vlm"
MIN_RANGE = 1e-6


def preprocess(
    frames: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor, interpolation: str
) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> CLIP input ``(N, 3, size, size)``: shortest side to ``size``,
    centre crop, CLIP normalisation (what open_clip's eval transform does, batched)."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    h, w = x.shape[-2:]
    # torchvision's Resize(size) + CenterCrop(size) arithmetic, so embeddings match open_clip's
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (nh, nw) != (h, w):
        x = F.interpolate(
            x, size=(nh, nw), mode=interpolation, antialias=True, align_corners=False
        ).clamp_(0, 1)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    x = x[..., top : top + size, left : left + size]
    return (x - mean) / std


class VLMReward:
    """A :class:`models.base.ProgressModel` from an open_clip model (see module docstring).

    Args:
        cfg: the configuration.
        clip: an open_clip ``CLIP`` model to use as is; ``None`` builds it from ``cfg``
            (``arch`` + local ``weights``, never downloaded).
        device: torch device for inference.
    """

    def __init__(self, cfg: VLMConfig, clip=None, device: str | torch.device = "cpu"):
        import open_clip

        self.cfg = cfg
        self.device = torch.device(device)
        self.weights_path: Path | None = None
        if clip is None:
            clip, self.weights_path = create_clip(
                cfg.arch, cfg.pretrained, cfg.weights, cfg.clip_image_size
            )
        self.clip = clip.eval().to(self.device)
        if cfg.int8 and self.device.type == "cpu":
            self.clip.visual = torch.ao.quantization.quantize_dynamic(
                self.clip.visual, {torch.nn.Linear}, dtype=torch.qint8
            )
        self.views = tuple(cfg.views)
        self.image_size = tuple(cfg.image_size)
        self.tokenizer = open_clip.get_tokenizer(cfg.arch)
        pp = dict(open_clip.get_model_preprocess_cfg(self.clip))
        pp.update(
            {
                k: v
                for k, v in open_clip.get_pretrained_cfg(cfg.arch, cfg.pretrained).items()
                if k in ("mean", "std", "interpolation")
            }
            if cfg.pretrained
            else {}
        )
        size = self.clip.visual.image_size
        self.clip_size = int(size[0] if isinstance(size, tuple | list) else size)
        self.interpolation = (
            "bicubic" if pp.get("interpolation", "bicubic") == "bicubic" else "bilinear"
        )
        self._mean = torch.tensor(
            pp.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device
        ).view(1, 3, 1, 1)
        self._std = torch.tensor(
            pp.get("std", open_clip.OPENAI_DATASET_STD), device=self.device
        ).view(1, 3, 1, 1)
        self._text_cache: dict[str, torch.Tensor] = {}
        self._state: dict[int, dict[str, torch.Tensor]] = {}
        self._calibration = self._calibration_tensor(cfg)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_config(cls, cfg: VLMConfig, device: str | torch.device = "cpu") -> VLMReward:
        return cls(cfg, device=device)

    def save_pretrained(self, directory: str | Path, copy_weights: bool = False) -> Path:
        """Write ``config.json`` (architecture name, weights path, prompts, calibration...).

        The CLIP weights are referenced by path; they are written beside the config as
        ``clip.safetensors`` when there is no file to reference (random or injected
        models) or ``copy_weights`` is set.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        if copy_weights or self.weights_path is None:
            save_file(state_dict_cpu(self.clip), str(directory / WEIGHTS_FILE))
            cfg = replace(cfg, weights=WEIGHTS_FILE)
        else:
            cfg = replace(cfg, weights=str(self.weights_path.resolve()))
        meta = {"architecture": ARCH, "config": cfg.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> VLMReward:
        """Load a folder written by :meth:`save_pretrained`."""
        directory = Path(directory)
        path = directory / CONFIG_FILE
        if not path.is_file():
            raise ModelInputError(f"{directory} is not a VLM reward folder: it needs {CONFIG_FILE}")
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelInputError(f"{path} is corrupt ({e.msg}): re-save the model") from None
        if meta.get("architecture") != ARCH:
            raise ModelInputError(
                f"{directory} holds a {meta.get('architecture')!r} model, not a VLM reward"
            )
        d = dict(meta["config"])
        if d.get("weights") and d["weights"] != RANDOM and not Path(d["weights"]).is_absolute():
            d["weights"] = str(directory / d["weights"])
        return cls(VLMConfig.from_dict(d), device=device)

    # ------------------------------------------------------------------ embeddings
    @torch.inference_mode()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``(len(prompts), D)``; each prompt is encoded once."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if new:
            tokens = self.tokenizer(new).to(self.device)
            emb = F.normalize(self.clip.encode_text(tokens).float(), dim=-1)
            self._text_cache.update(zip(new, emb, strict=True))
        return torch.stack([self._text_cache[p] for p in prompts])

    @torch.inference_mode()
    def image_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, V, H, W, 3)`` -> L2-normalised embeddings ``(B, V, D)``, one forward pass."""
        b, v = frames.shape[:2]
        x = preprocess(
            frames.reshape(b * v, *frames.shape[2:]).to(self.device),
            self.clip_size,
            self._mean,
            self._std,
            self.interpolation,
        )
        return F.normalize(self.clip.encode_image(x).float(), dim=-1).view(b, v, -1)

    def goal_baseline(
        self, target: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-mode ``(g, b)``: mean normalised embeddings of target and baseline prompts."""
        target = tuple(target or self.cfg.target_prompts)
        baseline = self.cfg.baseline_prompts
        emb = self.text_embeddings(target + baseline)
        g, b = emb[: len(target)].mean(0), emb[len(target) :].mean(0)
        if (g - b).norm() < MIN_RANGE:
            raise ModelInputError(
                "target and baseline prompts embed identically (d = g - b = 0): give a baseline that differs from the target"
            )
        return g, b

    def projection(self, target: Sequence[str] | None = None) -> torch.Tensor:
        """The explicit ``(D, D)`` matrix ``P`` of text mode (for inspection; inference never forms it)."""
        g, b = self.goal_baseline(target)
        d = (g - b)[:, None]
        eye = torch.eye(d.shape[0], device=d.device)
        return self.cfg.alpha * (d @ d.T) / (d.T @ d) + (1 - self.cfg.alpha) * eye

    def reward_from_embeddings(
        self, x: torch.Tensor, g: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        """``r = 1 - |(x - g) P|^2 / 2`` for embeddings ``x (..., D)`` and broadcastable ``g``, ``b``."""
        a = self.cfg.alpha
        d = g - b
        dhat = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        u = x - g
        s = (u * dhat).sum(-1)
        return 1.0 - 0.5 * ((2 * a - a * a) * s * s + (1 - a) ** 2 * (u * u).sum(-1))

    # ------------------------------------------------------------------ inputs
    def _frames(
        self, frames, views: Sequence[str] | None, what: str
    ) -> tuple[torch.Tensor, list[int]]:
        views = tuple(views or self.views)
        unknown = [v for v in views if v not in self.views]
        if unknown:
            raise ModelInputError(
                f"{what}: unknown views {unknown}; the model knows {', '.join(self.views)}"
            )
        return check_frames(frames, views, self.image_size, what), [
            self.views.index(v) for v in views
        ]

    def _context_frames(self, frames, what: str) -> torch.Tensor:
        return self._frames(
            np.asarray(frames)[None] if isinstance(frames, np.ndarray) else frames[None], None, what
        )[0][0]

    @staticmethod
    def _calibration_tensor(cfg: VLMConfig) -> torch.Tensor | None:
        if not cfg.calibration:
            return None
        cal = torch.tensor(cfg.calibration, dtype=torch.float32)
        return cal.expand(len(cfg.views), 2).clone()

    # ------------------------------------------------------------------ contract
    @torch.inference_mode()
    def reset(
        self, env_indices: Sequence[int], contexts: Sequence[TaskContext], frames, views=None
    ) -> ProgressOutput:
        """Start episodes: per environment, fix ``g``, ``b`` and the normalisation range;
        returns the progress of the first frames. All images go through one forward pass."""
        env_indices = [int(i) for i in env_indices]
        if len(contexts) != len(env_indices):
            raise ModelInputError(
                f"reset got {len(env_indices)} env indices but {len(contexts)} contexts"
            )
        first, view_idx = self._frames(frames, views, "first frames")
        if first.shape[0] != len(env_indices):
            raise ModelInputError(
                f"reset got {first.shape[0]} first frame sets for {len(env_indices)} env indices"
            )
        refs, slots = [], []  # context frames encoded with the first frames
        for k, ctx in enumerate(contexts):
            slot = {}
            for name in ("start", "goal"):
                f = getattr(ctx, f"{name}_frames")
                if f is not None:
                    slot[name] = len(refs)
                    refs.append(
                        self._context_frames(f, f"context {name} frames of env {env_indices[k]}")
                    )
            slots.append(slot)
        if views is not None and tuple(views) != self.views:
            if self.cfg.mode is TargetMode.goal_image:
                raise ModelInputError("goal-image mode needs all views at reset")
            full = torch.zeros(
                (first.shape[0], len(self.views), *first.shape[2:]), dtype=torch.uint8
            )
            full[:, view_idx] = first
            first = full
        emb = self.image_embeddings(torch.cat([first, torch.stack(refs)]) if refs else first)
        first_emb, ref_emb = emb[: len(env_indices)], emb[len(env_indices) :]
        for k, (i, ctx) in enumerate(zip(env_indices, contexts, strict=True)):
            self._state[i] = self._env_state(
                ctx, first_emb[k], {n: ref_emb[j] for n, j in slots[k].items()}, i
            )
        return self._output(first_emb[:, view_idx], env_indices, view_idx)

    def _env_state(
        self, ctx: TaskContext, first: torch.Tensor, refs: dict[str, torch.Tensor], i: int
    ) -> dict:
        v = len(self.views)
        if self.cfg.mode is TargetMode.goal_image:
            if "goal" not in refs:
                raise ModelInputError(
                    f"env {i}: goal-image mode needs TaskContext.goal_frames (a demo's last frame)"
                )
            g, b = refs["goal"], refs.get("start", first)
            dn = (g - b).norm(dim=-1)
            if (dn < MIN_RANGE).any():
                raise ModelInputError(
                    f"env {i}: the goal and start frames embed identically in views "
                    f"{[self.views[j] for j in torch.nonzero(dn < MIN_RANGE).flatten().tolist()]} (d = 0): give a goal that differs from the start"
                )
            lo, hi = 1.0 - 0.5 * dn**2, torch.ones(v, device=self.device)
        else:
            target = (
                (ctx.text,)
                if self.cfg.text_from_context and ctx.text and ctx.text.strip()
                else None
            )
            g, b = (t.expand(v, -1) for t in self.goal_baseline(target))
            lo, hi = self._text_range(g, b, refs, i)
        return {"g": g, "b": b, "lo": lo, "hi": hi}

    def _text_range(self, g, b, refs, i) -> tuple[torch.Tensor, torch.Tensor]:
        cal = None if self._calibration is None else self._calibration.to(self.device)
        if "start" in refs and "goal" in refs:
            lo, hi = (
                self.reward_from_embeddings(refs["start"], g, b),
                self.reward_from_embeddings(refs["goal"], g, b),
            )
            if cal is None:
                if ((hi - lo).abs() < MIN_RANGE).any():
                    raise ModelInputError(
                        f"env {i}: the prompts score the reference start and goal frames the same in some view "
                        "and VLMConfig.calibration is empty: change the prompts or calibrate"
                    )
                return lo, hi
            bad = (hi - lo).abs() < MIN_RANGE
            return torch.where(bad, cal[:, 0], lo), torch.where(bad, cal[:, 1], hi)
        if cal is None:
            raise ModelInputError(
                f"env {i}: text-mode VLM reward needs reference start and goal frames in the TaskContext "
                "or a fixed VLMConfig.calibration range (see VLMReward.calibrate)"
            )
        return cal[:, 0], cal[:, 1]

    @torch.inference_mode()
    def predict(
        self, frames, env_indices: Sequence[int] | None = None, views=None
    ) -> ProgressOutput:
        """Progress of the current frames ``(B, V, H, W, 3)`` (or only ``views``), one forward pass."""
        frames, view_idx = self._frames(frames, views, "frames")
        env_indices = resolve_env_indices(env_indices, frames.shape[0], self._state)
        return self._output(self.image_embeddings(frames), env_indices, view_idx)

    @torch.inference_mode()
    def rewards(self, frames, env_indices: Sequence[int] | None = None) -> torch.Tensor:
        """Raw per-view rewards ``r (B, V)`` of all-view frames (no normalisation)."""
        frames, _ = self._frames(frames, None, "frames")
        env_indices = (
            list(range(frames.shape[0])) if env_indices is None else [int(i) for i in env_indices]
        )
        st = self._gather(env_indices, list(range(len(self.views))))
        return self.reward_from_embeddings(self.image_embeddings(frames), st["g"], st["b"]).cpu()

    def _gather(self, env_indices, view_idx) -> dict[str, torch.Tensor]:
        return {
            k: torch.stack([self._state[i][k][view_idx] for i in env_indices])
            for k in ("g", "b", "lo", "hi")
        }

    def _output(
        self, x: torch.Tensor, env_indices: list[int], view_idx: list[int]
    ) -> ProgressOutput:
        st = self._gather(env_indices, view_idx)
        r = self.reward_from_embeddings(x, st["g"], st["b"])
        per_view = ((r - st["lo"]) / (st["hi"] - st["lo"])).clamp(0.0, 1.0)
        progress = self._fuse(per_view, view_idx).float().cpu()
        success = (progress >= 1.0 - self.cfg.success_delta).float()
        return ProgressOutput(
            progress=progress, success=success, confidence=torch.ones_like(progress)
        )

    def _fuse(self, per_view: torch.Tensor, view_idx: list[int]) -> torch.Tensor:
        if self.cfg.fusion is Fusion.max:
            return per_view.max(-1).values
        if self.cfg.fusion is Fusion.weighted:
            w = torch.tensor([self.cfg.view_weights[j] for j in view_idx], device=per_view.device)
            if w.sum() <= 0:
                raise ModelInputError(
                    f"views {[self.views[j] for j in view_idx]} all have weight 0: give a weighted view"
                )
            return (per_view * w).sum(-1) / w.sum()
        return per_view.mean(-1)

    # ------------------------------------------------------------------ calibration
    @torch.inference_mode()
    def calibrate(self, start_frames, goal_frames, text: str | None = None) -> VLMConfig:
        """Set ``cfg.calibration`` (per view) to the mean rewards of example start and goal
        frames ``(N, V, H, W, 3)`` (text mode); returns the updated config (saved with the model)."""
        if self.cfg.mode is not TargetMode.text:
            raise ModelInputError(
                "calibrate is for text mode: goal-image mode normalises with the context's own frames"
            )
        start, _ = self._frames(start_frames, None, "calibration start frames")
        goal, _ = self._frames(goal_frames, None, "calibration goal frames")
        target = (text,) if self.cfg.text_from_context and text else None
        g, b = self.goal_baseline(target)
        emb = self.image_embeddings(torch.cat([start, goal]))
        r = self.reward_from_embeddings(emb, g, b)
        lo, hi = r[: len(start)].mean(0), r[len(start) :].mean(0)
        self.cfg = replace(self.cfg, calibration=tuple(zip(lo.tolist(), hi.tolist(), strict=True)))
        self._calibration = self._calibration_tensor(self.cfg)
        return self.cfg
