"""Training labels of the GRM: step-wise progress of annotated demos and relative hops.

Progress is discretised per stage: with K stages, every stage owns an equal share 1/K
of [0, 1] however many frames it lasts, and frames inside a stage are spread evenly
over its share. The hop from state p to state q is the progress made relative to what
was left (or lost relative to what had been made):

    H = (phi_q - phi_p) / (1 - phi_p)   if phi_q >= phi_p
    H = (phi_q - phi_p) / phi_p         otherwise

so H lies in [-1, 1], H = 1 means "q completes the task", H = -1 "q is back at the start".
"""

from __future__ import annotations

import numpy as np


def stepwise_progress(
    stage: np.ndarray, num_stages: int, success: np.ndarray | None = None
) -> np.ndarray:
    """Progress labels ``(T,)`` of one demo from its per-frame stage annotation.

    Stage labels are made monotone (a demo does not go back a stage); frames from the
    first success on are labelled 1.

    Args:
        stage: ``(T,)`` stage index per frame.
        num_stages: K, the task's number of stages.
        success: optional ``(T,)`` success flags.
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
        phi[idx] = (k + np.arange(len(idx)) / max(n - 1, 1)) / num_stages
    phi[done:] = 1.0
    if done == T:  # never succeeded: the last annotated frame is the end of the demo
        phi[-1] = max(phi[-1], phi[-2] if T > 1 else 0.0)
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
