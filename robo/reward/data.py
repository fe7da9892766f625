"""Training pairs for the GRM, streamed from episode stores.

Labels come only from what an annotator or operator provides: the per-frame stage
annotation of expert demonstrations (step-wise progress, :mod:`models.grm.labels`) and
the outcome of other rollouts. Privileged progress is never read here.

Memory stays bounded whatever the dataset size: the sampler keeps a small cache of
episodes per task and swaps one for a random other every few batches.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from models.grm.labels import hop, recovery_progress, stepwise_progress
from models.grm.model import resize
from robo.errors import RoboError
from robo.store import EpisodeStore

log = logging.getLogger(__name__)
ROLES = ("start", "goal", "before", "after")
# Outcome classes as progress intervals [lo, hi) of the final frame (EVALUATION.md: partial
# means at least 0.3 of the way without success). ``success`` starts at 1 - delta.
PARTIAL_FROM = 0.3
NOT_SUCCESS = "not-success"  # a final state known only not to be a success


def final_state_outcome(outcome: str, success) -> str:
    """The label a rollout's outcome gives its final frame.

    EVALUATION.md's outcome is success at *any* step. A rollout that succeeded and then
    lost it (an ``undo``: the drawer opened, then closed again) ends in a state that is not
    a success, and all its labels say of that state is "not success". Where success holds
    at the end (the arm moved away from a closed drawer), the final frame is a success.
    """
    if outcome == "success" and success is not None and len(success) and not bool(success[-1]):
        return NOT_SUCCESS
    return outcome


def outcome_interval(outcome: str, delta: float, three_class: bool) -> tuple[float, float]:
    """The progress interval ``[lo, hi)`` an outcome label puts the final frame in.

    With ``three_class`` the labels are EVALUATION.md's success / partial / failure;
    otherwise (an operator's or RL episode's success / failure) failure only means
    "not success".
    """
    if outcome == "success":
        return 1.0 - delta, 2.0  # open above: a hop past the goal is clamped to progress 1
    if not three_class or outcome == NOT_SUCCESS:
        return 0.0, 1.0 - delta
    return (PARTIAL_FROM, 1.0 - delta) if outcome == "partial" else (0.0, PARTIAL_FROM)


def model_sampling(model_cfg) -> dict:
    """The :class:`PairSampler` arguments a GRM config fixes: where forward-anchored pairs
    hop from, and the success margin of the outcome intervals."""
    return {
        "own_start": model_cfg.forward_anchor == "episode",
        "success_delta": model_cfg.success_delta,
        "label_spacing": str(model_cfg.label_spacing),
    }


@dataclass
class _Demo:
    frames: np.ndarray  # (T, V, H, W, 3)
    phi: np.ndarray  # (T,) step-wise progress labels
    task: str
    goal: int  # the frame a context takes as the goal (Episode.goal_index)


@dataclass
class _Task:
    """One task (one store): its demos, its outcome-labelled rollouts, a small cache of each."""

    store: EpisodeStore
    url: str
    demo_ids: list[int]
    rollout_ids: list[int]
    num_stages: int
    three_class: bool = True  # outcome labels are success / partial / failure (else s / f)
    demos: dict[int, _Demo] = field(default_factory=dict)
    rollouts: dict[int, tuple[np.ndarray | None, np.ndarray, str, str]] = field(
        default_factory=dict
    )


@dataclass
class SamplerConfig:
    """How pairs are drawn.

    Attributes:
        cache_episodes: episodes per task kept in memory.
        refresh_every: batches between swapping one cached episode per task.
        pairs_per_group: pairs drawn from one demo with one reference context (they share frames).
        p_anchor_start / p_anchor_goal / p_zero: shares of forward-anchored, backward-anchored
            and zero-hop pairs; the rest are pairs within a demo, in both directions.
        p_swap_context: probability that the reference start/goal come from another demo.
        p_outcome: share of groups that are an outcome-labelled rollout's final frame (scored
            from the reference goal and from the rollout's own first frame).
        max_shift: random image shift (pixels, at the encoder's resolution) of the augmentation.
        train_fraction: fraction of each store's episodes used for training (the rest held out).
        undo_demos: successful ``undo`` rollouts in a store are also demonstrations that go
            on after success (labelled done while the env says solved, up to their last
            solved frame): the arm retraces its path while the task stays done, which no
            expert demo shows. They stay outcome-labelled rollouts too, so the final frame of
            one that ended undone is still "not done".
    """

    cache_episodes: int = 24
    refresh_every: int = 4
    pairs_per_group: int = 4
    p_anchor_start: float = 0.2
    p_anchor_goal: float = 0.3
    p_zero: float = 0.1
    p_swap_context: float = 0.5
    p_outcome: float = 0.25
    max_shift: int = 2
    train_fraction: float = 1.0
    undo_demos: bool = False


def is_training_demo(meta, cloning: bool = False, undo: bool = False) -> bool:
    """A successful demonstration: the expert's, a recovery demo (``recover``) or, for the
    GRM only (not ``cloning``), a ``retreat`` demo (the arm withdraws after success while
    the task stays solved) and, with ``undo``, a successful ``undo`` rollout (the expert's
    motion replayed backwards after success: labelled done for as long as the env says
    solved, like a retreat). The GRM trains on these as demonstrations; the RL warm start
    clones the first two."""
    policies = ("expert", "recover") if cloning else ("expert", "recover", "retreat")
    if undo and not cloning:
        policies += ("undo",)
    return meta.outcome == "success" and meta.policy.partition(":")[0] in policies


def demo_end(ep) -> int:
    """How many leading frames of a demonstration carry labels: all of them, except that a
    demo which reached success and later lost it (a ``retreat`` that knocked the object, or
    a task that is a pose of the arm) ends with its last successful frame."""
    success = np.asarray(ep.success, bool)
    if not success.any() or success[-1]:
        return len(success)
    return int(len(success) - np.argmax(success[::-1]))


#: Environments whose recorded ``states[:, 0:3]`` is the gripper position (the tabletop
#: suite's TCP, Meta-World's hand): ``label_spacing: gripper`` reads it there. A robot's or
#: an imported dataset's states are joint readings whose layout the store does not say.
GRIPPER_STATE_ENVS = ("tabletop/", "metaworld/")


def demo_progress(ep, num_stages: int, spacing: str = "time") -> np.ndarray:
    """Step-wise progress labels of a demo from its stage annotation; a recovery demo's
    falls back a stage are kept (:func:`models.grm.labels.recovery_progress`). ``spacing``
    ``gripper`` spreads a stage's frames by the gripper's approach to where the stage
    ends, read from ``states[:, 0:3]``; ``blend`` by the mean of that and time where the
    store's states hold the gripper position (:data:`GRIPPER_STATE_ENVS`), by time elsewhere
    (a robot's or an imported dataset's stores), with a warning."""
    gripper = None
    if spacing == "blend" and not ep.env_id.startswith(GRIPPER_STATE_ENVS):
        warnings.warn(
            f"label_spacing blend: {ep.env_id} states do not say where the gripper is, so its "
            "demos are spaced evenly in time",
            stacklevel=2,
        )
        spacing = "time"
    if spacing in ("gripper", "blend"):
        if not ep.env_id.startswith(GRIPPER_STATE_ENVS):
            raise ValueError(
                f"label_spacing gripper reads the gripper position from states[:, 0:3], known "
                f"to hold it for {', '.join(GRIPPER_STATE_ENVS)} stores only, not {ep.env_id}: "
                "use label_spacing time"
            )
        if ep.states.ndim != 2 or ep.states.shape[1] < 3:
            raise ValueError(
                f"label_spacing gripper reads the gripper position from states[:, 0:3], but "
                f"{ep.env_id} episode {ep.seed} has states of shape {ep.states.shape}: "
                "use label_spacing time"
            )
        gripper = ep.states[:, :3]
    elif spacing != "time":
        raise ValueError(f"label spacing {spacing!r}: choose time, gripper or blend")
    blend = 0.5 if spacing == "blend" else 1.0
    if ep.policy.startswith("recover"):
        return recovery_progress(ep.stage, num_stages, ep.success, gripper=gripper, blend=blend)
    return stepwise_progress(ep.stage, num_stages, ep.success, gripper=gripper, blend=blend)


class PairSampler:
    """Draws batches of (context, BEFORE, AFTER) hop pairs from one or more stores.

    Args:
        urls: episode stores, one per task. Successful expert episodes (policy
            ``expert``) and recovery demos (``recover``) are demonstrations; other
            non-expert episodes are outcome-labelled rollouts.
        views: camera views the model sees (each store must have them).
        cfg: sampling settings.
        seed: RNG seed (offset per DDP rank by the caller).
    """

    def __init__(
        self,
        urls: list[str],
        views: tuple[str, ...],
        cfg: SamplerConfig | None = None,
        seed: int = 0,
        episode_filter=None,
        resolution: int | None = None,
        outcome_urls: list[str] = (),
        own_start: bool = True,
        success_delta: float = 0.05,
        label_spacing: str = "time",
    ):
        self.cfg = cfg or SamplerConfig()
        self.resolution = resolution  # cache frames pre-resized to the encoder's input side
        # Forward-anchored pairs hop from the demo's own first frame (the model's
        # ``forward_anchor: episode``) rather than from the reference start.
        self.own_start = own_start
        self.success_delta = success_delta
        self.label_spacing = label_spacing
        self.rng = np.random.default_rng(seed)
        self.views = tuple(views)
        self.tasks = [self._open(url, episode_filter) for url in urls]
        # Outcome-only stores (labelled RL episodes, robot runs, mined failures): their
        # reference demos come from a task of the same env among ``urls``. Operators label
        # success or failure; a store that also uses ``partial`` (e.g. the env's own labels
        # on mined rollouts) keeps the three-class intervals.
        self.tasks += [self._open(url, None, demos_required=False) for url in outcome_urls]
        self.demo_tasks = [t for t in self.tasks if t.demo_ids]
        # Groups are drawn per task with demonstrations; an outcome group draws a rollout
        # from the task's own rollouts pooled with those of the outcome-only stores of its
        # env, each rollout equally likely (so adding a store of mined failures shifts the
        # mix of outcome groups rather than doubling their share).
        self._sources: dict[int, list[_Task]] = {}
        for t in self.tasks[len(urls) :]:
            if not any(d.store.env_id == t.store.env_id for d in self.demo_tasks):
                raise RoboError(
                    f"{t.url} holds rollouts of {t.store.env_id} but no store among the "
                    "training data has demonstrations of it: add one"
                )
        for t in self.demo_tasks:
            self._sources[id(t)] = [t] * bool(t.rollout_ids) + [
                o
                for o in self.tasks[len(urls) :]
                if o.rollout_ids and o.store.env_id == t.store.env_id
            ]
        self.hist = np.ones(10)  # running histogram of hop values, for balancing
        self._batches = 0

    # ------------------------------------------------------------------ set-up
    def _open(self, url: str, episode_filter, demos_required: bool = True) -> _Task:
        store = EpisodeStore.open(url)
        missing = [v for v in self.views if v not in store.views]
        if missing:
            raise RoboError(
                f"{url} has no views {missing} (it has {', '.join(store.views)}): record them or change the model's views"
            )
        metas = [store.episode_meta(i) for i in range(len(store))]
        if episode_filter is not None:
            metas = [m for m in metas if episode_filter(url, m)]
        undo = self.cfg.undo_demos
        demos = [m.index for m in metas if is_training_demo(m, undo=undo)]
        # An undo demo is also an outcome-labelled rollout: its frames after success was
        # lost are cut from the demo, but its final frame still says "not done".
        rollouts = [
            m.index
            for m in metas
            if m.policy != "expert"
            and (not is_training_demo(m, undo=undo) or (undo and m.policy == "undo"))
        ]
        three_class = True
        if not demos_required:  # outcome-only stores: only episodes with an outcome label
            demos = []  # (an expert episode there is not a demonstration to learn from)
            labels = {m.index: m.outcome for m in metas}
            three_class = any(labels[i] == "partial" for i in rollouts)
            rollouts = [i for i in rollouts if labels[i] in ("success", "partial", "failure")]
        if not demos and demos_required:
            raise RoboError(f"{url} has no successful expert demonstrations to train on")
        stages = max([int(store.episode(i).stage.max()) for i in demos[:5]] or [0]) + 1
        self._view_idx = {url: [store.views.index(v) for v in self.views]}
        return _Task(store, url, demos, rollouts, stages, three_class)

    def describe(self) -> list[dict]:
        """What the sampler trains on: per task, the store, env id and episode indices."""
        return [
            {
                "data": t.url,
                "env_id": t.store.env_id,
                "num_stages": t.num_stages,
                "demos": t.demo_ids,
                "outcome_rollouts": t.rollout_ids,
            }
            for t in self.tasks
        ]

    # ------------------------------------------------------------------ caches
    def _demo(self, task: _Task, index: int) -> _Demo:
        if index not in task.demos:
            if len(task.demos) >= self.cfg.cache_episodes:
                task.demos.pop(next(iter(task.demos)))
            ep = task.store.episode(index)
            vidx = [task.store.views.index(v) for v in self.views]
            end = demo_end(ep)
            phi = demo_progress(ep, task.num_stages, self.label_spacing)[:end]
            goal = min(ep.goal_index, end - 1)
            task.demos[index] = _Demo(self._resize(ep.frames[:end, vidx]), phi, ep.task, goal)
        return task.demos[index]

    def _rollout_end(self, task: _Task, index: int):
        if index not in task.rollouts:
            if len(task.rollouts) >= self.cfg.cache_episodes:
                task.rollouts.pop(next(iter(task.rollouts)))
            ep = task.store.episode(index)
            vidx = [task.store.views.index(v) for v in self.views]
            first_last = self._resize(ep.frames[[0, -1]][:, vidx])
            # A one-frame record (e.g. the refinement loop's terminal frame) has no start.
            first = first_last[0] if len(ep) > 1 else None
            outcome = final_state_outcome(ep.outcome, ep.success)
            task.rollouts[index] = (first, first_last[1], outcome, ep.task)
        return task.rollouts[index]

    def _resize(self, frames: np.ndarray) -> np.ndarray:
        """``(T, V, H, W, 3)`` uint8 resized as the model's encoder would (a no-op there after)."""
        if self.resolution is None or frames.shape[2] == self.resolution:
            return np.ascontiguousarray(frames)
        t, v, h, w, _ = frames.shape
        x = torch.from_numpy(frames).reshape(t * v, h, w, 3).permute(0, 3, 1, 2).float()
        x = resize(x, self.resolution).round().clamp(0, 255).to(torch.uint8)
        return (
            x.permute(0, 2, 3, 1)
            .reshape(t, v, self.resolution, self.resolution, 3)
            .contiguous()
            .numpy()
        )

    def _pick_demo(self, task: _Task) -> tuple[int, _Demo]:
        # Mostly draw from the cache; sometimes load a new episode (bounded cache).
        cached = list(task.demos)
        if cached and (
            len(cached) >= min(self.cfg.cache_episodes, len(task.demo_ids))
            and self.rng.random() > 0.05
        ):
            i = cached[self.rng.integers(len(cached))]
        else:
            i = int(self.rng.choice(task.demo_ids))
        return i, self._demo(task, i)

    # ------------------------------------------------------------------ sampling
    def _pair(self, phi: np.ndarray) -> tuple[int, int]:
        """Indices (i, j) within one demo, balanced over hop values and temporal gaps."""
        T = len(phi)
        best, best_count = (0, 0), np.inf
        for _ in range(6):
            i = int(self.rng.integers(T))
            gap = int(np.exp(self.rng.uniform(0, np.log(T))))
            j = int(np.clip(i + gap * self.rng.choice([-1, 1]), 0, T - 1))
            b = int(np.clip((hop(phi[i], phi[j]) + 1) / 2 * 10, 0, 9))
            if self.hist[b] < best_count:
                best, best_count = (i, j), self.hist[b]
        return best

    def _group(
        self, task: _Task
    ) -> tuple[list[np.ndarray], list[tuple[int, int, int, int, float]], str]:
        """One demo + one reference context -> frames and (start, goal, before, after, hop) rows."""
        di, demo = self._pick_demo(task)
        ref = demo
        if len(task.demo_ids) > 1 and self.rng.random() < self.cfg.p_swap_context:
            others = [i for i in task.demo_ids if i != di]
            ref = (
                self._pick_demo(task)[1]
                if self.rng.random() < 0.5
                else self._demo(task, int(self.rng.choice(others)))
            )
        frames = [ref.frames[0], ref.frames[ref.goal]]  # 0: start, 1: goal
        if self.own_start:
            frames.append(demo.frames[0])
        first = len(frames) - 1  # what forward-anchored pairs hop from (progress 0)
        rows = []
        c = self.cfg
        T = len(demo.phi)
        for _ in range(c.pairs_per_group):
            u = self.rng.random()
            j = int(self.rng.integers(T))
            if u < c.p_anchor_start:
                frames.append(demo.frames[j])
                rows.append((0, 1, first, len(frames) - 1, float(demo.phi[j])))
            elif u < c.p_anchor_start + c.p_anchor_goal:
                frames.append(demo.frames[j])
                rows.append((0, 1, 1, len(frames) - 1, float(demo.phi[j]) - 1.0))
            elif u < c.p_anchor_start + c.p_anchor_goal + c.p_zero:
                frames.append(demo.frames[j])
                rows.append((0, 1, len(frames) - 1, len(frames) - 1, 0.0))
            else:
                i, j = self._pair(demo.phi)
                frames += [demo.frames[i], demo.frames[j]]
                rows.append(
                    (0, 1, len(frames) - 2, len(frames) - 1, float(hop(demo.phi[i], demo.phi[j])))
                )
            self.hist[int(np.clip((rows[-1][4] + 1) / 2 * 10, 0, 9))] += 1
        return frames, rows, demo.task

    def _outcome_group(self, task: _Task):
        """A rollout's final frame scored from the reference goal (backward) and from the
        rollout's first frame (forward), with the hop intervals its outcome implies.

        Returns ``(frames, rows, intervals, text)``: rows index (start, goal, before, after)
        into frames; intervals are ``(lo, hi)`` bounds on each row's hop."""
        sources = self._sources[id(task)]
        sizes = np.array([len(t.rollout_ids) for t in sources], dtype=float)
        src = sources[int(self.rng.choice(len(sources), p=sizes / sizes.sum()))]
        ri = int(self.rng.choice(src.rollout_ids))
        first, last, outcome, text = self._rollout_end(src, ri)
        ref = self._pick_demo(task)[1]
        lo, hi = outcome_interval(outcome, self.success_delta, src.three_class)
        frames = [ref.frames[0], ref.frames[ref.goal], last]
        rows, intervals = [(0, 1, 1, 2)], [(lo - 1.0, hi - 1.0)]  # backward: phi = 1 + H
        if self.own_start and first is not None:
            frames.append(first)
            rows.append((0, 1, 3, 2))
            intervals.append((lo if lo > 0 else -1.0 - 1e-6, hi))  # forward: phi = max(H, 0)
        return frames, rows, intervals, text

    def sample(self, groups: int) -> dict:
        """A batch of ``groups`` groups (about ``groups * pairs_per_group`` pairs).

        Returns a dict with uint8 ``frames (N, V, H, W, 3)`` (unique frames), long index
        tensors ``<role>_idx (B,)`` into them, float ``hop (B,)`` (NaN on outcome rows),
        bool ``<role>_mask (B, V)``, ``text`` (list), and for the outcome rows
        ``outcome_idx (K,)`` with the hop interval ``outcome_lo``/``outcome_hi (K,)`` their
        outcome label implies.
        """
        frames, rows, texts, outcome_rows, outcome_labels = [], [], [], [], []
        for _ in range(groups):
            task = self.demo_tasks[int(self.rng.integers(len(self.demo_tasks)))]
            if self._sources[id(task)] and self.rng.random() < self.cfg.p_outcome:
                f, rws, intervals, text = self._outcome_group(task)
                base = len(frames)
                frames += f
                for row, interval in zip(rws, intervals, strict=True):
                    outcome_rows.append(len(rows))
                    outcome_labels.append(interval)
                    rows.append((*(base + k for k in row), np.nan))
                    texts.append(text)
                continue
            f, rws, text = self._group(task)
            base = len(frames)
            frames += f
            rows += [(base + a, base + b, base + c, base + d, h) for a, b, c, d, h in rws]
            texts += [text] * len(rws)
        self._batches += 1
        return self._collate(frames, rows, texts, outcome_rows, outcome_labels)

    def _collate(self, frames, rows, texts, outcome_rows, outcome_labels) -> dict:
        arr = torch.from_numpy(np.stack(frames))
        arr = shift_augment(arr, self.cfg.max_shift, self.rng)
        idx = torch.tensor([r[:4] for r in rows], dtype=torch.long)
        batch = {
            "frames": arr,
            "hop": torch.tensor([r[4] for r in rows], dtype=torch.float32),
            "text": texts,
            "outcome_idx": torch.tensor(outcome_rows, dtype=torch.long),
            "outcome_lo": torch.tensor([lo for lo, _ in outcome_labels], dtype=torch.float32),
            "outcome_hi": torch.tensor([hi for _, hi in outcome_labels], dtype=torch.float32),
        }
        for k, role in enumerate(ROLES):
            batch[f"{role}_idx"] = idx[:, k]
        return batch


def shift_augment(frames: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Random translation of each frame set by up to ``max_shift`` pixels (replicate padding)."""
    if max_shift <= 0:
        return frames
    n, v, h, w, _ = frames.shape
    x = frames.permute(0, 1, 4, 2, 3).reshape(n * v, 3, h, w).float()
    x = torch.nn.functional.pad(x, [max_shift] * 4, mode="replicate")
    out = torch.empty((n * v, 3, h, w))
    dy = rng.integers(0, 2 * max_shift + 1, n)
    dx = rng.integers(0, 2 * max_shift + 1, n)
    for k in range(n):
        out[k * v : (k + 1) * v] = x[k * v : (k + 1) * v, :, dy[k] : dy[k] + h, dx[k] : dx[k] + w]
    return out.to(torch.uint8).view(n, v, 3, h, w).permute(0, 1, 3, 4, 2).contiguous()
