"""Success-threshold calibration of a reward model from a few labelled rollouts.

A progress model says a rollout succeeded when its final progress is at least
``1 - delta``. Given final progress values and true outcomes, pick ``delta`` to
maximise balanced accuracy (the mean of the success and failure recall, so a
handful of failures weighs as much as many successes); among equally good
thresholds take the widest gap between neighbouring progress values and put the
threshold in its middle, which leaves the largest margin on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from calibration.boards import CalibrationError


@dataclass
class SuccessThreshold:
    """A calibrated success threshold: success when ``progress >= 1 - delta``."""

    delta: float
    # mean of the true-positive and true-negative rates on the calibration rollouts.
    balanced_accuracy: float
    accuracy: float
    # confusion counts on the calibration rollouts (positive = success).
    tp: int
    fp: int
    tn: int
    fn: int
    # distance from the threshold to the nearest calibration progress value.
    margin: float

    @property
    def threshold(self) -> float:
        """The progress at and above which a rollout counts as a success."""
        return 1.0 - self.delta

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def is_success(self, progress: float | np.ndarray) -> bool | np.ndarray:
        """Apply the threshold to one progress value or an array of them."""
        out = np.asarray(progress) >= self.threshold
        return bool(out) if out.ndim == 0 else out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> SuccessThreshold:
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as e:
            raise CalibrationError(f"not a success-threshold JSON ({e})") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> SuccessThreshold:
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(
                f"no success threshold at {path}: run `robo calibrate reward` first"
            )
        return cls.from_json(path.read_text())


def calibrate_success_threshold(
    progress: Sequence[float] | np.ndarray, success: Sequence[bool] | np.ndarray
) -> SuccessThreshold:
    """Choose ``delta`` from final progress values and success labels.

    Args:
        progress: final progress of each rollout (normally in [0, 1]).
        success: whether each rollout truly succeeded.

    Raises:
        CalibrationError: lengths differ, values are not finite, or one outcome is missing.
    """
    p = np.asarray(progress, dtype=np.float64).reshape(-1)
    y = np.asarray(success).reshape(-1)
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise CalibrationError("success labels must be booleans (or 0/1)")
        y = y.astype(bool)
    if len(p) != len(y):
        raise CalibrationError(f"{len(p)} progress values but {len(y)} labels: give one of each")
    if not np.isfinite(p).all():
        raise CalibrationError("progress values must be finite numbers")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise CalibrationError(
            f"got {n_pos} successful and {n_neg} failed rollouts: label at least one of each "
            "(a few of each is better)"
        )
    # candidate thresholds: midpoints of the gaps between sorted distinct values, plus one
    # below all (everything a success) and one above all, bounded by 0 and 1 when possible.
    values = np.unique(p)
    lo, hi = min(0.0, values[0] - 1e-3), max(1.0, values[-1] + 1e-3)
    edges = np.concatenate([[lo], values, [hi]])
    thresholds = (edges[:-1] + edges[1:]) / 2
    margins = (edges[1:] - edges[:-1]) / 2
    predicted = p[None, :] >= thresholds[:, None]
    tp = (predicted & y).sum(1)
    tn = (~predicted & ~y).sum(1)
    balanced = (tp / n_pos + tn / n_neg) / 2
    # best balanced accuracy first, then the widest margin.
    best = np.lexsort((-margins, -np.round(balanced, 12)))[0]
    tp_b, tn_b = int(tp[best]), int(tn[best])
    return SuccessThreshold(
        delta=float(1.0 - thresholds[best]),
        balanced_accuracy=float(balanced[best]),
        accuracy=(tp_b + tn_b) / len(p),
        tp=tp_b,
        fp=n_neg - tn_b,
        tn=tn_b,
        fn=n_pos - tp_b,
        margin=float(margins[best]),
    )
