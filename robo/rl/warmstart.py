"""Behaviour-cloning warm start from demonstrations, and demo-seeded critics for SAC."""

from __future__ import annotations

import logging

import numpy as np
import torch

from robo.errors import RoboError
from robo.shaping import shaped_reward

log = logging.getLogger(__name__)


def load_demos(url: str, model) -> list:
    from robo.store import EpisodeStore

    store = EpisodeStore.open(url)
    demos = [
        store.episode(i) for i in range(len(store)) if store.episode_meta(i).policy == "expert"
    ]
    if not demos:
        raise RoboError(f"{url} has no expert demonstrations for the warm start")
    return demos, store.views


def behaviour_clone(
    policy, obs: np.ndarray, actions: np.ndarray, epochs: int, lr: float = 1e-3, batch: int = 256
) -> float:
    """Fit the policy's deterministic action to the demonstrations (MSE); returns the final loss."""
    device = policy.device
    o = torch.as_tensor(obs, dtype=torch.float32, device=device)
    a = torch.as_tensor(np.clip(actions, -0.999, 0.999), dtype=torch.float32, device=device)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    loss = torch.zeros(())
    for _ in range(epochs):
        for idx in torch.randperm(len(o)).split(batch):
            loss = ((policy._predict(o[idx], deterministic=True) - a[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(loss.detach())


def demo_transitions(demos, views, model, ctx, cfg) -> dict:
    """(obs, action, reward, next_obs, done) of all demos, rewarded by the run's shaping."""
    rows = {k: [] for k in ("obs", "act", "rew", "next", "done")}
    for ep in demos:
        T = len(ep)
        if model.views:
            phi = _score_with_context(
                model, ep.frames[:, [views.index(v) for v in model.views]], ctx
            )
        else:
            phi = np.zeros(T)
        success = ep.success.astype(float)
        terminated = np.zeros(T - 1, bool)
        terminated[-1] = bool(ep.success[-1])
        r = shaped_reward(
            cfg.shaping.mode,
            cfg.shaping.success_bonus * success[1:],
            phi[:-1],
            phi[1:],
            terminated,
            cfg.shaping.gamma,
            ep.env_reward[1:],
        )
        rows["obs"].append(ep.states[:-1])
        rows["act"].append(ep.actions[:-1])
        rows["rew"].append(r)
        rows["next"].append(ep.states[1:])
        rows["done"].append(terminated)
    return {k: np.concatenate(v) for k, v in rows.items()}


def _score_with_context(model, frames: np.ndarray, ctx) -> np.ndarray:
    out = [float(model.reset([0], [ctx], frames[:1]).progress[0])]
    for t in range(1, len(frames)):
        out.append(float(model.predict(frames[t : t + 1], [0]).progress[0]))
    return np.array(out)


def prefill_replay(algo, tr: dict) -> int:
    """Add demo transitions to an off-policy algorithm's replay buffer, n_envs at a time."""
    n = algo.n_envs
    count = (len(tr["obs"]) // n) * n
    for s in range(0, count, n):
        sl = slice(s, s + n)
        algo.replay_buffer.add(
            tr["obs"][sl],
            tr["next"][sl],
            tr["act"][sl],
            tr["rew"][sl].astype(np.float32),
            tr["done"][sl],
            [{} for _ in range(n)],
        )
    return count


def pretrain_critic(algo, steps: int) -> None:
    """SAC gradient steps on the buffer with the actor frozen (learning rate 0)."""
    from stable_baselines3.common.logger import configure

    algo.set_logger(configure(None, []))
    saved = [g["lr"] for g in algo.actor.optimizer.param_groups]
    for g in algo.actor.optimizer.param_groups:
        g["lr"] = 0.0
    algo.train(gradient_steps=steps, batch_size=algo.batch_size)
    for g, lr in zip(algo.actor.optimizer.param_groups, saved, strict=True):
        g["lr"] = lr
    algo._custom_logger = False  # let learn() set up TensorBoard as usual


def warm_start(cfg, algo, model, ctx) -> dict:
    """BC the actor; for SAC also prefill the replay buffer and pre-train the critic."""
    demos, views = load_demos(cfg.demos, model)
    tr = demo_transitions(demos, views, model, ctx, cfg)
    loss = behaviour_clone(algo.policy, tr["obs"], tr["act"], cfg.bc_epochs)
    info = {"demos": len(demos), "transitions": len(tr["obs"]), "bc_loss": round(loss, 5)}
    if hasattr(algo, "replay_buffer") and algo.replay_buffer is not None:
        info["replay_prefill"] = prefill_replay(algo, tr)
        if cfg.critic_warmup:
            pretrain_critic(algo, cfg.critic_warmup)
            info["critic_warmup_steps"] = cfg.critic_warmup
    log.info("warm start: %s", info)
    return info
