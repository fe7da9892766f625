"""Evaluation of progress models, exactly as defined in ``EVALUATION.md``.

Three layers, each usable on its own:

* **Metrics** (pure numpy, no model): :func:`voc`, :func:`progress_agreement`,
  :func:`regress_tracking`, :func:`predict_outcome`, :func:`outcome_accuracy`,
  :func:`false_success_rate`, :func:`choose_thresholds`, :func:`stage_accuracy` and
  :func:`epic_distance`.
* **Scoring**: :func:`score_episode` / :func:`score_store` run a
  :class:`~models.base.ProgressModel` over recorded episodes (several episodes at once as
  different environment indices), and :func:`summarize` turns the scores into the
  report's figures.
* **Reports and probes**: :func:`evaluate` writes ``summary.json``, per-episode plots
  and videos; :func:`exploitation_test` searches action sequences (random shooting or
  CEM) that the model scores highly, and measures how many of them fool it.

Conventions: a model scores every frame of an episode, frame 0 included (reset with the
first frame, then one ``predict`` per frame in order), so ``Φ`` is aligned row by row
with the stored privileged progress ``p``. The model's success call is ``Φ ≥ 1 − δ``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from models.base import ProgressModel, TaskContext
from robo.errors import RoboError
from robo.store import OUTCOMES, Episode, EpisodeStore

log = logging.getLogger(__name__)

DEFAULT_DELTA = 0.05
DEFAULT_TAU = 0.3  # the ground truth's own partial/failure line on final progress
DEFAULT_GAMMA = 0.99


# ----------------------------------------------------------------------------- metrics


def _episodes(values) -> list[np.ndarray]:
    """One episode (a 1-D array or a flat list of numbers) or many, as a list of float arrays."""
    if isinstance(values, np.ndarray) and values.ndim <= 1:
        return [values.astype(np.float64).ravel()]
    items = list(values)
    if items and np.ndim(items[0]) == 0:
        return [np.asarray(items, np.float64)]
    return [np.asarray(item, np.float64).ravel() for item in items]


def _pooled(preds, trues) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-episode predictions and targets, checking that episodes line up."""
    pred_eps, true_eps = _episodes(preds), _episodes(trues)
    lengths = [len(e) for e in pred_eps], [len(e) for e in true_eps]
    if lengths[0] != lengths[1]:
        raise ValueError(
            f"predictions and targets differ in episode lengths: {lengths[0]} vs {lengths[1]}"
        )
    if not pred_eps:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(pred_eps), np.concatenate(true_eps)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r; NaN when undefined (fewer than 2 points or a constant input)."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.clip(np.corrcoef(x, y)[0, 1], -1.0, 1.0))


def voc(pred) -> float:
    """Value-order correlation of one episode: Spearman ρ between Φ(t) and t.

    Args:
        pred: predicted progress ``(T,)`` of one (expert) episode, in time order.

    Returns:
        ρ in [-1, 1]; 0 for a constant prediction (it carries no order); NaN for T < 2.
    """
    pred = np.asarray(pred, np.float64).ravel()
    if pred.size < 2:
        return math.nan
    if np.ptp(pred) == 0:
        return 0.0
    return float(stats.spearmanr(pred, np.arange(pred.size)).statistic)


def progress_agreement(preds, trues) -> dict[str, float]:
    """MAE and Pearson r between predicted Φ and privileged p, pooled over all frames.

    Args:
        preds: predicted progress, one array per episode (or one array).
        trues: privileged progress, same lengths; frames where it is NaN (unknown) are skipped.

    Returns:
        ``{"mae", "pearson", "frames"}`` (NaN figures when there is nothing to compare).
    """
    pred, true = _pooled(preds, trues)
    keep = np.isfinite(pred) & np.isfinite(true)
    pred, true = pred[keep], true[keep]
    mae = float(np.mean(np.abs(pred - true))) if pred.size else math.nan
    return {"mae": mae, "pearson": _pearson(pred, true), "frames": int(pred.size)}


def regress_tracking(
    preds, trues, drop: float = 0.05, window: int = 10, phi_drop: float = 0.0
) -> dict[str, float]:
    """On regressing rollouts: the fraction of frames where p falls on which Φ also falls.

    Frame ``t ≥ window`` is a regress frame when ``p[t - window] - p[t] ≥ drop``; it is
    tracked when ``Φ[t - window] - Φ[t] > phi_drop`` (by default: Φ falls at all).

    Args:
        preds: predicted progress, one array per episode (or one array).
        trues: privileged progress, same lengths.
        drop: how much p must fall over ``window`` steps.
        window: the look-back in steps.
        phi_drop: how much Φ must fall over the same steps to count as falling.

    Returns:
        ``{"rate", "frames", "tracked"}``: rate is NaN when no frame regresses.
    """
    frames = tracked = 0
    for pred, true in zip(_episodes(preds), _episodes(trues), strict=True):
        if len(pred) != len(true):
            raise ValueError(
                f"episode lengths differ: {len(pred)} predictions, {len(true)} targets"
            )
        falls = (
            true[:-window] - true[window:] >= drop - 1e-9
            if len(true) > window
            else np.zeros(0, bool)
        )
        follows = (
            pred[:-window] - pred[window:] > phi_drop if len(pred) > window else np.zeros(0, bool)
        )
        frames += int(falls.sum())
        tracked += int((falls & follows).sum())
    return {"rate": tracked / frames if frames else math.nan, "frames": frames, "tracked": tracked}


def predict_outcome(
    final_phi, delta: float = DEFAULT_DELTA, tau: float = DEFAULT_TAU
) -> np.ndarray:
    """Outcome called from the final Φ: success if Φ ≥ 1 − δ, failure if Φ < τ, else partial.

    Args:
        final_phi: final predicted progress, a number or an array of rollouts.
        delta: success margin δ.
        tau: failure threshold τ.

    Returns:
        An array of labels from ``OUTCOMES``, shaped like ``final_phi``.
    """
    phi = np.asarray(final_phi, np.float64)
    return np.where(phi >= 1.0 - delta, "success", np.where(phi < tau, "failure", "partial"))


def predict_outcome_any_step(
    progress, delta: float = DEFAULT_DELTA, tau: float = DEFAULT_TAU
) -> str:
    """Outcome called the way the outcome itself is defined: success if Φ ≥ 1 − δ at any
    step (the detection the RL reward wrapper fires, which ends the episode there), else
    failure or partial from the final Φ as in :func:`predict_outcome`.

    Args:
        progress: predicted Φ of one rollout, ``(T,)``.
        delta: success margin δ.
        tau: failure threshold τ.
    """
    phi = np.asarray(progress, np.float64)
    if phi.size and float(phi.max()) >= 1.0 - delta:
        return "success"
    return str(predict_outcome(phi[-1], delta, tau))


def confusion_matrix(true_outcomes, pred_outcomes, labels: Sequence[str] = OUTCOMES) -> np.ndarray:
    """Counts ``(len(labels), len(labels))``: rows the true outcome, columns the predicted one."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), np.int64)
    for true, pred in zip(true_outcomes, pred_outcomes, strict=True):
        matrix[index[str(true)], index[str(pred)]] += 1
    return matrix


def outcome_accuracy(
    final_phis, outcomes, delta: float = DEFAULT_DELTA, tau: float = DEFAULT_TAU
) -> dict[str, Any]:
    """Accuracy of the outcome called from the final Φ, with the 3×3 confusion matrix.

    Args:
        final_phis: final predicted progress per rollout.
        outcomes: true outcome per rollout (``success``/``partial``/``failure``).
        delta: success margin δ.
        tau: failure threshold τ.

    Returns:
        ``{"accuracy", "confusion" (rows true, columns predicted, as lists), "labels", "n",
        "delta", "tau"}``; accuracy is NaN for no rollouts.
    """
    outcomes = np.asarray(outcomes, dtype=str)
    predicted = predict_outcome(np.asarray(final_phis, np.float64), delta, tau)
    accuracy = float(np.mean(predicted == outcomes)) if outcomes.size else math.nan
    return {
        "accuracy": accuracy,
        "confusion": confusion_matrix(outcomes, predicted).tolist(),
        "labels": list(OUTCOMES),
        "n": int(outcomes.size),
        "delta": float(delta),
        "tau": float(tau),
    }


def false_success_rate(final_phis, outcomes, delta: float = DEFAULT_DELTA) -> float:
    """Among rollouts whose outcome is not success, the fraction with final Φ ≥ 1 − δ.

    Returns:
        The rate, NaN when every rollout succeeded.
    """
    phis = np.asarray(final_phis, np.float64)
    failed = np.asarray(outcomes, dtype=str) != "success"
    if not failed.any():
        return math.nan
    return float(np.mean(phis[failed] >= 1.0 - delta))


@dataclass(frozen=True)
class Thresholds:
    """Outcome thresholds: success if Φ ≥ 1 − ``delta``, failure if Φ < ``tau``.

    Attributes:
        delta: success margin δ.
        tau: failure threshold τ.
        source: where they come from (``"default"``, ``"chosen on N rollouts"``, ``"given"``).
    """

    delta: float = DEFAULT_DELTA
    tau: float = DEFAULT_TAU
    source: str = "default"


def choose_thresholds(
    final_phis, outcomes, delta: float | None = DEFAULT_DELTA, grid: int = 101
) -> Thresholds:
    """Grid-search τ (and δ if not fixed) maximising outcome accuracy. Training tasks only.

    Pass rollouts of the tasks the model was trained on: thresholds chosen on the
    evaluated tasks would leak the answer into the figure.

    Ties: the δ nearest the default 0.05 wins, then the optimal τ nearest the median of
    all optimal τs (the middle of the widest margin rather than an edge).

    Args:
        final_phis: final predicted progress per training rollout.
        outcomes: their true outcomes.
        delta: a fixed δ (the EVALUATION.md default), or None to search δ in [0, 0.5].
        grid: number of τ values tried in [0, 1].

    Returns:
        The chosen :class:`Thresholds`.
    """
    phis, outcomes = np.asarray(final_phis, np.float64), np.asarray(outcomes, dtype=str)
    if phis.size == 0:
        raise RoboError("choose_thresholds needs at least one training rollout")
    deltas = [float(delta)] if delta is not None else np.linspace(0.0, 0.5, 51).round(4).tolist()
    taus = np.linspace(0.0, 1.0, grid)
    best: tuple[float, float, float, float] | None = None  # (accuracy, -|δ - 0.05|, δ, τ)
    for d in deltas:
        accuracy = np.array([np.mean(predict_outcome(phis, d, t) == outcomes) for t in taus])
        optimal = taus[accuracy == accuracy.max()]
        tau = float(optimal[np.argmin(np.abs(optimal - np.median(optimal)))])
        candidate = (float(accuracy.max()), -abs(d - DEFAULT_DELTA), d, tau)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    assert best is not None
    return Thresholds(
        delta=best[2], tau=round(best[3], 6), source=f"chosen on {phis.size} rollouts"
    )


def stage_from_progress(phi, num_stages: int) -> np.ndarray:
    """The stage implied by progress: ``floor(Φ · num_stages)`` clipped to ``[0, num_stages)``."""
    phi = np.nan_to_num(np.asarray(phi, np.float64), nan=0.0)
    return np.clip(np.floor(phi * num_stages), 0, num_stages - 1).astype(np.int64)


def stage_accuracy(pred_stage, true_stage) -> float:
    """Fraction of frames whose predicted stage equals the true one, pooled over frames.

    Args:
        pred_stage: predicted stages (see :func:`stage_from_progress`), one array per
            episode or one array.
        true_stage: true stages; frames labelled ``-1`` (unknown) are skipped.

    Returns:
        The accuracy, NaN when no frame has a known stage.
    """
    pred, true = _pooled(pred_stage, true_stage)
    known = true >= 0
    return float(np.mean(pred[known] == true[known])) if known.any() else math.nan


def canonicalize_state_reward(
    next_values, state_values, gamma: float = DEFAULT_GAMMA
) -> np.ndarray:
    """EPIC canonicalisation of a reward that depends on the next state only, R(s, a, s') = f(s').

    EPIC (Gleave et al. 2020) canonicalises with S, S' drawn independently from a state
    distribution D_S and A from D_A::

        C(R)(s, a, s') = R(s, a, s') + E[γ R(s', A, S') − R(s, A, S') − γ R(S, A, S')]

    With R(x, a, y) = f(y) every term under the expectation only sees S', so each is a
    multiple of E[f(S')]::

        C(R)(s, a, s') = f(s') + γ E f − E f − γ E f = f(s') − E_{D_S}[f]

    γ cancels: canonicalising a state-only reward just centres it on D_S. The Pearson
    distance that follows is then the one between f_model(s') and f_true(s') on the
    coverage transitions (it ignores shifts), which is why γ cannot change EPIC here.
    The four terms are kept explicit below so the code reads like the formula.

    Args:
        next_values: f(s') at the transitions' next states.
        state_values: f at samples of D_S (the pooled states).
        gamma: the discount γ.

    Returns:
        C(R) at the transitions, ``float64`` shaped like ``next_values``.
    """
    mean = float(np.mean(np.asarray(state_values, np.float64)))  # E f(S') under D_S
    return np.asarray(next_values, np.float64) + gamma * mean - mean - gamma * mean


def pearson_distance(x, y) -> float:
    """EPIC's Pearson distance ``sqrt((1 − ρ) / 2)`` in [0, 1]; NaN if ρ is undefined."""
    rho = _pearson(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return math.sqrt((1.0 - rho) / 2.0) if math.isfinite(rho) else math.nan


def transitions(per_episode) -> tuple[np.ndarray, np.ndarray]:
    """Pool per-episode values into transitions: ``(values at s, values at s')``."""
    episodes = [e for e in _episodes(per_episode) if len(e) >= 2]
    if not episodes:
        return np.zeros(0), np.zeros(0)
    return np.concatenate([e[:-1] for e in episodes]), np.concatenate([e[1:] for e in episodes])


def epic_distance(
    phi_model, phi_true, next_phi_model, next_phi_true, gamma: float = DEFAULT_GAMMA
) -> float:
    """EPIC distance between R(s, a, s') = Φ(s') and the privileged R*(s, a, s') = p(s').

    The coverage distribution is the given transitions; D_S, for the canonicalisation,
    is their pooled states (s and s'). See :func:`canonicalize_state_reward`.

    Args:
        phi_model: Φ at each transition's s.
        phi_true: p at each transition's s.
        next_phi_model: Φ at each transition's s'.
        next_phi_true: p at each transition's s'.
        gamma: the discount γ (as in RL; it cancels for state-only rewards).

    Returns:
        The distance in [0, 1]: 0 for equivalent rewards (equal up to a positive scale and
        a shift), 1 for opposite ones; NaN when a reward is constant or nothing is left.
    """
    arrays = [
        np.asarray(a, np.float64).ravel()
        for a in (phi_model, phi_true, next_phi_model, next_phi_true)
    ]
    if len({a.size for a in arrays}) != 1:
        raise ValueError(f"epic_distance needs equally long arrays, got {[a.size for a in arrays]}")
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    s_model, s_true, n_model, n_true = (a[keep] for a in arrays)
    if n_model.size < 2:
        return math.nan
    canon_model = canonicalize_state_reward(n_model, np.concatenate([s_model, n_model]), gamma)
    canon_true = canonicalize_state_reward(n_true, np.concatenate([s_true, n_true]), gamma)
    return pearson_distance(canon_model, canon_true)


# ----------------------------------------------------------------------------- scoring


class EpisodeScores(NamedTuple):
    """A model's outputs on every frame of one episode, ``float32 (T,)`` each."""

    progress: np.ndarray
    success: np.ndarray
    confidence: np.ndarray


def view_indices(have: Sequence[str] | None, want: Sequence[str], num_views: int) -> list[int]:
    """Indices into the data's view axis that give the model's views in the model's order.

    Args:
        have: the data's view names, or None if the data is already in the model's order.
        want: the model's views.
        num_views: the data's number of views.

    Raises:
        RoboError: a view the model needs is missing.
    """
    if have is None:
        if num_views != len(want):
            raise RoboError(
                f"the data has {num_views} views but the model expects {len(want)} ({', '.join(want)}): "
                "pass the data's view names"
            )
        return list(range(num_views))
    missing = [v for v in want if v not in have]
    if missing:
        raise RoboError(
            f"the model needs views {', '.join(want)} but the data has {', '.join(have)}: "
            f"record {', '.join(missing)} too"
        )
    return [list(have).index(v) for v in want]


def task_context(
    model: ProgressModel, task: str, reference: Episode | None, views: Sequence[str] | None = None
) -> TaskContext:
    """The context of one episode: its task text and the reference's first and goal frames
    (:attr:`robo.store.Episode.goal_index`: its last frame, for the expert's demos).

    Args:
        model: the model (for its views).
        task: the task instruction.
        reference: a demonstration of the task (typically an expert episode not being
            evaluated), or None for text only.
        views: the reference's view names (None: already in the model's order).
    """
    if reference is None:
        return TaskContext(text=task)
    idx = view_indices(views, model.views, reference.num_views)
    return TaskContext(
        text=task,
        start_frames=reference.frames[0, idx],
        goal_frames=reference.frames[reference.goal_index, idx],
    )


def _check_size(model: ProgressModel, frames: np.ndarray) -> None:
    if tuple(frames.shape[-3:-1]) != tuple(model.image_size):
        raise RoboError(
            f"the frames are {frames.shape[-3]}x{frames.shape[-2]} px but the model expects "
            f"{model.image_size[0]}x{model.image_size[1]}: record or render at the model's size"
        )


def _as_numpy(output) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ProgressOutput`` -> ``(progress, success, confidence)`` float32 numpy arrays."""
    fields = (output.progress, output.success, output.confidence)
    return tuple(torch.as_tensor(x).detach().float().cpu().numpy() for x in fields)  # type: ignore[return-value]


def score_episodes(
    model: ProgressModel,
    episodes: Sequence[Episode],
    reference: Episode | None,
    views: Sequence[str] | None = None,
) -> list[EpisodeScores]:
    """Score several episodes in lockstep, episode ``i`` as environment index ``i``.

    Each index is reset with its context and first frame, then ``predict`` runs on every
    frame in order (frame 0 included) for the indices whose episode is still running.

    Args:
        model: the progress model.
        episodes: episodes with the same views (frames of the model's size).
        reference: demonstration giving the context's start and goal frames, or None.
        views: the episodes' (and reference's) view names; None if in the model's order.

    Returns:
        One :class:`EpisodeScores` per episode.
    """
    if not episodes:
        return []
    idx = view_indices(views, model.views, episodes[0].num_views)
    _check_size(model, episodes[0].frames)
    lengths = [len(ep) for ep in episodes]
    out = [np.zeros((3, n), np.float32) for n in lengths]
    contexts = [task_context(model, ep.task, reference, views) for ep in episodes]
    with torch.no_grad():
        model.reset(
            list(range(len(episodes))), contexts, np.stack([ep.frames[0][idx] for ep in episodes])
        )
        for t in range(max(lengths)):
            live = [i for i, n in enumerate(lengths) if n > t]
            frames = np.stack([episodes[i].frames[t][idx] for i in live])
            values = _as_numpy(model.predict(frames, live))
            for k, i in enumerate(live):
                out[i][:, t] = [v[k] for v in values]
    return [EpisodeScores(*scores) for scores in out]


def score_episode(
    model: ProgressModel,
    episode: Episode,
    reference: Episode | None,
    views: Sequence[str] | None = None,
) -> EpisodeScores:
    """Φ(t), success probability and confidence on every frame of one episode.

    Args:
        model: the progress model (environment index 0 is reset).
        episode: the episode to score.
        reference: demonstration giving the context's start and goal frames, or None.
        views: the episode's view names (e.g. ``store.views``); None if in the model's order.
    """
    return score_episodes(model, [episode], reference, views)[0]


def _iter_scored(
    model: ProgressModel,
    store: EpisodeStore,
    reference: Episode | None,
    batch_episodes: int,
    indices: Sequence[int] | None,
    desc: str,
) -> Iterator[tuple[int, Episode, EpisodeScores]]:
    """Yield ``(index, episode, scores)`` over a store, ``batch_episodes`` at a time."""
    indices = list(range(len(store))) if indices is None else list(indices)
    batch = max(1, int(batch_episodes))
    with tqdm(total=len(indices), desc=desc, unit="ep") as bar:
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            episodes = [store.episode(i) for i in chunk]
            scores = score_episodes(model, episodes, reference, store.views)
            bar.update(len(chunk))
            yield from zip(chunk, episodes, scores, strict=True)


def score_store(
    model: ProgressModel,
    store: EpisodeStore,
    reference: Episode | None,
    batch_episodes: int = 8,
    indices: Sequence[int] | None = None,
) -> list[EpisodeScores]:
    """Score episodes of a store, ``batch_episodes`` at a time as environment indices.

    Args:
        model: the progress model.
        store: the episodes (views are matched to the model's by name).
        reference: demonstration giving the context's start and goal frames, or None.
        batch_episodes: episodes scored in lockstep per batch.
        indices: which episodes (default all).

    Returns:
        One :class:`EpisodeScores` per episode, in the order of ``indices``.
    """
    scored = _iter_scored(model, store, reference, batch_episodes, indices, "score")
    return [scores for _, _, scores in scored]


# ----------------------------------------------------------------------------- summary


@dataclass
class ScoredEpisode:
    """What the summary needs of one scored episode (no frames).

    Attributes:
        index: episode index in the store.
        policy: the rollout policy.
        outcome: the true outcome.
        task: task text.
        progress: predicted Φ ``(T,)``.
        success_prob: the model's success probability ``(T,)``.
        privileged_progress: p ``(T,)``.
        stage: true stage ``(T,)``.
        env_success: the environment's success flag ``(T,)``.
    """

    index: int
    policy: str
    outcome: str
    task: str
    progress: np.ndarray
    success_prob: np.ndarray
    privileged_progress: np.ndarray
    stage: np.ndarray
    env_success: np.ndarray

    @classmethod
    def of(cls, index: int, episode: Episode, scores: EpisodeScores) -> ScoredEpisode:
        """Keep an episode's labels and its scores, dropping its frames."""
        return cls(
            index,
            episode.policy,
            episode.outcome,
            episode.task,
            scores.progress,
            scores.success,
            episode.privileged_progress,
            episode.stage,
            episode.success,
        )


def _mean(values) -> float:
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def _voc_figures(records: Sequence[ScoredEpisode]) -> dict[str, Any]:
    by_policy: dict[str, list[float]] = {}
    for r in records:
        by_policy.setdefault(r.policy, []).append(voc(r.progress))
    experts = by_policy.get("expert", [])
    return {
        "voc": _mean(experts),
        "voc_episodes": len(experts),
        "voc_per_policy": {policy: _mean(values) for policy, values in sorted(by_policy.items())},
    }


def _outcome_figures(records: Sequence[ScoredEpisode], thresholds: Thresholds) -> dict[str, Any]:
    finals = [float(r.progress[-1]) for r in records]
    outcomes = [r.outcome for r in records]
    acc = outcome_accuracy(finals, outcomes, thresholds.delta, thresholds.tau)
    return {
        "outcome_accuracy": acc["accuracy"],
        "confusion": {
            "labels": acc["labels"],
            "rows": "true",
            "columns": "predicted",
            "matrix": acc["confusion"],
        },
        "delta": thresholds.delta,
        "tau": thresholds.tau,
        "thresholds_source": thresholds.source,
        "false_success_rate": false_success_rate(finals, outcomes, thresholds.delta),
        "false_success_episodes": sum(o != "success" for o in outcomes),
        # Supplementary: an undo rollout is a "success" (success at some step) whose final
        # state is undone, so no final-progress classifier can call it right.
        "outcome_accuracy_excluding_undo": _accuracy_without(records, "undo", thresholds),
        # Supplementary: success called at any step, as the outcome is defined and as the
        # RL wrapper's detection fires (same delta and tau, not re-chosen).
        **_any_step_figures(records, thresholds),
        # Supplementary: the same final-Φ rule applied to privileged progress itself (default
        # δ and τ): the ceiling of outcome accuracy for a model that tracks progress exactly.
        "outcome_accuracy_privileged": _privileged_accuracy(records),
    }


def _privileged_accuracy(records: Sequence[ScoredEpisode]) -> float:
    kept = [r for r in records if r.privileged_progress is not None and len(r.privileged_progress)]
    if not kept:
        return float("nan")
    finals = [float(r.privileged_progress[-1]) for r in kept]
    return outcome_accuracy(finals, [r.outcome for r in kept])["accuracy"]


def _any_step_figures(records: Sequence[ScoredEpisode], thresholds: Thresholds) -> dict:
    outcomes = np.asarray([r.outcome for r in records], dtype=str)
    predicted = np.asarray(
        [predict_outcome_any_step(r.progress, thresholds.delta, thresholds.tau) for r in records],
        dtype=str,
    )
    failed = outcomes != "success"
    return {
        "outcome_accuracy_any_step": float(np.mean(predicted == outcomes))
        if outcomes.size
        else math.nan,
        "confusion_any_step": confusion_matrix(outcomes, predicted).tolist(),
        "false_success_rate_any_step": float(np.mean(predicted[failed] == "success"))
        if failed.any()
        else math.nan,
    }


def _accuracy_without(
    records: Sequence[ScoredEpisode], policy: str, thresholds: Thresholds
) -> float:
    kept = [r for r in records if r.policy != policy]
    if not kept:
        return float("nan")
    finals = [float(r.progress[-1]) for r in kept]
    return outcome_accuracy(finals, [r.outcome for r in kept], thresholds.delta, thresholds.tau)[
        "accuracy"
    ]


def _episode_row(r: ScoredEpisode, thresholds: Thresholds) -> dict[str, Any]:
    agreement = progress_agreement(r.progress, r.privileged_progress)
    return {
        "index": r.index,
        "policy": r.policy,
        "outcome": r.outcome,
        "predicted_outcome": str(predict_outcome(r.progress[-1], thresholds.delta, thresholds.tau)),
        "final_phi": float(r.progress[-1]),
        "peak_phi": float(np.max(r.progress)),
        "predicted_outcome_any_step": predict_outcome_any_step(
            r.progress, thresholds.delta, thresholds.tau
        ),
        "final_privileged_progress": float(r.privileged_progress[-1]),
        "final_success_prob": float(r.success_prob[-1]),
        "voc": voc(r.progress),
        "mae": agreement["mae"],
        "length": len(r.progress),
    }


def summarize(
    records: Sequence[ScoredEpisode],
    thresholds: Thresholds = Thresholds(),
    num_stages: int = 1,
    gamma: float = DEFAULT_GAMMA,
) -> dict[str, Any]:
    """Every reward-model figure of EVALUATION.md from scored episodes.

    Args:
        records: the scored episodes.
        thresholds: δ and τ for the outcome figures (chosen on training tasks).
        num_stages: the task's number of stages (for stage accuracy).
        gamma: the discount of the EPIC distance.

    Returns:
        A JSON-able dict (NaN where a figure is undefined, e.g. VOC without expert episodes).
    """
    preds = [r.progress for r in records]
    trues = [r.privileged_progress for r in records]
    agreement = progress_agreement(preds, trues)
    undo = [r for r in records if r.policy == "undo"]
    regress = regress_tracking([r.progress for r in undo], [r.privileged_progress for r in undo])
    (s_model, n_model), (s_true, n_true) = transitions(preds), transitions(trues)
    stages = [stage_from_progress(r.progress, num_stages) for r in records]
    return {
        "episodes": len(records),
        "frames": int(sum(len(p) for p in preds)),
        "policies": dict(sorted(Counter(r.policy for r in records).items())),
        "outcomes": {o: sum(r.outcome == o for r in records) for o in OUTCOMES},
        "tasks": sorted({r.task for r in records}),
        **_voc_figures(records),
        "progress_mae": agreement["mae"],
        "progress_pearson": agreement["pearson"],
        "regress_tracking": regress["rate"],
        "regress_frames": regress["frames"],
        "regress_episodes": len(undo),
        **_outcome_figures(records, thresholds),
        "stage_accuracy": stage_accuracy(stages, [r.stage for r in records]),
        "num_stages": int(num_stages),
        "epic_distance": epic_distance(s_model, s_true, n_model, n_true, gamma),
        "gamma": float(gamma),
        "transitions": int(n_model.size),
        "per_episode": [_episode_row(r, thresholds) for r in records],
    }


def _jsonable(value: Any) -> Any:
    """NaN/inf to None and numpy scalars to Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- plots, videos


def plot_episode(
    record: ScoredEpisode, path: str | Path, thresholds: Thresholds = Thresholds()
) -> Path:
    """PNG of one episode: Φ and privileged p against time, and the success probability.

    The title names the policy, the true outcome and the one called from the final Φ.
    """
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend switch

    steps = np.arange(len(record.progress))
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    top.plot(steps, record.privileged_progress, color="0.3", lw=2, label="privileged p")
    top.plot(steps, record.progress, color="tab:blue", lw=1.5, label="predicted Φ")
    top.axhline(1 - thresholds.delta, color="tab:green", ls=":", lw=1, label="1 − δ")
    top.axhline(thresholds.tau, color="tab:red", ls=":", lw=1, label="τ")
    if record.env_success.any():
        first = int(np.argmax(record.env_success))
        top.axvline(first, color="tab:green", lw=1, alpha=0.6, label="env success")
    top.set(ylabel="progress", ylim=(-0.05, 1.05))
    top.legend(loc="upper left", fontsize=7, ncols=3)
    bottom.plot(steps, record.success_prob, color="tab:purple", lw=1.5)
    bottom.set(xlabel="step", ylabel="P(success)", ylim=(-0.05, 1.05))
    predicted = predict_outcome(record.progress[-1], thresholds.delta, thresholds.tau)
    fig.suptitle(
        f"episode {record.index} [{record.policy}]  outcome {record.outcome}, "
        f"predicted {predicted}  VOC {voc(record.progress):.2f}",
        fontsize=10,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def plot_agreement(records: Sequence[ScoredEpisode], path: str | Path) -> Path:
    """PNG scatter of predicted Φ against privileged p over all frames, one colour per policy."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    for policy in sorted({r.policy for r in records}):
        mine = [r for r in records if r.policy == policy]
        true = np.concatenate([r.privileged_progress for r in mine])
        pred = np.concatenate([r.progress for r in mine])
        ax.scatter(true, pred, s=4, alpha=0.5, label=policy)
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1)
    ax.set(xlabel="privileged p", ylabel="predicted Φ", xlim=(-0.05, 1.05), ylim=(-0.05, 1.05))
    ax.legend(fontsize=7, markerscale=3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def annotated_frames(
    frames: np.ndarray, record: ScoredEpisode, min_height: int = 192
) -> np.ndarray:
    """Tiled views ``(T, H', W', 3)`` with Φ, p and P(success) written and drawn as bars.

    The bottom bar is Φ (blue, filled) with p as a white tick.
    """
    import cv2

    from robo.preview import annotate

    scale = max(1, math.ceil(min_height / frames.shape[2]))
    out = []
    for t in range(len(frames)):
        tiled = np.concatenate(list(frames[t]), axis=1)
        tiled = np.ascontiguousarray(np.kron(tiled, np.ones((scale, scale, 1), np.uint8)))
        phi, p = float(record.progress[t]), float(record.privileged_progress[t])
        annotate(
            tiled,
            [
                f"{record.policy} t={t}",
                f"phi={phi:.2f} p={p:.2f} P(s)={float(record.success_prob[t]):.2f}"
                + (" SUCCESS" if record.env_success[t] else ""),
            ],
        )
        h, w = tiled.shape[:2]
        cv2.rectangle(tiled, (0, h - 6), (w - 1, h - 1), (40, 40, 40), -1)
        cv2.rectangle(
            tiled, (0, h - 6), (int(np.clip(phi, 0, 1) * (w - 1)), h - 1), (60, 140, 255), -1
        )
        if math.isfinite(p):
            x = int(np.clip(p, 0, 1) * (w - 1))
            cv2.line(tiled, (x, h - 8), (x, h - 1), (255, 255, 255), 2)
        out.append(tiled)
    return np.stack(out)


def _write_outputs(
    summary: dict[str, Any],
    records: Sequence[ScoredEpisode],
    videos: dict[int, np.ndarray],
    out_dir: Path,
    plots: bool,
    max_plots: int,
    thresholds: Thresholds,
) -> None:
    from robo.preview import write_video

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
    if plots and records:
        for record in records[:max_plots]:
            plot_episode(record, out_dir / "plots" / f"episode_{record.index:04d}.png", thresholds)
        plot_agreement(records, out_dir / "plots" / "agreement.png")
    by_index = {r.index: r for r in records}
    for index, frames in videos.items():
        write_video(
            out_dir / "videos" / f"episode_{index:04d}.mp4",
            annotated_frames(frames, by_index[index]),
            fps=20,
        )


# ----------------------------------------------------------------------------- evaluate


def _as_thresholds(thresholds: Thresholds | tuple[float, float] | None) -> Thresholds:
    if thresholds is None:
        return Thresholds()
    if isinstance(thresholds, Thresholds):
        return thresholds
    delta, tau = thresholds
    return Thresholds(float(delta), float(tau), "given")


def task_num_stages(env_id: str, stages: Sequence[np.ndarray] = ()) -> int:
    """The number of stages of ``env_id`` (from the simulator), else 1 + the largest stage seen."""
    try:
        import sim

        env = sim.make(env_id)
        try:
            return int(env.unwrapped.num_stages)
        finally:
            env.close()
    except (ValueError, ImportError) as e:
        seen = max((int(np.max(s)) for s in stages if len(s)), default=0)
        log.warning(
            "cannot ask the simulator for the stages of %s (%s); assuming %d", env_id, e, seen + 1
        )
        return seen + 1


def evaluate(
    model: ProgressModel,
    store: EpisodeStore,
    reference: Episode | None,
    thresholds: Thresholds | tuple[float, float] | None = None,
    out_dir: str | Path | None = None,
    plots: bool = True,
    video_episodes: int = 1,
    *,
    gamma: float = DEFAULT_GAMMA,
    batch_episodes: int = 8,
    num_stages: int | None = None,
    max_plots: int = 64,
    seen_in_training: bool | None = None,
) -> dict[str, Any]:
    """Score every episode of a store and compute the EVALUATION.md figures.

    Args:
        model: the progress model.
        store: rollouts of one task (expert and non-expert), views matched by name.
        reference: demonstration of the task giving the context's start and goal frames
            (keep it out of ``store``), or None for text only.
        thresholds: δ and τ chosen on training tasks (:func:`choose_thresholds`), a
            ``(delta, tau)`` pair, or None for the defaults (δ = 0.05, τ = 0.3).
        out_dir: where to write ``summary.json``, ``plots/`` and ``videos/`` (None: nothing).
        plots: write per-episode PNGs (the first ``max_plots``) and an agreement scatter.
        video_episodes: MP4s with Φ drawn over the views for this many first episodes.
        gamma: discount of the EPIC distance.
        batch_episodes: episodes scored in lockstep.
        num_stages: the task's stages (default: asked from the simulator).
        max_plots: cap on per-episode PNGs.
        seen_in_training: recorded in the summary (EVALUATION.md asks to state it).

    Returns:
        The summary dict (see :func:`summarize`) plus ``env_id``, ``seen_in_training``,
        ``seconds`` and ``frames_per_second``.
    """
    thresholds = _as_thresholds(thresholds)
    start = time.perf_counter()
    records: list[ScoredEpisode] = []
    videos: dict[int, np.ndarray] = {}
    for index, episode, scores in _iter_scored(
        model, store, reference, batch_episodes, None, "evaluate"
    ):
        records.append(ScoredEpisode.of(index, episode, scores))
        if out_dir is not None and len(videos) < video_episodes:
            videos[index] = episode.frames[
                :, view_indices(store.views, model.views, episode.num_views)
            ]
    seconds = time.perf_counter() - start
    if num_stages is None:
        num_stages = task_num_stages(store.env_id, [r.stage for r in records])
    summary = {
        "env_id": store.env_id,
        "seen_in_training": seen_in_training,
        **summarize(records, thresholds, num_stages, gamma),
    }
    summary["seconds"] = seconds
    summary["frames_per_second"] = summary["frames"] / seconds if seconds > 0 else math.nan
    if out_dir is not None:
        _write_outputs(summary, records, videos, Path(out_dir), plots, max_plots, thresholds)
    return summary


# ----------------------------------------------------------------------------- exploitation


def smoothed_noise(
    rng: np.random.Generator, shape: tuple[int, ...], smoothing: float, scale: float = 1.0
) -> np.ndarray:
    """Stationary AR(1) noise along axis 1: ``x_t = ρ x_{t−1} + sqrt(1 − ρ²) ε_t``, ε ~ N(0, scale²).

    Every step has standard deviation ``scale`` whatever the smoothing ρ in [0, 1).
    """
    if not 0.0 <= smoothing < 1.0:
        raise RoboError(f"smoothing {smoothing} must lie in [0, 1)")
    eps = rng.normal(0.0, scale, shape)
    out = np.empty_like(eps)
    out[:, 0] = eps[:, 0]
    innovation = math.sqrt(1.0 - smoothing**2)
    for t in range(1, shape[1]):
        out[:, t] = smoothing * out[:, t - 1] + innovation * eps[:, t]
    return out


class _Shooter:
    """Rolls out action sequences from one start state in B envs in lockstep; scores by final Φ."""

    def __init__(self, model: ProgressModel, envs: list, seed: int, context: TaskContext):
        self.model, self.envs, self.seed, self.context = model, envs, seed, context

    def _reset(self, k: int) -> np.ndarray:
        for env in self.envs[:k]:
            env.reset(seed=self.seed)
        return np.stack([env.unwrapped.render_views() for env in self.envs[:k]])

    def _run_chunk(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = len(actions)
        frames = self._reset(k)
        succeeded = np.zeros(k, bool)
        progress = np.full(k, np.nan)  # final privileged progress, where the env reports it
        self.model.reset(list(range(k)), [self.context] * k, frames)
        phi = _as_numpy(self.model.predict(frames, list(range(k))))[0]
        for t in range(actions.shape[1]):
            for i, env in enumerate(self.envs[:k]):
                info = env.step(actions[i, t])[-1]
                succeeded[i] |= bool(info["success"])
                progress[i] = float(info.get("privileged_progress", np.nan))
            frames = np.stack([env.unwrapped.render_views() for env in self.envs[:k]])
            phi = _as_numpy(self.model.predict(frames, list(range(k))))[0]
        return phi.astype(np.float64), succeeded, progress

    def __call__(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Final Φ, env success (at any step) and final privileged progress (NaN where the
        env has none) of each sequence ``(n, horizon, A)``."""
        scores, success, progress = [], [], []
        with torch.no_grad():
            for start in range(0, len(actions), len(self.envs)):
                phi, ok, prog = self._run_chunk(actions[start : start + len(self.envs)])
                scores.append(phi)
                success.append(ok)
                progress.append(prog)
        return np.concatenate(scores), np.concatenate(success), np.concatenate(progress)


def _budget_split(n: int, parts: int) -> list[int]:
    sizes = [n // parts + (i < n % parts) for i in range(parts)]
    return [s for s in sizes if s > 0]


def _search(
    shoot: _Shooter,
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    smoothing: float,
    method: str,
    cem_iters: int,
    top_frac: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate the whole budget of sequences; CEM refits a Gaussian to each round's elite.
    Returns each sequence's final Φ, env success, final privileged progress and actions
    ``(n, horizon, A)``."""
    n, horizon, dim = shape
    rounds = _budget_split(n, cem_iters if method == "cem" else 1)
    mean, std = np.zeros((horizon, dim)), np.ones((horizon, dim))
    scores, success, progress, tried = [], [], [], []
    for size in tqdm(rounds, desc=f"exploit [{method}]", unit="round", disable=len(rounds) == 1):
        actions = np.clip(mean + std * smoothed_noise(rng, (size, horizon, dim), smoothing), -1, 1)
        actions = actions.astype(np.float32)
        phi, ok, prog = shoot(actions)
        scores.append(phi)
        success.append(ok)
        progress.append(prog)
        tried.append(actions)
        elite = actions[np.argsort(-phi, kind="stable")[: max(2, math.ceil(top_frac * size))]]
        # the floor on std keeps the search exploring
        mean, std = elite.mean(0), np.maximum(elite.std(0), 0.05)
    return (
        np.concatenate(scores),
        np.concatenate(success),
        np.concatenate(progress),
        np.concatenate(tried),
    )


def exploitation_test(
    model: ProgressModel,
    env_id: str,
    seed: int,
    reference: Episode | None,
    horizon: int | None = None,
    n_sequences: int = 256,
    top_frac: float = 0.1,
    smoothing: float = 0.8,
    method: Literal["random", "cem"] = "random",
    cem_iters: int = 3,
    rng: np.random.Generator | int | None = None,
    *,
    delta: float = DEFAULT_DELTA,
    batch_envs: int = 16,
    reference_views: Sequence[str] | None = None,
    return_actions: bool = False,
) -> dict[str, Any]:
    """Search for action sequences the model scores highly, and count the false successes.

    From the start state of ``env.reset(seed=seed)``, ``n_sequences`` action sequences
    of temporally smoothed noise (random shooting, or CEM over ``cem_iters`` rounds
    sharing the budget) are rolled out with frames rendered, and each is scored by the
    model's final Φ (model reset per sequence; ``batch_envs`` env copies run in
    lockstep as environment indices). Among the top ``top_frac`` by score, the exploit
    rate is the fraction the model calls success (Φ ≥ 1 − δ) while the environment
    reports no success at any step.

    Args:
        model: the progress model (frames are rendered at its views and size).
        env_id: the task.
        seed: reset seed of the start state.
        reference: demonstration giving the context's start and goal frames, or None.
        horizon: steps per sequence (default: the env's episode length).
        n_sequences: the budget of sequences.
        top_frac: the top fraction examined.
        smoothing: AR(1) coefficient of the action noise.
        method: ``"random"`` shooting or ``"cem"``.
        cem_iters: CEM rounds.
        rng: a Generator or a seed.
        delta: success margin δ.
        batch_envs: environments run in lockstep.
        reference_views: the reference's view names (None: in the model's order).
        return_actions: also return the top sequences' actions (``"top_actions"``, an
            array ``(n_top, horizon, A)`` in score order), e.g. to record them.

    Returns:
        ``{"exploit_rate", "top_scores", "top_env_success", "top_model_success",
        "top_privileged_progress" (the final state's, None where the env reports none), "n_top",
        "env_success_rate", "model_success_rate", "method", "env_id", "seed", "horizon",
        "n_sequences", "env_steps", "delta", "seconds"}`` (and ``"top_actions"``).
    """
    from robo.collect import make_env

    if method not in ("random", "cem"):
        raise RoboError(f"method {method!r}: use 'random' or 'cem'")
    if n_sequences < 1 or not 0.0 < top_frac <= 1.0:
        raise RoboError("n_sequences must be >= 1 and top_frac in (0, 1]")
    rng = np.random.default_rng(rng)
    envs = [
        make_env(env_id, model.views, model.image_size)
        for _ in range(max(1, min(batch_envs, n_sequences)))
    ]
    try:
        horizon = int(horizon or envs[0].spec.max_episode_steps or 100)
        task = envs[0].unwrapped.task_text
        shoot = _Shooter(model, envs, seed, task_context(model, task, reference, reference_views))
        start = time.perf_counter()
        shape = (n_sequences, horizon, envs[0].action_space.shape[0])
        scores, env_success, progress, actions = _search(
            shoot, rng, shape, smoothing, method, cem_iters, top_frac
        )
        seconds = time.perf_counter() - start
    finally:
        for env in envs:
            env.close()
    model_success = scores >= 1.0 - delta
    top = np.argsort(-scores, kind="stable")[: max(1, math.ceil(top_frac * len(scores) - 1e-9))]
    out = {
        "exploit_rate": float(np.mean(model_success[top] & ~env_success[top])),
        "top_scores": scores[top].tolist(),
        "top_env_success": env_success[top].tolist(),
        "top_model_success": model_success[top].tolist(),
        # how close each top sequence came (a near-miss or a hack); None without the sim's
        "top_privileged_progress": [None if np.isnan(p) else float(p) for p in progress[top]],
        "n_top": len(top),
        "env_success_rate": float(env_success.mean()),
        "model_success_rate": float(model_success.mean()),
        "method": method,
        "env_id": env_id,
        "seed": int(seed),
        "horizon": horizon,
        "n_sequences": int(n_sequences),
        "env_steps": int(n_sequences * horizon),
        "delta": float(delta),
        "seconds": seconds,
    }
    if return_actions:
        out["top_actions"] = actions[top]
    return out
