"""GRM inference behind the progress-model contract: multi-perspective fusion, caching.

Per environment index the model keeps the encoded reference start and goal frames,
the encoded previous frame and the previous progress. Each :meth:`predict` encodes
each observed frame once, then runs the enabled perspectives in one batched fusion
pass:

* incremental: hop from the previous frame, chained onto the previous progress;
* forward-anchored: hop from the episode's own first frame (progress 0; or, for models
  configured with ``forward_anchor: reference``, from the reference start frame);
* backward-anchored: hop from the reference goal frame, ``phi_B = 1 + H(goal, s)``.

They are fused by their mean with the consistency weight ``w = exp(-alpha * D**2)``,
``D = |phi_B - phi_F| / (mean + eps)`` (``fusion_eps``), and a conservative update
``phi_t = w * mean + (1 - w) * phi_{t-1}``: when the anchored views disagree the
estimate moves little. The success probability is the backward hop distribution's
mass within ``delta`` of the goal; the confidence is ``w``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.base import (
    ModelInputError,
    ProgressOutput,
    TaskContext,
    check_frames,
    resolve_env_indices,
)
from models.grm.model import GRM


def apply_hop_t(phi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Progress reached from ``phi`` by hop ``h`` (torch version of ``labels.apply_hop``)."""
    return torch.where(h >= 0, phi + h * (1 - phi), phi + h * phi).clamp(0.0, 1.0)


class GRMProgressModel:
    """A :class:`models.base.ProgressModel` around a trained :class:`GRM`.

    Args:
        model: the network (put in eval mode here).
        perspectives: subset of ``("incremental", "forward", "backward")``; default from config.
        device: torch device for inference.
    """

    def __init__(
        self,
        model: GRM,
        perspectives: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ):
        self.model = model.eval().to(device)
        self.cfg = model.cfg
        self.device = torch.device(device)
        self.views = tuple(self.cfg.views)
        self.image_size = tuple(self.cfg.image_size)
        self.perspectives = tuple(perspectives or self.cfg.perspectives)
        bad = set(self.perspectives) - {"incremental", "forward", "backward"}
        if bad or not self.perspectives:
            raise ModelInputError(
                f"unknown perspectives {sorted(bad)}: use incremental, forward, backward"
            )
        self._state: dict[int, dict[str, torch.Tensor]] = {}
        self.success_bin = self.model.bins >= -self.cfg.success_delta

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> GRMProgressModel:
        return cls(GRM.from_pretrained(directory), **kwargs)

    # ------------------------------------------------------------------ inputs
    def _frames(
        self, frames, views: Sequence[str] | None, what: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate frames given for ``views`` (default all); return full-view frames and a missing mask."""
        views = tuple(views or self.views)
        unknown = [v for v in views if v not in self.views]
        if unknown:
            raise ModelInputError(
                f"{what}: unknown views {unknown}; the model knows {', '.join(self.views)}"
            )
        frames = check_frames(frames, views, self.image_size, what)
        if views == self.views:
            return frames.to(self.device), torch.zeros(
                frames.shape[:2], dtype=torch.bool, device=self.device
            )
        if self.cfg.view_dropout <= 0:
            raise ModelInputError(
                f"{what}: views {', '.join(set(self.views) - set(views))} are missing and this model "
                "was trained without view dropout: give all views"
            )
        full = torch.zeros((frames.shape[0], len(self.views), *frames.shape[2:]), dtype=torch.uint8)
        mask = torch.ones(full.shape[:2], dtype=torch.bool)
        for i, v in enumerate(views):
            j = self.views.index(v)
            full[:, j] = frames[:, i]
            mask[:, j] = False
        return full.to(self.device), mask.to(self.device)

    def _context_feats(self, frames: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        v, d = len(self.views), self.cfg.d_model
        if frames is None:
            return torch.zeros(v, d, device=self.device), torch.ones(
                v, dtype=torch.bool, device=self.device
            )
        f, mask = self._frames(np.asarray(frames)[None], None, "context frames")
        return self.model.encode(f)[0], mask[0]

    # ------------------------------------------------------------------ contract
    @torch.inference_mode()
    def reset(
        self, env_indices: Sequence[int], contexts: Sequence[TaskContext], frames, views=None
    ) -> ProgressOutput:
        """Start episodes; returns the progress of their first frames."""
        env_indices = [int(i) for i in env_indices]
        if len(contexts) != len(env_indices):
            raise ModelInputError(
                f"reset got {len(env_indices)} env indices but {len(contexts)} contexts"
            )
        frames, mask = self._frames(frames, views, "first frames")
        feats = self.model.encode(frames)
        for k, (i, ctx) in enumerate(zip(env_indices, contexts, strict=True)):
            start, start_m = self._context_feats(ctx.start_frames)
            goal, goal_m = self._context_feats(ctx.goal_frames)
            text = self.model.text_features([ctx.text], self.device)
            self._state[i] = {
                "start": start,
                "start_mask": start_m,
                "goal": goal,
                "goal_mask": goal_m,
                "text": None if text is None else text[0],
                "prev": feats[k],
                "prev_mask": mask[k],
                "first": feats[k],
                "first_mask": mask[k],
                "phi": torch.zeros((), device=self.device),
            }
        return self._step(feats, mask, env_indices, first=True)

    @torch.inference_mode()
    def predict(
        self, frames, env_indices: Sequence[int] | None = None, views=None
    ) -> ProgressOutput:
        """Progress of the current frames; advances each environment's state."""
        frames, mask = self._frames(frames, views, "frames")
        env_indices = resolve_env_indices(env_indices, frames.shape[0], self._state)
        return self._step(self.model.encode(frames), mask, env_indices, first=False)

    # ------------------------------------------------------------------ fusion
    def _gather(self, env_indices, key):
        return torch.stack([self._state[i][key] for i in env_indices])

    def _step(self, cur, cur_mask, env_indices, first: bool) -> ProgressOutput:
        persp = [p for p in self.perspectives if not (first and p == "incremental")] or ["forward"]
        ctx = {r: self._gather(env_indices, r) for r in ("start", "goal")}
        ctx_m = {r: self._gather(env_indices, f"{r}_mask") for r in ("start", "goal")}
        own = self.cfg.forward_anchor == "episode"
        before = {
            "incremental": ("prev", "prev_mask"),
            "forward": ("first", "first_mask") if own else ("start", "start_mask"),
            "backward": ("goal", "goal_mask"),
        }
        n = len(persp)
        feats = {
            "start": ctx["start"].repeat(n, 1, 1),
            "goal": ctx["goal"].repeat(n, 1, 1),
            "before": torch.cat([self._gather(env_indices, before[p][0]) for p in persp]),
            "after": cur.repeat(n, 1, 1),
        }
        masks = {
            "start": ctx_m["start"].repeat(n, 1),
            "goal": ctx_m["goal"].repeat(n, 1),
            "before": torch.cat([self._gather(env_indices, before[p][1]) for p in persp]),
            "after": cur_mask.repeat(n, 1),
        }
        text = None
        if self.model.text is not None:
            text = self._gather(env_indices, "text").repeat(n, 1)
        logits = self.model.hop_logits(feats, masks, text).float()
        hops = self.model.expected_hop(logits).view(n, -1)
        probs = logits.softmax(-1).view(n, len(env_indices), -1)
        phi_prev = self._gather(env_indices, "phi")
        est = {}
        for k, p in enumerate(persp):
            base = {
                "incremental": phi_prev,
                "forward": torch.zeros_like(phi_prev),
                "backward": torch.ones_like(phi_prev),
            }[p]
            est[p] = apply_hop_t(base, hops[k])
        mean = torch.stack(list(est.values())).mean(0)
        if "forward" in est and "backward" in est:
            delta = (est["backward"] - est["forward"]).abs() / (
                0.5 * (est["backward"] + est["forward"]) + self.cfg.fusion_eps
            )
            w = torch.exp(-self.cfg.fusion_alpha * delta**2)
        else:
            w = torch.ones_like(mean)
        phi = mean if first else w * mean + (1 - w) * phi_prev
        if "backward" in est:
            success = (probs[persp.index("backward")] * self.success_bin).sum(-1)
        else:
            success = (phi >= 1 - self.cfg.success_delta).float()
        for k, i in enumerate(env_indices):
            s = self._state[i]
            s["prev"], s["prev_mask"], s["phi"] = cur[k], cur_mask[k], phi[k]
        return ProgressOutput(progress=phi.cpu(), success=success.cpu(), confidence=w.cpu())
