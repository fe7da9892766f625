"""Action chunks: the policy decides ``k`` actions at once and the env runs them open-loop.

A behaviour-cloned policy that maps one state to one action fits a scripted expert's
switching points poorly: near a switch ("above the cube: descend" against "not yet
above it: move over") it averages the two and can stall at a fixed point with a near-zero
action. Predicting the next ``k`` actions from a state (ACT, diffusion policy) makes each
switch part of one decision; RL on the chunked MDP (Q-chunking, Li et al. 2025) backs up
values over ``k`` steps at a time, a unbiased n-step return with the executed actions.

The chunked env is a semi-MDP with discount ``gamma^k`` per decision. Potential-based
shaping at the chunk boundaries, ``r = r_gold + gamma^k Phi(s_t+k) - Phi(s_t)``, is the
per-step shaping summed over the chunk (the terms telescope), so it stays policy-invariant;
and the reward model is queried once per chunk, not once per step.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from robo.errors import RoboError


class ActionChunkWrapper(gym.Wrapper):
    """Runs a flat action of ``k * dim(A)`` values as ``k`` consecutive env steps.

    The chunk stops early where the episode ends (termination or time limit). It returns
    the last step's observation and info, with ``info["success"]`` true if any step of the
    chunk succeeded, ``info["chunk_steps"]`` the steps run, and as reward the env's own
    rewards discounted over the chunk (``sum gamma^i r_i``: what the ``oracle`` mode sees).
    """

    def __init__(self, env: gym.Env, k: int, gamma: float = 1.0):
        super().__init__(env)
        if int(k) < 1:
            raise RoboError(f"action chunk length {k} must be at least 1")
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise RoboError(
                f"action chunks need a flat Box action space, not {space}: use --action_chunk 1"
            )
        self.k, self.gamma, self.dim = int(k), float(gamma), int(space.shape[0])
        self.action_space = gym.spaces.Box(
            np.tile(space.low, self.k), np.tile(space.high, self.k), dtype=space.dtype
        )

    def step(self, action):
        chunk = np.asarray(action, dtype=self.env.action_space.dtype).reshape(self.k, self.dim)
        total, success = 0.0, False
        for i, a in enumerate(chunk):
            obs, reward, terminated, truncated, info = self.env.step(a)
            total += self.gamma**i * float(reward)
            success |= bool(info.get("success", False))
            if terminated or truncated:
                break
        info = dict(info, success=success, chunk_steps=i + 1)
        return obs, total, terminated, truncated, info


def chunk_actions(actions: np.ndarray, k: int) -> np.ndarray:
    """``(T, dim)`` actions of an episode's ``T`` transitions -> ``(T, k * dim)``: row t holds
    the actions of steps t..t+k-1; past the episode's end the last action is repeated (those
    steps are never run: the episode ended within the chunk)."""
    actions = np.asarray(actions)
    T = len(actions)
    idx = np.minimum(np.arange(T)[:, None] + np.arange(k)[None, :], T - 1)
    return actions[idx].reshape(T, -1)
