"""An ensemble of progress models behind the same contract: the members' progress combined
per step, and their disagreement folded into the confidence.

Independently trained reward models make partly independent errors, so their mean tracks
progress more closely than either, and states that one member over-scores (what an RL
policy or the exploitation test searches for) are pulled down by the others. ``combine:
min`` takes the most pessimistic member instead (a worst-case reward, the conservative
choice against reward hacking). Every member must take the same views at the same size.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch

from models.base import ModelInputError, ProgressOutput, TaskContext


class Combine(StrEnum):
    MEAN = "mean"
    MIN = "min"


class EnsembleProgressModel:
    """A :class:`models.base.ProgressModel` over ``members``.

    progress and success: the members' mean (``combine="mean"``) or minimum (``"min"``).
    confidence: the members' mean confidence times ``1 - spread``, where spread is the
    range (max - min) of their progress: 1 only when all members agree and are sure.

    Raises:
        ModelInputError: fewer than 2 members, an unknown ``combine``, or members that
            take different views or image sizes.
    """

    def __init__(self, members: Sequence, combine: str = "mean"):
        members = list(members)
        if len(members) < 2:
            raise ModelInputError(
                f"an ensemble needs at least 2 members, got {len(members)}: list more reward sources"
            )
        try:
            self.combine = Combine(combine)
        except ValueError:
            raise ModelInputError(
                f"unknown ensemble combine {combine!r}: use {' or '.join(c.value for c in Combine)}"
            ) from None
        first = members[0]
        for k, m in enumerate(members[1:], 1):
            if tuple(m.views) != tuple(first.views) or tuple(m.image_size) != tuple(
                first.image_size
            ):
                raise ModelInputError(
                    f"ensemble member {k} takes views {tuple(m.views)} at {tuple(m.image_size)} but "
                    f"member 0 takes {tuple(first.views)} at {tuple(first.image_size)}: "
                    "members must share views and image size"
                )
        self.members = members
        self.views = tuple(first.views)
        self.image_size = tuple(first.image_size)

    def reset(
        self, env_indices: Sequence[int], contexts: Sequence[TaskContext], frames, views=None
    ) -> ProgressOutput:
        """Start episodes in every member; returns the combined progress of the first frames."""
        kw = {} if views is None else {"views": views}
        return self._combine([m.reset(env_indices, contexts, frames, **kw) for m in self.members])

    def predict(
        self, frames, env_indices: Sequence[int] | None = None, views=None
    ) -> ProgressOutput:
        """Every member's progress of the current frames, combined; advances their states."""
        kw = {} if views is None else {"views": views}
        return self._combine([m.predict(frames, env_indices, **kw) for m in self.members])

    def _combine(self, outs: list[ProgressOutput]) -> ProgressOutput:
        progress = torch.stack([o.progress.float() for o in outs])
        success = torch.stack([o.success.float() for o in outs])
        confidence = torch.stack([o.confidence.float() for o in outs]).mean(0)
        spread = progress.max(0).values - progress.min(0).values
        if self.combine is Combine.MIN:
            p, s = progress.min(0).values, success.min(0).values
        else:
            p, s = progress.mean(0), success.mean(0)
        return ProgressOutput(
            progress=p, success=s, confidence=(confidence * (1 - spread)).clamp(0, 1)
        )
