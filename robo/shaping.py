"""Reward shaping from any progress model, for vectorised (SB3) and single Gymnasium envs.

Modes (``ShapingMode``):

* ``sparse``: ``r = r_gold`` (1 on success).
* ``pbrs``: ``r = r_gold + gamma * Phi(s') - Phi(s)`` with ``Phi(s') = 0`` at true terminal
  states (Ng et al. 1999). Time-limit truncation is not terminal: ``Phi(s')`` of the last
  state is kept, and SB3 bootstraps from ``terminal_observation``, so the optimal policy
  of the sparse task is unchanged.
* ``naive``: ``r = r_gold + Phi(s')``: progress as a dense reward, no terminal correction.
  Hovering at high-progress states pays forever: the "semantic trap".
* ``oracle``: the environment's own hand-written dense reward.

``r_gold`` comes from the environment's success flag (default in simulation) or from the
model's success detection (``Phi >= 1 - delta``) where no environment signal exists.
Every term goes into ``info["reward_terms"]``; the environment's own reward stays in
``info["original_env_rew"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from models.base import TaskContext
from robo.errors import RoboError


class ShapingMode(StrEnum):
    sparse = "sparse"
    pbrs = "pbrs"
    naive = "naive"
    oracle = "oracle"


class SuccessSource(StrEnum):
    env = "env"
    model = "model"


def check_gamma(gamma: float) -> float:
    if not 0.0 < gamma <= 1.0:
        raise RoboError(f"discount gamma={gamma} must lie in (0, 1]")
    return float(gamma)


def shaped_reward(
    mode: ShapingMode, r_gold, phi, phi_next, terminated, gamma: float, r_env=None
) -> np.ndarray:
    """Vectorised reward of one step for every mode (see module docstring)."""
    r_gold, phi, phi_next = (np.asarray(x, np.float64) for x in (r_gold, phi, phi_next))
    terminated = np.asarray(terminated, bool)
    if mode is ShapingMode.sparse:
        return r_gold
    if mode is ShapingMode.oracle:
        return np.asarray(r_env, np.float64)
    if mode is ShapingMode.naive:
        return r_gold + phi_next
    return r_gold + gamma * np.where(terminated, 0.0, phi_next) - phi


@dataclass
class ShapingConfig:
    """How rewards are computed."""

    # sparse | pbrs | naive | oracle.
    mode: ShapingMode = ShapingMode.pbrs
    # discount of the RL algorithm (the potential uses the same gamma).
    gamma: float = 0.99
    # where the gold reward comes from: the environment's success flag, or the model's detection.
    success_source: SuccessSource = SuccessSource.env
    # success margin of the model's detection (Phi >= 1 - delta).
    delta: float = 0.05
    # scale of the gold (success) reward.
    success_bonus: float = 1.0

    def __post_init__(self) -> None:
        self.mode = ShapingMode(self.mode)
        self.success_source = SuccessSource(self.success_source)
        check_gamma(self.gamma)
        if not 0.0 <= self.delta < 1.0:
            raise RoboError(f"delta={self.delta} must lie in [0, 1)")


def _env_views(env) -> tuple[str, ...]:
    return tuple(env.unwrapped.views)


def check_model_views(model, env) -> None:
    """The model's views must be a subset of what the environment renders, at the same size."""
    if not model.views:  # a model that needs no frames (sparse / oracle rewards)
        return
    views = _env_views(env)
    missing = [v for v in model.views if v not in views]
    if missing:
        raise RoboError(
            f"the reward model needs views {missing} but the env renders {list(views)}: "
            f"make the env with views={tuple(model.views)}"
        )
    size = tuple(getattr(env.unwrapped, "image_size", model.image_size))
    if size != tuple(model.image_size):
        raise RoboError(
            f"the reward model expects {model.image_size[0]}x{model.image_size[1]} px frames but the env "
            f"renders {size[0]}x{size[1]}: make the env with image_size={model.image_size[0]}"
        )


class RenderViewsInfo(gym.Wrapper):
    """Adds ``info["frames"]`` (uint8 ``(V, H, W, 3)``) of the views a reward model needs,
    rendered in the env's own process (so SubprocVecEnv workers render in parallel)."""

    def __init__(self, env: gym.Env, views: Sequence[str] | None = None):
        super().__init__(env)
        env_views = _env_views(env)
        self.view_idx = [env_views.index(v) for v in (env_views if views is None else views)]

    def _frames(self) -> np.ndarray:
        if not self.view_idx:  # nothing to render for this reward
            return np.zeros((0,), np.uint8)
        return self.env.unwrapped.render_views()[self.view_idx]

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "frames": self._frames()}

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        return obs, r, term, trunc, {**info, "frames": self._frames()}


class _Shaper:
    """Model bookkeeping shared by the vectorised and the single-env wrapper."""

    def __init__(self, model, cfg: ShapingConfig, contexts: Sequence[TaskContext]):
        self.model, self.cfg, self.contexts = model, cfg, list(contexts)
        self.phi = np.zeros(len(self.contexts))
        self.first: dict[int, np.ndarray] = {}  # each env's episode-start frames
        # Each episode's key frames, for refinement: where the potential peaked (the state a
        # false success fired on) and where the env first reported success.
        self.peak: dict[int, tuple[float, np.ndarray]] = {}
        self.success_frames: dict[int, np.ndarray] = {}

    def reset(self, indices: Sequence[int], frames: np.ndarray, infos=None) -> None:
        """New episodes in ``indices``, starting on ``frames``."""
        for j, i in enumerate(indices):
            self.first[i] = np.array(frames[j])  # a copy: callers reuse their frame buffers
            self.peak.pop(i, None)
            self.success_frames.pop(i, None)
        if getattr(self.model, "reads_info", False):  # privileged potential (evaluation only)
            self.phi[list(indices)] = [float(i["privileged_progress"]) for i in infos]
            return
        out = self.model.reset(list(indices), [self.contexts[i] for i in indices], frames)
        self.phi[list(indices)] = out.progress.numpy()

    def resync(self, frames: np.ndarray) -> None:
        """Re-start the model's state after its weights changed, mid-episode: from each
        episode's own first frames (its forward anchor), then one step to the current ones."""
        if getattr(self.model, "reads_info", False) or not self.first:
            return
        idx = list(range(len(self.contexts)))
        self.model.reset(idx, self.contexts, np.stack([self.first[i] for i in idx]))
        self.phi[idx] = self.model.predict(frames, idx).progress.numpy()

    def step(
        self, frames, env_reward, infos, terminated, truncated
    ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Rewards for one vectorised step; ``frames`` are those of the states reached."""
        out = self.model.predict(frames, list(range(len(frames))))
        phi_next = out.progress.numpy().astype(np.float64)
        if getattr(self.model, "reads_info", False):  # privileged potential (evaluation only)
            phi_next = np.array([float(i["privileged_progress"]) for i in infos])
        model_success = phi_next >= 1.0 - self.cfg.delta
        env_success = np.array([bool(i.get("success", False)) for i in infos])
        success = env_success if self.cfg.success_source is SuccessSource.env else model_success
        r_gold = self.cfg.success_bonus * success
        reward = shaped_reward(
            self.cfg.mode, r_gold, self.phi, phi_next, terminated, self.cfg.gamma, env_reward
        )
        terms = []
        for k in range(len(frames)):
            terms.append(
                {
                    "mode": self.cfg.mode.value,
                    "potential": float(self.phi[k]),
                    "next_potential": float(phi_next[k]),
                    "shaping": float(reward[k] - r_gold[k])
                    if self.cfg.mode is not ShapingMode.oracle
                    else 0.0,
                    "success_bonus": float(r_gold[k]),
                    "env_reward": float(env_reward[k]),
                    "model_success": bool(model_success[k]),
                    "model_success_prob": float(out.success[k]),
                    "env_success": bool(env_success[k]),
                    "confidence": float(out.confidence[k]),
                    "has_model": bool(self.model.views),
                }
            )
        self.phi = phi_next
        self._track_key_frames(frames, phi_next, env_success)
        return reward.astype(np.float32), model_success, terms

    def _track_key_frames(self, frames, phi_next, env_success) -> None:
        for k in range(len(frames)):
            if k not in self.peak or phi_next[k] > self.peak[k][0]:
                self.peak[k] = (float(phi_next[k]), np.array(frames[k]))
            if env_success[k] and k not in self.success_frames:
                self.success_frames[k] = np.array(frames[k])

    def key_frames(self, k: int) -> dict:
        """Env ``k``'s episode so far: its first frames, the frames (and value) of its peak
        potential and the frames of its first env success (None if none)."""
        peak_phi, peak = self.peak.get(k, (float("nan"), None))
        return {
            "first": self.first.get(k),
            "peak": peak,
            "peak_potential": peak_phi,
            "success": self.success_frames.get(k),
        }


class RewardVecEnvWrapper(VecEnvWrapper):
    """Rewrites the rewards of all envs at once from a progress model (one batched pass per step).

    The wrapped envs must be wrapped in :class:`RenderViewsInfo` (see :func:`make_reward_vec_env`).
    On episode ends the model state of that env is reset with the first frame of the new
    episode; the terminal transition is scored on the terminal state's frames, which the
    step's info keeps as ``terminal_frames``.
    """

    def __init__(
        self, venv: VecEnv, model, cfg: ShapingConfig, context: TaskContext | Sequence[TaskContext]
    ):
        super().__init__(venv)
        contexts = [context] * venv.num_envs if isinstance(context, TaskContext) else list(context)
        self.shaper = _Shaper(model, cfg, contexts)
        self.last_frames: np.ndarray | None = None  # frames of the current state of every env
        if cfg.mode is ShapingMode.sparse and cfg.success_source is SuccessSource.env:
            self._require_success_signal()

    def _require_success_signal(self) -> None:
        self.venv.reset()
        infos = getattr(self.venv, "reset_infos", [{}])
        if "success" not in (infos[0] if infos else {}):
            raise RoboError(
                "sparse reward needs the env's success signal (info['success']), which this env lacks: "
                "use success_source=model"
            )

    def reset(self):
        obs = self.venv.reset()
        frames = np.stack([i["frames"] for i in self.venv.reset_infos])
        self.shaper.reset(range(self.num_envs), frames, self.venv.reset_infos)
        self.last_frames = frames
        return obs

    def step_wait(self):
        obs, env_reward, dones, infos = self.venv.step_wait()
        frames = np.stack([i["frames"] for i in infos])  # terminal frames for envs that ended
        truncated = np.array([bool(i.get("TimeLimit.truncated", False)) for i in infos])
        terminated = dones & ~truncated
        reward, _, terms = self.shaper.step(frames, env_reward, infos, terminated, truncated)
        ended = np.flatnonzero(dones)
        for k, info in enumerate(infos):
            info["reward_terms"] = terms[k]
            info["original_env_rew"] = float(env_reward[k])
            info.pop("frames", None)
            if dones[k]:  # for refinement: the frames the episode started and ended on
                info["terminal_frames"] = frames[k]
                info["episode_first_frames"] = self.shaper.first.get(k)
                info["episode_key_frames"] = self.shaper.key_frames(k)
        self.last_frames = frames.copy()
        if len(ended):
            first = np.stack([self.venv.reset_infos[k]["frames"] for k in ended])
            self.shaper.reset(ended, first, [self.venv.reset_infos[k] for k in ended])
            self.last_frames[ended] = first
        return obs, reward, dones, infos

    def resync_model(self) -> None:
        """Re-start the model's per-env state (after its weights changed) on the current frames."""
        if self.last_frames is not None:
            self.shaper.resync(self.last_frames)


class ShapedRewardWrapper(gym.Wrapper):
    """Single-env Gymnasium counterpart of :class:`RewardVecEnvWrapper`."""

    def __init__(self, env: gym.Env, model, cfg: ShapingConfig, context: TaskContext):
        check_model_views(model, env)
        super().__init__(RenderViewsInfo(env, model.views))
        self.shaper = _Shaper(model, cfg, [context])

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.shaper.reset([0], info.pop("frames")[None], [info])
        return obs, info

    def step(self, action):
        obs, env_reward, term, trunc, info = self.env.step(action)
        reward, _, terms = self.shaper.step(
            info.pop("frames")[None],
            np.array([env_reward]),
            [info],
            np.array([term]),
            np.array([trunc]),
        )
        info["reward_terms"], info["original_env_rew"] = terms[0], float(env_reward)
        if term or trunc:
            info["episode_key_frames"] = self.shaper.key_frames(0)
        return obs, float(reward[0]), term, trunc, info


def make_reward_vec_env(
    env_fns, model, cfg: ShapingConfig, context, subprocess: bool = False
) -> RewardVecEnvWrapper:
    """``env_fns`` -> (Dummy|Subproc)VecEnv of envs rendering the model's views -> shaped rewards."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    probe = env_fns[0]()
    check_model_views(model, probe)
    probe.close()
    wrapped = [lambda fn=fn: RenderViewsInfo(fn(), model.views) for fn in env_fns]
    venv = SubprocVecEnv(wrapped) if subprocess else DummyVecEnv(wrapped)
    return RewardVecEnvWrapper(venv, model, cfg, context)
