"""Training labels of the GRM: step-wise progress of annotated demos and relative hops.

Progress is discretised per stage: with K stages, every stage owns an equal share 1/K
of [0, 1] however many frames it lasts. Frames inside a stage are spread over its share
evenly in time (``time`` spacing), by how much of the way the gripper has come from where
it starts the stage to where it ends it (``gripper``: the demo's own proprioception, not
simulator state, and closer to how far a task has come when an expert covers most of a
stage's distance early and then creeps in), or by the mean of the two (``blend``).

The hop from state p to state q is the progress made relative to what was left (or lost
relative to what had been made):

    H = (phi_q - phi_p) / (1 - phi_p)   if phi_q >= phi_p
    H = (phi_q - phi_p) / phi_p         otherwise

so H lies in [-1, 1], H = 1 means "q completes the task", H = -1 "q is back at the start".
"""

from __future__ import annotations

import numpy as np

#: A stage whose gripper path starts closer than this (m) to where it ends (a grasp, a
#: pause) is spaced evenly in time: its distance fraction would be noise.
MIN_APPROACH = 0.01


def approach_fraction(gripper: np.ndarray, start: int, end: int, count: int) -> np.ndarray | None:
    """How much of the way frames ``start .. start + count - 1`` have come towards the
    gripper position of frame ``end``: ``1 - d / d_start`` clipped to [0, 1] and made
    non-decreasing (moving away first, e.g. lifting over an obstacle, is not progress
    taken back). ``None`` when the stage starts within :data:`MIN_APPROACH` of its end."""
    g = np.asarray(gripper, np.float64)
    d = np.linalg.norm(g[start : start + count] - g[end], axis=1)
    if d[0] < MIN_APPROACH:
        return None
    return np.maximum.accumulate(np.clip(1.0 - d / d[0], 0.0, 1.0))


def _spread(count: int, n: int, gripper, start: int, end: int, blend: float = 1.0) -> np.ndarray:
    """Fractions in [0, 1] of a stage's ``count`` frames: even in time over ``n - 1`` steps
    or, given ``gripper`` positions, by the gripper's approach to frame ``end`` (``blend``
    of it, the rest even in time: strictly increasing again)."""
    even = np.arange(count) / max(n - 1, 1)
    if gripper is None:
        return even
    frac = approach_fraction(gripper, start, end, count)
    if frac is None:
        return even
    return frac if blend >= 1.0 else blend * frac + (1.0 - blend) * even


def stepwise_progress(
    stage: np.ndarray,
    num_stages: int,
    success: np.ndarray | None = None,
    gripper: np.ndarray | None = None,
    blend: float = 1.0,
) -> np.ndarray:
    """Progress labels ``(T,)`` of one demo from its per-frame stage annotation.

    Stage labels are made monotone (a demo does not go back a stage); frames from the
    first success on are labelled 1.

    Args:
        stage: ``(T,)`` stage index per frame.
        num_stages: K, the task's number of stages.
        success: optional ``(T,)`` success flags.
        gripper: optional ``(T, 3)`` gripper positions: spaces frames within a stage by
            the gripper's approach to where the stage ends (else evenly in time).
        blend: the share of that approach fraction in the spacing, the rest even in time.
    """
    stage = np.maximum.accumulate(np.clip(np.asarray(stage, int), 0, num_stages - 1))
    T = len(stage)
    phi = np.zeros(T, np.float32)
    done = T if success is None or not np.any(success) else int(np.argmax(success))
    for k in range(num_stages):
        idx = np.flatnonzero(stage[:done] == k)
        if len(idx) == 0:
            continue
        # The stage's frames spread over [k/K, (k+1)/K); the next stage's first frame ends it.
        n = len(idx) + (1 if k < num_stages - 1 or done < T else 0)
        end = min(idx[-1] + 1, T - 1) if n > len(idx) else idx[-1]
        phi[idx] = (k + _spread(len(idx), n, gripper, idx[0], end, blend)) / num_stages
    phi[done:] = 1.0
    if done == T:  # never succeeded: the last annotated frame is the end of the demo
        phi[-1] = max(phi[-1], phi[-2] if T > 1 else 0.0)
    return np.clip(phi, 0.0, 1.0)


def _runs(stage: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs ``(start, end_exclusive, stage)`` of equal stage labels."""
    cuts = np.flatnonzero(np.diff(stage)) + 1
    bounds = [0, *cuts.tolist(), len(stage)]
    return [(a, b, int(stage[a])) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def recovery_progress(
    stage: np.ndarray,
    num_stages: int,
    success: np.ndarray,
    min_regress: int = 3,
    gripper: np.ndarray | None = None,
    blend: float = 1.0,
) -> np.ndarray:
    """Progress labels ``(T,)`` of a demonstration that loses progress and recovers it.

    A recovery demo (the expert knocked off its task mid-way, e.g. a dropped cube, then
    finishing) goes back a stage; :func:`stepwise_progress` would hide that. Here each run
    of one stage label is labelled on its own, from the stage annotation only:

    * a run that ends by reaching a later stage (or success) spreads evenly over its
      stage's share ``[k/K, (k+1)/K)``, as in :func:`stepwise_progress`;
    * a run cut short by a fall back to an earlier stage covers the fraction of the share
      that its length is of the same stage's completed run in this demo;
    * frames from the first success on are 1.

    A fall back shorter than ``min_regress`` frames is taken as annotation flicker and
    kept in the stage before it. With ``gripper`` positions ``(T, 3)``, a completed run is
    spaced by the gripper's approach to where it ends, as in :func:`stepwise_progress`.
    """
    stage = np.clip(np.asarray(stage, int), 0, num_stages - 1).copy()
    success = np.asarray(success, bool)
    T = len(stage)
    done = int(np.argmax(success)) if success.any() else T
    runs = _runs(stage[:done])
    for i, (a, b, k) in enumerate(runs):  # flicker: short dips between higher stages
        if 0 < i < len(runs) - 1 and b - a < min_regress and k < runs[i - 1][2]:
            stage[a:b] = runs[i - 1][2]
    runs = _runs(stage[:done])
    nxt = [
        runs[i + 1][2] if i + 1 < len(runs) else (num_stages if done < T else None)
        for i in range(len(runs))
    ]
    completed = {}
    for (a, b, k), n in zip(runs, nxt, strict=True):
        if n is not None and n > k:
            completed[k] = b - a
    phi = np.zeros(T, np.float32)
    for (a, b, k), n in zip(runs, nxt, strict=True):
        length = b - a
        if n is not None and n > k:  # completed: the next stage's first frame ends the share
            frac = _spread(length, length + 1, gripper, a, min(b, T - 1), blend)
        else:  # cut short (or the episode ended): the share its length covers
            full = completed.get(k, length)
            frac = np.minimum(np.arange(length) / max(full, 1), 1.0)
        phi[a:b] = (k + frac) / num_stages
    phi[done:] = 1.0
    return np.clip(phi, 0.0, 1.0)


def hop(phi_p, phi_q):
    """Relative progress hop from ``phi_p`` to ``phi_q`` (arrays or scalars), in [-1, 1]."""
    phi_p = np.asarray(phi_p, np.float64)
    phi_q = np.asarray(phi_q, np.float64)
    up = (phi_q - phi_p) / np.maximum(1.0 - phi_p, 1e-6)
    down = (phi_q - phi_p) / np.maximum(phi_p, 1e-6)
    return np.clip(np.where(phi_q >= phi_p, up, down), -1.0, 1.0).astype(np.float32)


def apply_hop(phi_p, h):
    """Inverse of :func:`hop`: progress reached from ``phi_p`` by hop ``h``."""
    phi_p = np.asarray(phi_p, np.float64)
    h = np.asarray(h, np.float64)
    return np.clip(np.where(h >= 0, phi_p + h * (1.0 - phi_p), phi_p + h * phi_p), 0.0, 1.0)
