"""Advantage-weighted regression from a cloned start: the critic-free learner (``--algo awr``).

AWR (Peng et al. 2019; as RWR before it) improves a policy by supervised learning on its own
experience: every few episodes the actor is refitted to the demonstrations and all episodes so
far, each action weighted by ``exp(A / beta)`` of its advantage. Here the advantage is the
Monte Carlo return of the run's reward from that step, with no learned value baseline:

* ``sparse``: ``gamma^k`` for a success ``k`` steps later, else 0; only actions of successful
  episodes get weight, so the update is success-filtered cloning (self-imitation);
* ``pbrs``: the sparse return plus ``gamma^(T-t) Phi(s_T) - Phi(s_t)``: the potential is the
  baseline, so actions that made progress weigh by how much, in failed episodes too (at a
  success ``Phi = 0``, as everywhere under pbrs).

Transitions whose return is not positive get no weight. The actor is refitted from fresh
weights each round (``refit``): a fit to the whole data, never a drift from the last one. The
exploration noise stays at the clone's ``bc_std``. Nothing here trains a critic: the plateau
every TD learner showed on these tasks (see the README) came from critics that generalise
poorly from about a hundred episodes.
"""

from __future__ import annotations

import numpy as np
import torch as th

from robo.rl.demosac import DemoSAC
from robo.rl.warmstart import clone_loss


def mc_returns(rew: np.ndarray, ends: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted return from every transition to the end of its episode (``ends[t]``: the
    episode ends after transition ``t``; an unfinished episode ends at the last row)."""
    rew = np.asarray(rew, np.float64).reshape(-1)
    ends = np.asarray(ends, bool).reshape(-1)
    out = np.zeros(len(rew))
    acc = 0.0
    for t in range(len(rew) - 1, -1, -1):
        if ends[t]:
            acc = 0.0
        acc = rew[t] + gamma * acc
        out[t] = acc
    return out


def awr_weights(returns: np.ndarray, beta: float, max_weight: float) -> np.ndarray:
    """``min(exp(G / beta), max_weight)`` where the return ``G`` is positive, else 0."""
    g = np.asarray(returns, np.float64)
    return np.where(g > 0, np.minimum(np.exp(np.minimum(g, 50.0 * beta) / beta), max_weight), 0.0)


class AWR(DemoSAC):
    """Critic-free advantage-weighted regression on a SAC policy (the same networks, saving and
    loading as ``DemoSAC``). SB3 collects ``train_freq`` episodes, then ``train`` refits the
    actor with ``gradient_steps`` minibatches drawn in proportion to the AWR weights."""

    def __init__(
        self,
        *args,
        awr_beta: float = 0.1,
        awr_max_weight: float = 20.0,
        awr_refit: bool = True,
        awr_std: float = 0.2,
        awr_lr: float = 1e-3,
        **kwargs,
    ):
        if awr_beta <= 0 or awr_max_weight <= 0 or awr_std <= 0 or awr_lr <= 0:
            raise ValueError("awr_beta, awr_max_weight, awr_std and awr_lr must be positive")
        self.awr_beta, self.awr_max_weight = float(awr_beta), float(awr_max_weight)
        self.awr_refit, self.awr_std, self.awr_lr = bool(awr_refit), float(awr_std), float(awr_lr)
        self.demo_returns: dict[str, np.ndarray] | None = None
        self.awr_history: list[dict] = []
        super().__init__(*args, **kwargs)

    def set_demo_returns(self, obs: np.ndarray, act: np.ndarray, returns: np.ndarray) -> None:
        """The demonstrations' transitions with their Monte Carlo returns under the run's reward
        (actions in the policy's [-1, 1] scale)."""
        self.demo_returns = {
            "obs": np.asarray(obs, np.float32),
            "act": np.clip(np.asarray(act, np.float32), -1.0, 1.0),
            "ret": np.asarray(returns, np.float64).reshape(-1),
        }

    def replay_returns(self) -> dict[str, np.ndarray]:
        """The replay buffer's transitions with the Monte Carlo return of each under the
        rewards stored with it, per env, flattened."""
        rb = self.replay_buffer
        n = rb.buffer_size if rb.full else rb.pos
        if rb.full:  # oldest first
            order = np.r_[rb.pos : rb.buffer_size, 0 : rb.pos]
        else:
            order = np.arange(n)
        obs, act, ret = [], [], []
        for e in range(rb.n_envs):
            ends = rb.dones[order, e].astype(bool)
            ret.append(mc_returns(rb.rewards[order, e], ends, self.gamma))
            obs.append(rb.observations[order, e].reshape(n, -1))
            act.append(rb.actions[order, e].reshape(n, -1))
        return {"obs": np.concatenate(obs), "act": np.concatenate(act), "ret": np.concatenate(ret)}

    def _reset_actor(self) -> None:
        for module in self.actor.modules():
            if isinstance(module, th.nn.Linear):
                module.reset_parameters()

    def train(self, gradient_steps: int, batch_size: int = 256, critic_only: bool = False) -> None:
        parts = [self.replay_returns()]
        if self.demo_returns is not None:
            parts.insert(0, self.demo_returns)
        data = {k: np.concatenate([p[k] for p in parts]) for k in ("obs", "act", "ret")}
        w = awr_weights(data["ret"], self.awr_beta, self.awr_max_weight)
        kept = int((w > 0).sum())
        record = {"step": int(self.num_timesteps), "transitions": len(w), "weighted": kept}
        if kept == 0 or critic_only:
            self.awr_history.append(record)
            return
        self.policy.set_training_mode(True)
        if self.awr_refit:
            self._reset_actor()
        opt = th.optim.Adam(self.actor.parameters(), lr=self.awr_lr)
        obs = th.as_tensor(data["obs"], device=self.device)
        act = th.as_tensor(data["act"], device=self.device).clamp(-0.999, 0.999)
        prob = th.as_tensor(w / w.sum(), device=self.device)
        loss = th.zeros(())
        for _ in range(gradient_steps):
            idx = th.multinomial(prob, batch_size, replacement=True)
            loss, total = clone_loss(self.actor, obs[idx], act[idx], self.awr_std)
            opt.zero_grad()
            total.backward()
            opt.step()
        self.policy.set_training_mode(False)
        self._n_updates += gradient_steps
        record["loss"] = round(float(loss.detach()), 5)
        self.awr_history.append(record)
        if getattr(self, "_logger", None) is not None:  # set up by learn()
            self.logger.record("train/awr_loss", record["loss"])
            self.logger.record("train/awr_weighted", kept)
            self.logger.record("train/awr_transitions", len(w))
            self.logger.record("train/n_updates", self._n_updates)

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["demo_returns", "awr_history"]
