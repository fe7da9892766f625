"""Reward-refinement loop: RL episodes whose outcome contradicts the model refine the model.

During training every finished episode is checked: the model's success detection fired
but the environment (or, on a robot, the operator) says it failed, or the other way
round. Those episodes join the reward model's data as outcome-labelled rollouts (an
episode store beside the run), the model is adapted on them together with the
demonstrations (outcome loss + hop pairs, anchored to its current weights), and training
continues with the refined model. The false-success rate of each window is reported
before and after every refinement.

Each added episode is its first frames and the frames the label is about: for a false
success the state where the potential peaked (the one the detection fired on), for a
missed success the state where the env first reported success. Every frame of a failed
episode is a failure state, and a success frame is one, whatever the episode did after.

Balance: contradicting episodes of one kind only would move the decision boundary
wholesale: adapting on missed successes alone makes the model call near misses
successes. So each refinement adds as many agreeing episodes of the other outcome:
the failures the model rated highest without firing (hard negatives) against missed
successes, and recent successes it detected against false successes.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from robo.rl.callbacks import completed_steps, tally_episode
from robo.store import Episode, EpisodeStore

log = logging.getLogger(__name__)


class RefineCallback(BaseCallback):
    """Collects contradicting episodes; every ``every`` steps adapts the GRM on them."""

    def __init__(
        self,
        wrapper,
        progress_model,
        demos_url: str,
        out: Path,
        every: int = 2000,
        min_episodes: int = 2,
        adapt_steps: int = 150,
        anchor: float = 1e-2,
        env_id: str = "",
        on_refined=None,
        balance: bool = True,
        pool_size: int = 32,
    ):
        super().__init__()
        self.on_refined = on_refined  # called after every adaptation (e.g. to re-score demos)
        self.wrapper, self.pm, self.demos_url = wrapper, progress_model, demos_url
        self.out, self.every, self.min_episodes = Path(out), every, min_episodes
        self.adapt_steps, self.anchor, self.env_id = adapt_steps, anchor, env_id
        self._next = every
        self._ep: dict[int, dict] = {}
        self.window = self._empty_window()
        self.pending: list[tuple[np.ndarray, bool]] = []
        # agreeing episodes kept for balance: failures by their peak potential (a min-heap
        # of the highest), detected successes most recent first
        self.balance = balance
        self._hard_failures: list[tuple[float, int, np.ndarray]] = []
        self._successes: deque[np.ndarray] = deque(maxlen=pool_size)
        self._pool_size, self._tie = pool_size, itertools.count()
        self.history: list[dict] = []
        self._store: EpisodeStore | None = None

    @staticmethod
    def _empty_window() -> dict:
        return {"episodes": 0, "env_failures": 0, "false_successes": 0, "missed_successes": 0}

    def _on_step(self) -> bool:
        for infos, dones in completed_steps(self):
            self._track(infos, dones)
        if self.num_timesteps >= self._next:
            self._next += self.every
            self.refine()
        return True

    def _track(self, infos, dones) -> None:
        for k, (info, done) in enumerate(zip(infos, dones, strict=True)):
            ep = self._ep.setdefault(k, {"model": False, "env": False})
            ep["model"] |= bool(info.get("reward_terms", {}).get("model_success", False))
            ep["env"] |= bool(info.get("success", False))
            if done:
                self._episode_end(ep, info)
                self._ep[k] = {"model": False, "env": False}

    def _episode_end(self, ep: dict, info: dict) -> None:
        tally_episode(self.window, ep["model"], ep["env"])
        frames, peak = self._labelled_frames(info, ep["env"])
        if frames is None:
            return
        if ep["model"] != ep["env"]:
            self.pending.append((frames, ep["env"]))
        elif not self.balance:
            return
        elif ep["env"]:
            self._successes.appendleft(frames)
        else:
            item = (peak, next(self._tie), frames)
            if len(self._hard_failures) < self._pool_size:
                heapq.heappush(self._hard_failures, item)
            elif peak > self._hard_failures[0][0]:
                heapq.heapreplace(self._hard_failures, item)

    @staticmethod
    def _labelled_frames(info: dict, success: bool) -> tuple[np.ndarray | None, float]:
        """``(first, labelled)`` frames of an ended episode (see the module docstring) and
        its peak potential; falls back to the final frames where key frames are missing."""
        key = info.get("episode_key_frames") or {}
        first = key.get("first", info.get("episode_first_frames"))
        labelled = key.get("success") if success else key.get("peak")
        if labelled is None:
            labelled = info.get("terminal_frames")
        if labelled is None:
            return None, float("nan")
        frames = [f for f in (first, labelled) if f is not None]
        return np.stack(frames), float(key.get("peak_potential", float("nan")))

    def _balance_pending(self) -> int:
        """Add agreeing episodes of the minority outcome to ``pending``; returns how many."""
        successes = sum(ok for _, ok in self.pending)
        short = successes - (len(self.pending) - successes)
        hardest = heapq.nlargest(max(short, 0), self._hard_failures)  # highest peaks first
        added = [(frames, False) for _, _, frames in hardest]
        if hardest:
            taken = {tie for _, tie, _ in hardest}
            self._hard_failures = [t for t in self._hard_failures if t[1] not in taken]
            heapq.heapify(self._hard_failures)
        short -= len(hardest)
        while short < 0 and self._successes:
            added.append((self._successes.popleft(), True))
            short += 1
        self.pending += added
        return len(added)

    def _window_record(self) -> dict:
        """The current window's figures: its false-success rate and the counts behind it."""
        w = self.window
        return {
            "step": self.num_timesteps,
            "false_success_rate_before": self.window_fsr(),
            "window_episodes": w["episodes"],
            "window_env_failures": w["env_failures"],
            "window_false_successes": w["false_successes"],
            "window_missed_successes": w["missed_successes"],
        }

    def window_fsr(self) -> float:
        w = self.window
        return w["false_successes"] / w["env_failures"] if w["env_failures"] else float("nan")

    def refine(self) -> dict | None:
        """Adapt the model if enough contradicting episodes are pending; returns the record."""
        record = {**self._window_record(), "added": len(self.pending)}
        if self.history:
            self.history[-1]["false_success_rate_after"] = record["false_success_rate_before"]
        self.window = self._empty_window()
        if len(self.pending) < self.min_episodes:
            record["refined"] = False
            self.history.append(record)
            return record
        record["added_for_balance"] = self._balance_pending() if self.balance else 0
        record["added_successes"] = sum(ok for _, ok in self.pending)
        self._write_pending()
        record["terms"] = self._adapt()
        record["refined"] = True
        self.wrapper.resync_model()
        if self.on_refined is not None:
            self.on_refined()
        self.history.append(record)
        log.info("refined the reward model: %s", record)
        return record

    def _write_pending(self) -> None:
        views = tuple(self.pm.views)
        if self._store is None:
            self._store = EpisodeStore.create(
                self.out / "refine_data",
                views=views,
                image_size=tuple(self.pm.image_size),
                env_id=self.env_id,
                state_dim=1,
                action_dim=1,
                overwrite=True,
            )
        for frames, success in self.pending:  # (start,) end frames of each episode
            t = len(frames)
            self._store.append_episode(
                Episode(
                    frames=frames,
                    states=np.zeros((t, 1), np.float32),
                    actions=np.zeros((t, 1), np.float32),
                    env_reward=np.zeros(t, np.float32),
                    success=np.array([False] * (t - 1) + [success]),
                    stage=np.full(t, -1, np.int16),
                    privileged_progress=np.full(t, np.nan, np.float32),
                    task="",
                    env_id=self.env_id,
                    seed=-1,
                    policy="rl-refine",
                    outcome="success" if success else "failure",
                )
            )
        self.pending = []

    def _adapt(self) -> dict:
        from robo.reward.adapt import l2_anchor
        from robo.reward.data import PairSampler, SamplerConfig, model_sampling
        from robo.reward.train import LoopSettings, _encoder_resolution, fit

        grm = self.pm.model
        sampler = PairSampler(
            [self.demos_url],
            grm.cfg.views,
            SamplerConfig(p_outcome=0.5),
            seed=self.num_timesteps,
            resolution=_encoder_resolution(grm.cfg),
            **model_sampling(grm.cfg),
            outcome_urls=[str(self.out / "refine_data")],
        )
        anchor = {n: p.detach().clone() for n, p in grm.named_parameters()}
        terms = fit(
            grm,
            sampler,
            LoopSettings(
                steps=self.adapt_steps,
                groups=8,
                lr=3e-4,
                warmup=10,
                desc="refine GRM",
                log_every=10,
            ),
            None,
            extra_loss=l2_anchor(anchor, self.anchor),
        )
        grm.eval()
        return terms

    def _on_training_end(self) -> None:
        for infos, dones in completed_steps(self, final=True):
            self._track(infos, dones)
        if self.history:
            self.history[-1]["false_success_rate_after"] = self.window_fsr()
            self.history.append({**self._window_record(), "final_window": True})

    def before_after(self) -> dict:
        """False-success rate before the first refinement and pooled over all episodes after
        it (each window's count of failed episodes and of false successes among them)."""
        first = next((i for i, r in enumerate(self.history) if r.get("refined")), None)
        if first is None:
            return {"before": float("nan"), "after": float("nan"), "refinements": 0}

        def pooled(rows):
            total = sum(r.get("window_episodes", 0) for r in rows)
            fails = sum(r.get("window_env_failures", 0) for r in rows)
            false = sum(r.get("window_false_successes", 0) for r in rows)
            missed = sum(r.get("window_missed_successes", 0) for r in rows)
            wins = total - fails
            return (
                (false / fails if fails else float("nan")),
                fails,
                (missed / wins if wins else float("nan")),
                wins,
            )

        before, n_before, missed_before, wins_before = pooled(self.history[: first + 1])
        after, n_after, missed_after, wins_after = pooled(self.history[first + 1 :])
        return {
            "before": before,
            "failed_episodes_before": n_before,
            "after": after,
            "failed_episodes_after": n_after,
            # the other error: env successes the detection never fired on
            "missed_before": missed_before,
            "successful_episodes_before": wins_before,
            "missed_after": missed_after,
            "successful_episodes_after": wins_after,
            "refinements": sum(bool(r.get("refined")) for r in self.history),
        }
