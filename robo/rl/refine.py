"""Reward-refinement loop: RL episodes whose outcome contradicts the model refine the model.

During training every finished episode is checked: the model's success detection fired
but the environment (or, on a robot, the operator) says it failed, or the other way
round. Those episodes' first and final frames join the reward model's data as
outcome-labelled rollouts (an episode store beside the run), the model is adapted on them
together with the demonstrations (outcome loss + hop pairs, anchored to its current
weights), and training continues with the refined model. The false-success rate of each
window is reported before and after every refinement.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from robo.rl.callbacks import completed_steps
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
    ):
        super().__init__()
        self.on_refined = on_refined  # called after every adaptation (e.g. to re-score demos)
        self.wrapper, self.pm, self.demos_url = wrapper, progress_model, demos_url
        self.out, self.every, self.min_episodes = Path(out), every, min_episodes
        self.adapt_steps, self.anchor, self.env_id = adapt_steps, anchor, env_id
        self._next = every
        self._ep: dict[int, dict] = {}
        self.window = {"episodes": 0, "env_failures": 0, "false_successes": 0}
        self.pending: list[tuple[np.ndarray, bool]] = []
        self.history: list[dict] = []
        self._store: EpisodeStore | None = None

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
        self.window["episodes"] += 1
        if not ep["env"]:
            self.window["env_failures"] += 1
            self.window["false_successes"] += int(ep["model"])
        if ep["model"] != ep["env"] and "terminal_frames" in info:
            frames = [info.get("episode_first_frames"), info["terminal_frames"]]
            self.pending.append((np.stack([f for f in frames if f is not None]), ep["env"]))

    def _window_record(self) -> dict:
        """The current window's figures: its false-success rate and the counts behind it."""
        w = self.window
        return {
            "step": self.num_timesteps,
            "false_success_rate_before": self.window_fsr(),
            "window_episodes": w["episodes"],
            "window_env_failures": w["env_failures"],
            "window_false_successes": w["false_successes"],
        }

    def window_fsr(self) -> float:
        w = self.window
        return w["false_successes"] / w["env_failures"] if w["env_failures"] else float("nan")

    def refine(self) -> dict | None:
        """Adapt the model if enough contradicting episodes are pending; returns the record."""
        record = {**self._window_record(), "added": len(self.pending)}
        if self.history:
            self.history[-1]["false_success_rate_after"] = record["false_success_rate_before"]
        self.window = {"episodes": 0, "env_failures": 0, "false_successes": 0}
        if len(self.pending) < self.min_episodes:
            record["refined"] = False
            self.history.append(record)
            return record
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
            fails = sum(r.get("window_env_failures", 0) for r in rows)
            false = sum(r.get("window_false_successes", 0) for r in rows)
            return (false / fails if fails else float("nan")), fails

        before, n_before = pooled(self.history[: first + 1])
        after, n_after = pooled(self.history[first + 1 :])
        return {
            "before": before,
            "failed_episodes_before": n_before,
            "after": after,
            "failed_episodes_after": n_after,
            "refinements": sum(bool(r.get("refined")) for r in self.history),
        }
