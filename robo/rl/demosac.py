"""SAC fine-tuning from demonstrations without tearing down the behaviour-cloned policy.

``DemoSAC`` is stable-baselines3's SAC with three additions, all off when no
demonstrations are given:

* **Demonstrations kept apart** from the replay buffer and mixed into every minibatch at a
  fixed share (``demo_ratio``, symmetric sampling as in RLPD), so that they are never
  evicted and keep anchoring the critic however long training runs.
* **A behaviour-cloning term** in the actor loss on the demonstration share of the batch:
  ``bc_weight * |mu(s_demo) - a_demo|^2``, with the SAC term divided by the batch's mean
  ``|Q|`` (``q_normalize``, as in TD3+BC) so that the weight does not depend on the
  reward's scale; with ``q_filter`` only where the critic rates the demonstrated action
  above the actor's (Nair et al. 2018); the actor
  improves on the demonstrations' behaviour instead of drifting off it while the critic is
  still poor.
* **Self-imitation** (``add_self_demos``), optional: the policy's own successful training
  episodes join the behaviour-cloning term beside the demonstrations (success-filtered
  BC, as in self-imitation learning, Oh et al. 2018). The BC term otherwise pins the
  actor to the few demonstrations; with it, every success the policy finds widens what
  it imitates to the states it actually visits.
* **Critic-only updates** (``train(..., critic_only=True)``) for pre-training the critic on
  the demonstrations with the actor frozen before RL starts, and an **actor delay**
  (``actor_delay``): for the first environment steps of RL only the critic learns, from the
  demonstrations and the cloned policy's own rollouts, so that the actor first moves on a
  critic that has seen the states the policy visits rather than the demonstrations only.
* **Critic ensembles** (``n_critics`` in ``policy_kwargs``, ``critic_subset``), optional:
  the TD target takes the minimum over a random subset of the ensemble (REDQ, Chen et al.
  2021; RLPD), the actor maximises the ensemble's mean. With a higher update-to-data
  ratio this keeps the critic's over-estimation in check while it learns from few samples.
* **Bounded TD targets** (``q_bounds``), optional: the target is clipped to the range the
  discounted return can take. With sparse or potential-shaped rewards that range is known
  (the shaping terms telescope), and clipping to it stops the critic's extrapolation from
  feeding on itself at high update-to-data ratios.
* **Per-state bounds under pbrs** (``potential_bounds``), optional: a potential-shaped
  value is the sparse one minus the potential (Wiewiora 2003), so each bootstrapped value
  is clipped to ``[lo - Phi(s'), hi - Phi(s')]`` with ``(lo, hi)`` the sparse return's range
  and ``Phi(s')`` the transition's next-state potential (the demonstrations' ``next_phi``
  and the replay buffer's, :class:`robo.deferred_reward.PotentialReplayBuffer`): as tight
  as sparse's own bound, where the global pbrs range is a whole potential wider.
* **Advantage-weighted actor** (``actor_update="awac"``), optional: in place of SAC's
  reparameterised actor loss, the actor maximises the log-likelihood of the batch's own
  actions (demonstrations and replay) weighted by ``exp(A / awac_beta)``, with the advantage
  ``A = Q(s, a) - Q(s, mu(s))`` from the same critics (AWAC, Nair et al. 2020; AWR, Peng et
  al. 2019). The actor can only move toward actions it has seen do better, never to where
  the critic extrapolates, so an over-estimating critic cannot pull it off the data; the
  exploration noise is fitted by the same weighted likelihood (no entropy tuning). With
  ``awac_advantage="return"`` the advantage is the batch's own n-step return instead of
  the critic's: under potential shaping, the progress an action led to (see ``_awac_loss``).
* **Imitation-bootstrapped RL** (``ibrl``, Hu et al. 2023), optional: a frozen copy of the
  cloned actor stays beside the RL actor. Every action, in training and evaluation, is
  whichever of the two proposals the critic rates higher, and the TD target bootstraps
  from the better of the two at the next state. The policy starts as good as the clone
  and the RL actor only takes over where the critic has learned it does better.
* **Residual RL** (``residual_scale``), optional: a frozen copy of the cloned actor is the
  base policy and the RL actor learns a bounded correction to it, ``a = clip(mu_bc(s) +
  residual_scale * pi(s))`` (residual policy learning, Silver et al. 2018; Policy
  Decorator, Yuan et al. 2024). The actor starts at a zero correction, so RL begins exactly
  at the clone and can never move further from it than the scale allows, per action
  dimension, however wrong the critic is. The critic rates executed actions, the BC term
  compares executed actions with the demonstrations'.
* **Flip exploration** (``flip_prob``, ``flip_dims``), optional: in training rollouts,
  each decision flips the sign of the given action dimensions (a gripper command) with
  probability ``flip_prob``; the flipped action is what runs and what the buffer stores.
  A cloned gripper command saturates at +-1, where Gaussian noise never opens or closes
  the gripper; a policy that stalls where the expert switched (close at the cube, open at
  the goal) then never tries the switch. Evaluation (deterministic) never flips.
* **No entropy in the TD target** (``backup_entropy=False``), optional: the critic learns
  the plain return of the policy and the entropy term stays in the actor's loss only (as
  jaxrl's and RLPD's ``backup_entropy``). The bounds above are ranges of the return; a soft
  value adds ``-alpha * log pi`` per step, up to ``alpha * H / (1 - gamma)`` (about 280
  at SAC's initial ``alpha = 1`` on 4 action dimensions), so with the entropy backed up a
  clipped target from scratch sits at the upper bound whatever the reward.

Everything else (entropy tuning, target networks, logging) is SAC's.
"""

from __future__ import annotations

import copy

import numpy as np
import torch as th
import torch.nn.functional as F
from stable_baselines3 import SAC
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import SACPolicy
from torch import nn


class LayerNormSACPolicy(SACPolicy):
    """SAC's policy with LayerNorm after every hidden layer of the critics (as in RLPD,
    Ball et al. 2023): it bounds the Q-values the critic can extrapolate to actions far from
    the data, which keeps a critic trained on few demonstrations from blowing up."""

    def make_critic(self, features_extractor=None) -> ContinuousCritic:
        critic = super().make_critic(features_extractor)
        for idx, q_net in enumerate(critic.q_networks):
            layers = []
            for layer in q_net:
                layers.append(layer)
                if isinstance(layer, nn.Linear) and layer.out_features != 1:
                    layers.append(nn.LayerNorm(layer.out_features))
            normed = nn.Sequential(*layers).to(self.device)
            critic.add_module(f"qf{idx}", normed)
            critic.q_networks[idx] = normed
        return critic


class DemoSAC(SAC):
    """SAC with demonstrations mixed into every batch and a BC term on the actor."""

    def __init__(
        self,
        *args,
        demo_ratio: float = 0.25,
        bc_weight: float = 1.0,
        q_normalize: bool = False,
        q_filter: bool = False,
        ibrl: bool = False,
        critic_subset: int = 0,
        q_bounds: tuple[float, float] | None = None,
        potential_bounds: tuple[float, float] | None = None,
        actor_delay: int = 0,
        actor_update: str = "sac",
        awac_beta: float = 0.1,
        awac_max_weight: float = 20.0,
        awac_advantage: str = "critic",
        awac_normalize: bool = False,
        residual_scale: float = 0.0,
        flip_prob: float = 0.0,
        flip_dims: tuple[int, ...] = (),
        backup_entropy: bool = True,
        **kwargs,
    ):
        self.backup_entropy = bool(backup_entropy)
        if not 0.0 <= flip_prob < 1.0:
            raise ValueError(f"flip_prob={flip_prob} must lie in [0, 1)")
        self.flip_prob, self.flip_dims = float(flip_prob), tuple(int(d) for d in flip_dims)
        if self.flip_prob and not self.flip_dims:
            raise ValueError("flip_prob needs flip_dims: the action dimensions to flip")
        if residual_scale < 0:
            raise ValueError(f"residual_scale={residual_scale} must be at least 0 (0: off)")
        self.residual_scale = float(residual_scale)
        if self.residual_scale and (ibrl or actor_update != "sac"):
            raise ValueError("residual_scale works with SAC's own actor update, without ibrl")
        self.awac_normalize = bool(awac_normalize)
        if awac_advantage not in ("critic", "return"):
            raise ValueError(f"awac_advantage={awac_advantage!r}: use critic or return")
        self.awac_advantage = awac_advantage
        if actor_update not in ("sac", "awac"):
            raise ValueError(f"actor_update={actor_update!r}: use sac or awac")
        if awac_beta <= 0 or awac_max_weight <= 0:
            raise ValueError("awac_beta and awac_max_weight must be positive")
        self.actor_update = actor_update
        self.awac_beta, self.awac_max_weight = float(awac_beta), float(awac_max_weight)
        if q_bounds is not None and not q_bounds[0] < q_bounds[1]:
            raise ValueError(f"q_bounds={q_bounds} must be (low, high) with low < high")
        self.q_bounds = None if q_bounds is None else (float(q_bounds[0]), float(q_bounds[1]))
        if potential_bounds is not None and not potential_bounds[0] < potential_bounds[1]:
            raise ValueError(f"potential_bounds={potential_bounds} must be (low, high), low < high")
        self.potential_bounds = (
            None if potential_bounds is None else tuple(float(b) for b in potential_bounds)
        )
        self.ibrl = bool(ibrl)
        self.critic_subset = int(critic_subset)
        if actor_delay < 0:
            raise ValueError(f"actor_delay={actor_delay} must be at least 0")
        self.actor_delay = int(actor_delay)
        self.bc_actor = None
        super().__init__(*args, **kwargs)
        self.q_filter = bool(q_filter)
        self.q_normalize = bool(q_normalize)
        if not 0.0 <= demo_ratio < 1.0:
            raise ValueError(f"demo_ratio={demo_ratio} must lie in [0, 1)")
        self.demo_ratio, self.bc_weight = float(demo_ratio), float(bc_weight)
        self.demos: dict[str, th.Tensor] | None = None
        self.self_demos: dict[str, th.Tensor] | None = None
        self.max_self_demos = 50_000

    def add_self_demos(self, obs: np.ndarray, act: np.ndarray) -> None:
        """Append one successful episode's ``(obs, action)`` pairs to the BC term's data
        (oldest dropped past ``max_self_demos``); actions in the policy's [-1, 1] scale."""
        new = {
            "obs": th.as_tensor(np.asarray(obs, np.float32), device=self.device),
            "act": th.as_tensor(np.clip(np.asarray(act, np.float32), -1, 1), device=self.device),
        }
        if self.self_demos is not None:
            new = {
                k: th.cat([self.self_demos[k], v])[-self.max_self_demos :] for k, v in new.items()
            }
        self.self_demos = new

    def set_demos(self, tr: dict[str, np.ndarray]) -> None:
        """Demonstration transitions: ``obs, act, rew, next, done`` arrays (see warmstart)."""

        def t(x):
            return th.as_tensor(np.asarray(x, np.float32), device=self.device)

        act = np.clip(tr["act"], -1.0, 1.0)
        self.demos = {
            "obs": t(tr["obs"]),
            "act": t(act),
            "rew": t(tr["rew"]).reshape(-1, 1),
            "next": t(tr["next"]),
            "done": t(tr["done"]).reshape(-1, 1),
            # discount of the bootstrapped value (gamma^n for n-step returns)
            "disc": t(tr.get("disc", np.full(len(act), self.gamma))).reshape(-1, 1),
            # 1 where the action is the expert's: the BC term skips scripted slips
            "clone": t(tr.get("clone", np.ones(len(act)))).reshape(-1, 1),
            # potential of the state whose value is bootstrapped (per-state pbrs bounds)
            "next_phi": t(tr.get("next_phi", np.full(len(act), np.nan))).reshape(-1, 1),
        }

    # ----------------------------------------------------------------- IBRL
    def _setup_model(self) -> None:
        super()._setup_model()
        n = len(self.critic.q_networks)
        if not 0 <= self.critic_subset <= n:
            raise ValueError(f"critic_subset={self.critic_subset} must lie in [0, n_critics={n}]")
        if self._keeps_clone:  # IBRL's proposal or the residual's base; load() restores it
            self.bc_actor = copy.deepcopy(self.actor).requires_grad_(False).eval()

    @property
    def _keeps_clone(self) -> bool:
        return self.ibrl or bool(getattr(self, "residual_scale", 0.0))

    def freeze_bc_actor(self, residual_std: float = 0.2) -> None:
        """Freeze the current actor (just behaviour-cloned) as IBRL's imitation proposal or
        the residual's base policy. For the residual, the actor then starts over at a zero
        correction everywhere (its output layer's weights zeroed; the hidden layers keep the
        clone's features) with exploration noise ``residual_std`` (pre-squashing)."""
        if not self._keeps_clone:
            return
        self.bc_actor.load_state_dict(self.actor.state_dict())
        if self.residual_scale:
            with th.no_grad():
                self.actor.mu.weight.zero_()
                self.actor.mu.bias.zero_()
                self.actor.log_std.weight.zero_()
                self.actor.log_std.bias.fill_(float(np.log(residual_std)))

    def _get_torch_save_params(self):
        state_dicts, other = super()._get_torch_save_params()
        return (state_dicts + ["bc_actor"] if self._keeps_clone else state_dicts), other

    def _compose(self, obs: th.Tensor, residual: th.Tensor) -> th.Tensor:
        """The executed action (in [-1, 1]): the base's plus the scaled residual, clipped;
        the residual itself when the mode is off."""
        if not self.residual_scale:
            return residual
        with th.no_grad():
            base = self.bc_actor(obs, deterministic=True)
        return (base + self.residual_scale * residual).clamp(-1.0, 1.0)

    def _q_value(self, critic, obs: th.Tensor, act: th.Tensor) -> th.Tensor:
        """The critic's rating of an action for the actor and for IBRL's choice: the minimum
        of a pair (SAC's clipped double Q), the mean of a larger ensemble (REDQ)."""
        q = th.cat(critic(obs, act), dim=1)
        return q.mean(dim=1, keepdim=True) if q.shape[1] > 2 else q.min(dim=1, keepdim=True)[0]

    def _q_target(self, critic, obs: th.Tensor, act: th.Tensor) -> th.Tensor:
        """Bootstrap value: the minimum over all critics, or over a random subset of them."""
        q = th.cat(critic(obs, act), dim=1)
        if 0 < self.critic_subset < q.shape[1]:
            idx = th.randperm(q.shape[1], device=q.device)[: self.critic_subset]
            q = q[:, idx]
        return q.min(dim=1, keepdim=True)[0]

    def _select(self, obs: th.Tensor, a_rl: th.Tensor, a_bc: th.Tensor) -> th.Tensor:
        """Per row, the proposal the critic rates higher."""
        use_bc = self._q_value(self.critic, obs, a_bc) > self._q_value(self.critic, obs, a_rl)
        return th.where(use_bc, a_bc, a_rl)

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        if not self._keeps_clone:
            return super().predict(observation, state, episode_start, deterministic)
        self.policy.set_training_mode(False)
        obs, vectorized = self.policy.obs_to_tensor(observation)
        with th.no_grad():
            a = self.actor(obs, deterministic)
            if self.ibrl:
                a = self._select(obs, a, self.bc_actor(obs, deterministic))
            a = self._compose(obs, a)
        action = self.policy.unscale_action(a.cpu().numpy())
        return (action if vectorized else action[0]), state

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        action, buffer_action = super()._sample_action(learning_starts, action_noise, n_envs)
        if self.flip_prob:
            rows = np.flatnonzero(self._flip_rng.random(n_envs) < self.flip_prob)
            if rows.size:
                buffer_action = np.array(buffer_action, copy=True)
                buffer_action[np.ix_(rows, self.flip_dims)] *= -1.0
                action = self.policy.unscale_action(buffer_action)
        return action, buffer_action

    @property
    def _flip_rng(self) -> np.random.Generator:
        if getattr(self, "_flip_gen", None) is None:
            self._flip_gen = np.random.default_rng(self.seed)
        return self._flip_gen

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "bc_actor", "_flip_gen"]

    def _awac_loss(
        self, obs: th.Tensor, act: th.Tensor, ret: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor]:
        """AWAC's actor loss on a batch: ``-mean(w * log pi(a|s))``, ``w = exp(A / beta)``
        clipped at ``awac_max_weight`` and divided by its batch mean (the loss's scale then
        does not depend on the reward's). The advantage ``A`` is the critic's
        ``Q(s, a) - Q(s, mu(s))`` (``awac_advantage="critic"``) or, critic-free, the batch's
        own (n-step) return ``ret`` (``"return"``): with potential-shaped rewards that return
        telescopes to ``sum gamma^k r_success + gamma^n Phi(s_t+n) - Phi(s_t)``, the progress
        the action led to over the next n steps with the potential as the baseline (AWR with
        the progress model standing in for the value function). Returns the loss and the
        weights (for logging)."""
        with th.no_grad():
            if self.awac_advantage == "return":
                adv = ret
            else:
                adv = self._q_value(self.critic, obs, act) - self._q_value(
                    self.critic, obs, self.actor(obs, deterministic=True)
                )
            if self.awac_normalize:  # beta in units of the batch's advantage spread
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            w = th.exp(adv / self.awac_beta).clamp(max=self.awac_max_weight)
            w = w / w.mean().clamp(min=1e-8)
        mean, log_std, kwargs = self.actor.get_action_dist_params(obs)
        dist = self.actor.action_dist.proba_distribution(mean, log_std, **kwargs)
        # squashed actions at exactly +-1 (a saturated gripper) have no finite pre-image
        logp = dist.log_prob(act.clamp(-0.999, 0.999)).reshape(-1, 1)
        return -(w * logp).mean(), w

    # ----------------------------------------------------------------- batches and updates
    def _batch(self, batch_size: int, demos_only: bool):
        """(obs, act, rew, next, done, discount, next_phi, n_demo, clone): demos first, then
        replay; ``next_phi`` the next-state potentials (NaN where not kept); ``clone``
        (n_demo, 1) weights the demo rows in the BC term."""
        n_demo, clone = 0, None
        if self.demos is not None:
            n_demo = batch_size if demos_only else int(round(batch_size * self.demo_ratio))
        parts = []
        if n_demo:
            idx = th.randint(len(self.demos["obs"]), (n_demo,), device=self.device)
            d = self.demos
            clone = d["clone"][idx]
            disc = d["disc"][idx]
            parts.append(
                (
                    *(d[k][idx] for k in ("obs", "act", "rew", "next", "done")),
                    disc,
                    d["next_phi"][idx],
                )
            )
        n_replay = batch_size - n_demo
        if n_replay:
            r = self.replay_buffer.sample(n_replay, env=self._vec_normalize_env)
            disc = (
                r.discounts
                if r.discounts is not None
                else th.full((n_replay, 1), self.gamma, device=self.device)
            )
            phi = getattr(r, "next_potentials", None)
            if phi is None:
                phi = th.full((n_replay, 1), float("nan"), device=self.device)
            parts.append(
                (r.observations, r.actions, r.rewards, r.next_observations, r.dones, disc, phi)
            )
        cols = [th.cat([p[i] for p in parts]) for i in range(7)]
        return (*cols, n_demo, clone)

    def _bound_next_value(self, next_q: th.Tensor, next_phi: th.Tensor) -> th.Tensor:
        """Clip bootstrapped pbrs values to ``[lo - Phi(s'), hi - Phi(s')]`` (see the module
        docstring); rows without a known potential keep the global bound only."""
        if self.potential_bounds is None:
            return next_q
        lo, hi = self.potential_bounds
        known = ~th.isnan(next_phi)
        phi = th.where(known, next_phi, th.zeros_like(next_phi))
        bounded = th.minimum(th.maximum(next_q, lo - phi), hi - phi)
        return th.where(known, bounded, next_q)

    def train(self, gradient_steps: int, batch_size: int = 64, critic_only: bool = False) -> None:
        """SAC's updates with the additions above. ``critic_only``: critic updates on the
        demonstrations alone (pre-training); within the first ``actor_delay`` env steps the
        critic learns from the usual demo/replay mix while the actor and entropy stay put."""
        actor_frozen = critic_only or self.num_timesteps < self.actor_delay
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]
        self._update_learning_rate(optimizers)
        actor_losses, critic_losses, bc_losses, ent_coefs, q_means = [], [], [], [], []
        awac_weights = []
        for step in range(gradient_steps):
            obs, act, rew, nxt, done, disc, next_phi, n_demo, clone = self._batch(
                batch_size, demos_only=critic_only
            )
            if self.actor_update == "sac":  # AWAC's actor needs no sample from the policy
                actions_pi, log_prob = self.actor.action_log_prob(obs)
                log_prob = log_prob.reshape(-1, 1)
                actions_pi = self._compose(obs, actions_pi)
            if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                ent_coef = th.exp(self.log_ent_coef.detach())
                if not actor_frozen and self.actor_update == "sac":
                    ent_loss = -(
                        self.log_ent_coef * (log_prob + self.target_entropy).detach()
                    ).mean()
                    self.ent_coef_optimizer.zero_grad()
                    ent_loss.backward()
                    self.ent_coef_optimizer.step()
            else:
                ent_coef = self.ent_coef_tensor
            ent_coefs.append(ent_coef.item())

            with th.no_grad():
                next_actions, next_log_prob = self.actor.action_log_prob(nxt)
                next_actions = self._compose(nxt, next_actions)
                next_q = self._q_target(self.critic_target, nxt, next_actions)
                if self.backup_entropy:  # the soft value (SAC); else the plain return's
                    next_q = next_q - ent_coef * next_log_prob.reshape(-1, 1)
                if self.ibrl:  # bootstrap from the better of the two proposals
                    next_bc = self.bc_actor(nxt, deterministic=True)
                    next_q = th.maximum(next_q, self._q_target(self.critic_target, nxt, next_bc))
                next_q = self._bound_next_value(next_q, next_phi)
                target_q = rew + (1 - done) * disc * next_q
                if self.q_bounds is not None:
                    target_q = target_q.clamp(*self.q_bounds)
            current_q = self.critic(obs, act)
            q_means.append(current_q[0].mean().item())
            critic_loss = 0.5 * sum(F.mse_loss(q, target_q) for q in current_q)
            critic_losses.append(critic_loss.item())
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            if not actor_frozen and self.actor_update == "awac":
                actor_loss, w = self._awac_loss(obs, act, rew)
                awac_weights.append(w.max().item())
            elif not actor_frozen:
                q_pi = self._q_value(self.critic, obs, actions_pi)
                actor_loss = (ent_coef * log_prob - q_pi).mean()
                if self.q_normalize and n_demo and self.bc_weight > 0:
                    # TD3+BC: the Q term in units of |Q|, so bc_weight means the same
                    # whatever the reward's scale
                    actor_loss = actor_loss / (q_pi.abs().mean().detach() + 1e-6)
            if not actor_frozen:
                if n_demo and self.bc_weight > 0:
                    bc_obs, bc_act = obs[:n_demo], act[:n_demo]
                    if self.self_demos is not None:  # as many rows of the policy's successes
                        j = th.randint(len(self.self_demos["obs"]), (n_demo,), device=self.device)
                        bc_obs = th.cat([bc_obs, self.self_demos["obs"][j]])
                        bc_act = th.cat([bc_act, self.self_demos["act"][j]])
                        clone = th.cat([clone, th.ones_like(clone)])
                    mu = self._compose(bc_obs, self.actor(bc_obs, deterministic=True))
                    err = ((mu - bc_act) ** 2).mean(dim=1, keepdim=True)
                    if self.q_filter:  # clone a demo action only where the critic rates it higher
                        with th.no_grad():
                            q_demo = self._q_value(self.critic, bc_obs, bc_act)
                            q_mu = self._q_value(self.critic, bc_obs, mu)
                        err = err * (q_demo > q_mu).float()
                    bc = (err * clone).sum() / clone.sum().clamp(min=1.0)
                    actor_loss = actor_loss + self.bc_weight * bc
                    bc_losses.append(bc.item())
                actor_losses.append(actor_loss.item())
                self.actor.optimizer.zero_grad()
                actor_loss.backward()
                self.actor.optimizer.step()

            if step % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", float(np.mean(ent_coefs)))
        self.logger.record("train/critic_loss", float(np.mean(critic_losses)))
        # the critic's mean value on the batch: above the return's range means over-estimation
        self.logger.record("train/q_mean", float(np.mean(q_means)))
        if actor_losses:
            self.logger.record("train/actor_loss", float(np.mean(actor_losses)))
        if bc_losses:
            self.logger.record("train/bc_loss", float(np.mean(bc_losses)))
        if awac_weights:  # how peaked the advantage weights are (1: plain cloning of the batch)
            self.logger.record("train/awac_max_weight", float(np.mean(awac_weights)))
