"""Step discovery, feature selection and per-step classifiers (numpy only, float64).

Step discovery (Sermanet et al. 2016 split demos where the within-segment feature
variance is smallest) is done in two stages:

1. **Initialisation on the time-aligned average.** Every demo's feature sequence is
   resampled to a common length (linear interpolation over normalised time) and the
   demos are averaged; the optimal ``K``-segmentation of that average minimising the
   summed within-segment squared deviation is found by dynamic programming
   (:func:`segment_dp`). Its boundaries, as fractions of the episode, seed every demo.
2. **Refinement by segmental k-means.** Each step's prototype is the mean feature of
   the frames assigned to it over all demos; each demo is then re-segmented into ``K``
   contiguous, ordered segments by dynamic programming against those shared prototypes
   (:func:`segment_to_prototypes`), until the assignment stops changing. Step ``k`` thus
   means the same thing in every demo even when demos spend different times in it (a
   plain proportional split would not), and a demo is never split on its own noise
   (as a per-demo DP could be).
"""

from __future__ import annotations

import numpy as np


def segment_dp(x: np.ndarray, k: int) -> list[int]:
    """Optimal split of ``x (T, D)`` into ``k`` non-empty contiguous segments minimising the
    summed within-segment squared deviation from the segment mean. Returns the ``k - 1``
    start indices of segments ``1..k-1``."""
    t = len(x)
    if not 1 <= k <= t:
        raise ValueError(f"cannot split {t} frames into {k} segments")
    s1 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, 0)])
    s2 = np.concatenate([[0.0], np.cumsum((x * x).sum(1))])
    n = np.arange(t + 1)
    length = n[None, :] - n[:, None]  # length[i, j] = j - i for the segment [i, j)
    sq = (s1 * s1).sum(1)
    cross = sq[None, :] + sq[:, None] - 2 * s1 @ s1.T  # |S1[j] - S1[i]|^2
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = (s2[None, :] - s2[:, None]) - cross / length
    cost[length <= 0] = np.inf
    best = cost[0].copy()  # best[j]: one segment covering [0, j)
    back = np.zeros((k, t + 1), dtype=np.int64)
    for m in range(1, k):
        total = best[:, None] + cost  # previous segments end at i, the new one is [i, j)
        back[m] = np.argmin(total, 0)
        best = total[back[m], n]
    cuts, j = [], t
    for m in range(k - 1, 0, -1):
        j = int(back[m, j])
        cuts.append(j)
    return sorted(cuts)


def segment_to_prototypes(x: np.ndarray, protos: np.ndarray) -> np.ndarray:
    """Labels ``(T,)`` splitting ``x (T, D)`` into ``K`` ordered, non-empty segments, segment
    ``k`` closest (squared distance) to ``protos[k]`` overall; dynamic programming, O(T K)."""
    t, k = len(x), len(protos)
    cost = ((x[:, None, :] - protos[None]) ** 2).sum(-1)
    acc = np.full((t, k), np.inf)
    came_from_prev = np.zeros((t, k), dtype=bool)
    acc[0, 0] = cost[0, 0]
    for i in range(1, t):
        stay = acc[i - 1]
        move = np.concatenate([[np.inf], acc[i - 1, :-1]])
        came_from_prev[i] = move < stay
        acc[i] = cost[i] + np.minimum(stay, move)
    labels = np.empty(t, dtype=np.int64)
    m = k - 1
    for i in range(t - 1, -1, -1):
        labels[i] = m
        if i > 0 and came_from_prev[i, m]:
            m -= 1
    return labels


def resample(x: np.ndarray, length: int) -> np.ndarray:
    """``x (T, D)`` linearly interpolated to ``length`` samples over normalised time."""
    src = np.linspace(0.0, 1.0, len(x))
    dst = np.linspace(0.0, 1.0, length)
    return np.stack([np.interp(dst, src, x[:, j]) for j in range(x.shape[1])], 1)


def labels_from_cuts(t: int, cuts: list[int]) -> np.ndarray:
    labels = np.zeros(t, dtype=np.int64)
    for c in cuts:
        labels[c:] += 1
    return labels


def valid_cuts(cuts: list[int], t: int) -> list[int]:
    """Nearest strictly increasing cuts in ``[1, t - 1]``: every segment keeps a frame."""
    cuts = list(cuts)
    for m in range(len(cuts)):
        cuts[m] = max(cuts[m], cuts[m - 1] + 1 if m else 1)
    for m in reversed(range(len(cuts))):
        cuts[m] = min(cuts[m], cuts[m + 1] - 1 if m + 1 < len(cuts) else t - 1)
    return cuts


def discover_steps(seqs: list[np.ndarray], k: int, iters: int = 10) -> list[np.ndarray]:
    """Step labels ``(T_i,)`` in ``0..k-1`` for each demo's features (see module docstring)."""
    shortest = min(len(s) for s in seqs)
    if k > shortest:
        raise ValueError(f"requested {k} steps but the shortest demo has {shortest} frames")
    common = int(np.median([len(s) for s in seqs]))
    mean = np.mean([resample(s, common) for s in seqs], 0)
    fractions = np.array(segment_dp(mean, k)) / common
    labels = []
    for s in seqs:
        cuts = valid_cuts([int(c) for c in np.round(fractions * len(s))], len(s))
        labels.append(labels_from_cuts(len(s), cuts))
    for _ in range(iters):
        allx, ally = np.concatenate(seqs), np.concatenate(labels)
        protos = np.stack([allx[ally == m].mean(0) for m in range(k)])
        new = [segment_to_prototypes(s, protos) for s in seqs]
        if all(np.array_equal(a, b) for a, b in zip(new, labels, strict=True)):
            break
        labels = new
    return labels


def fisher_scores(z: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-feature Fisher ratio ``(mu1 - mu0)^2 / (var1 + var0)`` of binary labels ``y``."""
    a, b = z[y], z[~y]
    return (a.mean(0) - b.mean(0)) ** 2 / (a.var(0) + b.var(0) + eps)


def fit_logistic(
    z: np.ndarray, y: np.ndarray, l2: float, iters: int = 50
) -> tuple[np.ndarray, float]:
    """Class-balanced, L2-regularised logistic regression by Newton's method (IRLS).

    Returns ``(w, b)`` with ``P(y | z) = sigmoid(z @ w + b)``; the bias is not penalised."""
    n, d = z.shape
    x = np.concatenate([z, np.ones((n, 1))], 1)
    pos = y.mean()
    sw = np.where(y, 0.5 / max(pos, 1e-9), 0.5 / max(1 - pos, 1e-9))  # each class weighs half
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    theta = np.zeros(d + 1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ theta, -30, 30)))
        grad = x.T @ (sw * (p - y)) + reg * theta
        hess = (x * (sw * p * (1 - p))[:, None]).T @ x + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-6:
            break
    return theta[:-1], float(theta[-1])
