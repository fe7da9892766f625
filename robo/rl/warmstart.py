"""Behaviour-cloning warm start from demonstrations, and demo-seeded critics for SAC."""

from __future__ import annotations

import logging

import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from robo.errors import RoboError
from robo.shaping import shaped_reward

log = logging.getLogger(__name__)


def load_demos(url: str, model) -> tuple[list, tuple]:
    """The store's demonstrations: successful expert and recovery (``recover``) episodes."""
    from robo.reward.data import is_training_demo
    from robo.store import EpisodeStore

    store = EpisodeStore.open(url)
    demos = [
        store.episode(i)
        for i in range(len(store))
        if is_training_demo(store.episode_meta(i), cloning=True)
    ]
    if not demos:
        raise RoboError(
            f"{url} has no successful expert demonstrations for the warm start: record some with "
            "`robo collect --policy expert` (or `--policy recover`)"
        )
    return demos, store.views


class ObsNormalizer(BaseFeaturesExtractor):
    """Fixed affine normalisation of flat observations, ``clip((x - mean) / std)``, optionally
    of a subset of them (``keep``: the indices the networks see, in order), after appending
    relative positions ``obs[a] - obs[b]`` for the pairs in ``relative`` (``keep`` indices past
    the observation's length pick those, in order; see ``sim.relative_obs``).

    The statistics come from the demonstrations and are buffers of the policy (saved and
    loaded with it). Raw state observations mix units and scales (positions in metres,
    quaternions, velocities): a few millimetres between "at the cube" and "not yet" is a
    tiny input change to an MLP with default initialisation, and behaviour cloning from
    few demonstrations fits it poorly (pick-place, 40 demos: 0.2 success raw, 0.7
    normalised). Clipping keeps states far outside the demonstrations' range bounded.
    """

    def __init__(self, observation_space, mean, std, clip: float = 5.0, keep=None, relative=None):
        n_obs = int(np.prod(observation_space.shape))
        relative = [(int(a), int(b)) for a, b in (relative or ())]
        if any(not (0 <= i < n_obs) for pair in relative for i in pair):
            raise RoboError(
                f"relative observation pairs {relative} must index 0..{n_obs - 1} "
                "(check the env's RELATIVE_OBS against its observation)"
            )
        n_ext = n_obs + len(relative)
        keep = list(range(n_ext)) if keep is None else [int(i) for i in keep]
        if not keep or min(keep) < 0 or max(keep) >= n_ext or len(set(keep)) != len(keep):
            raise RoboError(
                f"observation indices {keep} must be distinct and lie in 0..{n_ext - 1} "
                "(check --policy_obs against the env's observation)"
            )
        super().__init__(observation_space, len(keep))
        mean = np.asarray(mean, np.float32).reshape(-1)
        std = np.asarray(std, np.float32).reshape(-1)
        if mean.shape != (n_ext,) or std.shape != mean.shape or np.any(std <= 0):
            raise RoboError(
                f"observation statistics of shape {mean.shape}/{std.shape} do not fit observations "
                f"of {n_obs} values and {len(relative)} relative positions (or a std is not "
                "positive)"
            )
        self.register_buffer("mean", torch.as_tensor(mean))
        self.register_buffer("std", torch.as_tensor(std))
        # rebuilt from the saved kwargs on load, so policies saved before they existed still load
        self.register_buffer("keep", torch.as_tensor(keep, dtype=torch.long), persistent=False)
        pairs = torch.as_tensor(relative, dtype=torch.long).reshape(-1, 2)
        self.register_buffer("rel_a", pairs[:, 0].clone(), persistent=False)
        self.register_buffer("rel_b", pairs[:, 1].clone(), persistent=False)
        self.clip = float(clip)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # ``keep`` comes from the kwargs; a copy saved with the weights (as early
        # checkpoints did) is dropped
        state_dict.pop(prefix + "keep", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        x = observations.flatten(1).float()
        if len(self.rel_a):
            x = torch.cat([x, x[:, self.rel_a] - x[:, self.rel_b]], 1)
        x = (x - self.mean) / self.std
        return x.clamp(-self.clip, self.clip)[:, self.keep]


def observation_stats(
    states: np.ndarray, floor: float = 0.1, scenes: np.ndarray | None = None
) -> tuple[list, list]:
    """Per-dimension mean and std of demonstration states (``(N, D)``) for ``ObsNormalizer``.

    ``scenes``: observations at the start of many episodes (``(K, D)``, e.g. ``scene_states``'
    resets). A few demonstrations show the object and goal positions of only a few scenes
    (one demo: a single position, a std of zero), so the policy would see every other
    scene's positions as far outliers, clipped to the same value: it could not tell where the
    object is. Each dimension whose spread over the scenes exceeds its spread over the
    demonstrations takes the scenes' mean and std instead.

    A dimension that still barely varies (a padding slot, an orientation the expert never
    changes) gets a std of at least ``floor`` times the median std of the varying
    dimensions, so that the policy's own deviations there are not blown up.
    """
    states = np.asarray(states, np.float64).reshape(len(states), -1)
    if len(states) < 2 or not np.all(np.isfinite(states)):
        raise RoboError(
            "observation statistics need at least 2 finite demonstration states: check --demos"
        )
    mean, std = states.mean(0), states.std(0)
    if scenes is not None:
        scenes = np.asarray(scenes, np.float64).reshape(len(scenes), -1)
        if scenes.shape[1] != states.shape[1] or not np.all(np.isfinite(scenes)):
            raise RoboError(
                f"scene observations of {scenes.shape[1]} values do not fit the demonstrations' "
                f"{states.shape[1]} (or are not finite)"
            )
        wider = scenes.std(0) > std
        mean = np.where(wider, scenes.mean(0), mean)
        std = np.where(wider, scenes.std(0), std)
    varying = std[std > 1e-8]
    std = np.maximum(std, floor * float(np.median(varying)) if varying.size else 1.0)
    return mean.tolist(), std.tolist()


def scene_states(make_env, n: int = 64, seed: int = 10_000_000) -> np.ndarray:
    """Flat first observations of ``n`` seeded resets of ``make_env()`` (seeds from ``seed``,
    far from training and evaluation seeds): how the scenes vary, for ``observation_stats``."""
    env = make_env()
    try:
        return np.stack(
            [np.asarray(env.reset(seed=seed + k)[0], np.float64).reshape(-1) for k in range(n)]
        )
    finally:
        env.close()


def extend_obs(states: np.ndarray, relative=()) -> np.ndarray:
    """Flat observations (``(N, ...)``) followed by the relative positions ``obs[a] - obs[b]``
    of the pairs in ``relative``, as ``ObsNormalizer`` sees them."""
    states = np.asarray(states, np.float64).reshape(len(states), -1)
    if not relative:
        return states
    a, b = np.asarray(relative, int).T
    return np.concatenate([states, states[:, a] - states[:, b]], 1)


def obs_norm_kwargs(demos: list, keep=None, scenes: np.ndarray | None = None, relative=()) -> dict:
    """``policy_kwargs`` that put an ``ObsNormalizer`` fitted to ``demos`` (and ``scenes``, see
    ``observation_stats``) in front of every network (``keep``: the observation indices the
    networks see; ``None``: all; ``relative``: pairs of indices whose differences follow the
    observation).

    A relative position whose first index is zero in every demonstration and scene state is
    left out of ``keep``: that is an object slot the task does not use, and "slot - hand"
    would be the hand's absolute position."""
    states = extend_obs(np.concatenate([ep.states for ep in demos]))
    everything = states if scenes is None else np.concatenate([states, extend_obs(scenes)])
    mean, std = observation_stats(
        extend_obs(states, relative),
        scenes=None if scenes is None else extend_obs(scenes, relative),
    )
    kwargs = {"mean": mean, "std": std}
    if relative:
        kwargs["relative"] = [list(p) for p in relative]
        if keep is not None:
            n_obs = states.shape[1]
            used = np.abs(everything).max(0) > 0
            keep = [
                i
                for i in keep
                if not 0 <= i - n_obs < len(relative) or used[relative[i - n_obs][0]]
            ]  # indices out of range stay, for ObsNormalizer's error
    if keep is not None:
        kwargs["keep"] = list(keep)  # ObsNormalizer checks and converts them
    return {"features_extractor_class": ObsNormalizer, "features_extractor_kwargs": kwargs}


def check_demo_states(demos: list, observation_space, url: str, env_id: str) -> None:
    """One-line error when the demonstrations' states are not this env's observations
    (a store recorded before the observation layout changed, or of another env)."""
    want = int(np.prod(observation_space.shape))
    for ep in demos:
        if ep.states.ndim != 2 or ep.states.shape[1] != want:
            raise RoboError(
                f"{url}: its demonstrations' states have {ep.states.shape[1:]} values, {env_id}'s "
                f"observations {want}: re-record them with `robo collect --env {env_id}` "
                "(the observation layout may have changed since they were recorded)"
            )


def clone_mask(ep) -> np.ndarray:
    """Per transition of a demo, whether its action is the expert's (False on scripted slips)."""
    mask = np.ones(len(ep) - 1, bool)
    perturbed = np.asarray(ep.extra.get("perturbed", []), int)
    mask[perturbed[perturbed < len(mask)]] = False
    return mask


def clone_loss(actor, obs: torch.Tensor, act: torch.Tensor, std: float):
    """A SAC actor's cloning loss on a batch: ``(mse, total)``, the squared error of its
    deterministic action ``tanh(mean)`` to ``act`` and that plus its log-std regressed to
    ``log(std)`` (the exploration noise cloning leaves it with)."""
    mean, log_std, _ = actor.get_action_dist_params(obs)
    mse = ((torch.tanh(mean) - act) ** 2).mean()
    return mse, mse + 0.1 * ((log_std - float(np.log(std))) ** 2).mean()


def behaviour_clone(
    policy,
    obs: np.ndarray,
    actions: np.ndarray,
    epochs: int,
    lr: float = 1e-3,
    batch: int = 256,
    std: float = 0.2,
) -> float:
    """Fit the policy's deterministic action to the demonstrations (MSE); returns the final loss.

    The exploration noise is set to ``std`` (pre-squashing) as well: SAC's state-dependent
    log-std is regressed to ``log(std)`` alongside the mean, a PPO policy's log-std parameter
    is set to it. Left at its initial value (std 1) the noise would drown the cloned
    behaviour in the first RL episodes.
    """
    device = policy.device
    o = torch.as_tensor(obs, dtype=torch.float32, device=device)
    a = torch.as_tensor(np.clip(actions, -0.999, 0.999), dtype=torch.float32, device=device)
    actor = getattr(policy, "actor", None)
    fit_std = actor is not None and hasattr(actor, "get_action_dist_params")
    if not fit_std and isinstance(getattr(policy, "log_std", None), torch.nn.Parameter):
        with torch.no_grad():
            policy.log_std.fill_(float(np.log(std)))
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    loss = torch.zeros(())
    for _ in range(epochs):
        for idx in torch.randperm(len(o)).split(batch):
            if fit_std:
                loss, total = clone_loss(actor, o[idx], a[idx], std)
            else:
                loss = total = ((policy._predict(o[idx], deterministic=True) - a[idx]) ** 2).mean()
            opt.zero_grad()
            total.backward()
            opt.step()
    return float(loss.detach())


def n_step_returns(rew, terminated, gamma: float, n: int):
    """n-step returns of one episode's transitions, cut at the episode's end.

    Returns ``(returns, last, discount)``: row t sums ``gamma^k * rew[t + k]`` over the
    ``m = min(n, T - t)`` transitions left and bootstraps from the state after transition
    ``last[t] = t + m - 1`` with ``discount[t] = gamma^m`` (unless ``terminated[last[t]]``).
    The episode ends only at its last transition. Same as SB3's ``NStepReplayBuffer``.
    """
    rew = np.asarray(rew, np.float64)
    T = len(rew)
    last = np.minimum(np.arange(T) + n - 1, T - 1)
    ret = np.zeros(T)
    for k in range(n):
        idx = np.arange(T) + k
        ok = idx <= last
        ret[ok] += gamma**k * rew[idx[ok]]
    return ret, last, gamma ** (last - np.arange(T) + 1).astype(np.float64)


def demo_transitions(demos, views, model, ctx, cfg) -> dict:
    """(obs, action, reward, next_obs, done, discount, clone, next_phi) of all demos, rewarded
    by the run's shaping; with ``cfg.n_step`` above 1 the rewards are n-step returns and
    ``next_obs`` the state n steps on, ``discount`` the factor of its bootstrapped value and
    ``next_phi`` its potential.

    ``clone`` marks the transitions whose action is the expert's: behaviour cloning fits only
    those, while the critic learns from all of them (a recovery demo's slip is a real
    transition into a state the policy must recover from)."""
    n = cfg.n_step
    gamma = cfg.shaping.gamma
    chunk = cfg.action_chunk
    rows = {k: [] for k in ("obs", "act", "rew", "next", "done", "disc", "clone", "next_phi")}
    for ep in demos:
        T = len(ep)
        if getattr(model, "reads_info", False):  # privileged potential (evaluation only)
            phi = np.asarray(ep.privileged_progress, np.float64)
        elif model.views:
            phi = _score_with_context(
                model, ep.frames[:, [views.index(v) for v in model.views]], ctx
            )
        else:
            phi = np.zeros(T)
        if chunk > 1:
            for key, value in _chunk_rows(ep, phi, cfg, chunk).items():
                rows[key].append(value)
            continue
        success = ep.success.astype(float)
        terminated = np.zeros(T - 1, bool)
        terminated[-1] = bool(ep.success[-1])
        r = shaped_reward(
            cfg.shaping.mode,
            cfg.shaping.success_bonus * success[1:],
            phi[:-1],
            phi[1:],
            terminated,
            gamma,
            ep.env_reward[1:],
        )
        ret, last, disc = n_step_returns(r, terminated, gamma, n)
        rows["obs"].append(ep.states[:-1])
        rows["act"].append(ep.actions[:-1])
        rows["rew"].append(ret)
        rows["next"].append(ep.states[1:][last])
        rows["done"].append(terminated[last])
        rows["disc"].append(disc)
        rows["clone"].append(clone_mask(ep))
        rows["next_phi"].append(phi[1:][last])
    return {k: np.concatenate(v) for k, v in rows.items()}


def demo_returns(demos, views, model, ctx, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(obs, action, Monte Carlo return) of the demos' cloned transitions, rewarded by the
    run's shaping (one-step rewards summed to each episode's end, for AWR)."""
    from robo.rl.awr import mc_returns

    obs, act, ret = [], [], []
    for ep in demos:
        tr = demo_transitions([ep], views, model, ctx, cfg)
        ends = np.zeros(len(tr["rew"]), bool)
        ends[-1] = True
        clone = tr["clone"]
        obs.append(tr["obs"][clone])
        act.append(tr["act"][clone])
        ret.append(mc_returns(tr["rew"], ends, cfg.shaping.gamma)[clone])
    return np.concatenate(obs), np.concatenate(act), np.concatenate(ret)


def _chunk_rows(ep, phi: np.ndarray, cfg, k: int) -> dict:
    """One demo's transitions as action chunks (``robo.rl.chunking``): from every step t,
    the next ``k`` actions, rewarded as the chunked env rewards them (shaping with
    ``gamma^k`` between the chunk's first and last state, the env's rewards discounted over
    it, success if any of its steps succeeded) and ending ``m = min(k, T - 1 - t)`` steps on.
    A chunk is cloned only if all its actions are the expert's."""
    from robo.rl.chunking import chunk_actions

    gamma = cfg.shaping.gamma
    T = len(ep)
    t = np.arange(T - 1)
    end = np.minimum(t + k, T - 1)  # index of the chunk's last state
    success = ep.success.astype(bool)
    steps = np.arange(k)
    inside = (t[:, None] + 1 + steps[None, :]) <= end[:, None]  # (T-1, k) steps run
    future = np.minimum(t[:, None] + 1 + steps[None, :], T - 1)
    r_env = (np.where(inside, gamma**steps * ep.env_reward[future], 0.0)).sum(1)
    hit = (inside & success[future]).any(1)
    terminated = (end == T - 1) & bool(ep.success[-1])
    r = shaped_reward(
        cfg.shaping.mode,
        cfg.shaping.success_bonus * hit,
        phi[t],
        phi[end],
        terminated,
        gamma**k,
        r_env,
    )
    mask = clone_mask(ep)
    clone = np.array([mask[a:b].all() for a, b in zip(t, end, strict=True)])
    return {
        "obs": ep.states[:-1],
        "act": chunk_actions(ep.actions[:-1], k),
        "rew": r,
        "next": ep.states[end],
        "done": terminated,
        "disc": np.full(T - 1, gamma**k),
        "clone": clone,
        "next_phi": phi[end],
    }


def _score_with_context(model, frames: np.ndarray, ctx) -> np.ndarray:
    out = [float(model.reset([0], [ctx], frames[:1]).progress[0])]
    for t in range(1, len(frames)):
        out.append(float(model.predict(frames[t : t + 1], [0]).progress[0]))
    return np.array(out)


def cloned_entropy(algo, obs: np.ndarray, samples: int = 8) -> float:
    """Mean entropy (-log pi of sampled actions) of the cloned SAC policy on the demo states.

    Used as SAC's entropy target so that automatic tuning keeps the exploration noise the
    warm start set, instead of pulling it to SB3's default target of -dim(A), which a policy
    with saturated (gripper) actions sits far below: the noise would grow until the cloned
    behaviour is lost.
    """
    o = torch.as_tensor(obs, dtype=torch.float32, device=algo.device)
    with torch.no_grad():
        logp = torch.stack([algo.actor.action_log_prob(o)[1] for _ in range(samples)])
    return float(-logp.mean())


def pretrain_critic(algo, steps: int) -> None:
    """Critic-only SAC updates on the demonstrations (the actor and entropy stay frozen)."""
    from stable_baselines3.common.logger import configure

    algo.set_logger(configure(None, []))
    algo.train(gradient_steps=steps, batch_size=algo.batch_size, critic_only=True)
    algo._custom_logger = False  # let learn() set up TensorBoard as usual


def warm_start(cfg, algo, model, ctx, demos: tuple | None = None) -> dict:
    """BC the actor; for SAC also hand the demonstrations to the algorithm and pre-train the
    critic (``demos``: ``load_demos(cfg.demos)``'s answer when the caller has it already)."""
    demos, views = demos or load_demos(cfg.demos, model)
    tr = demo_transitions(demos, views, model, ctx, cfg)
    clone = tr["clone"]
    loss = behaviour_clone(
        algo.policy, tr["obs"][clone], tr["act"][clone], cfg.bc_epochs, std=cfg.bc_std
    )
    if hasattr(algo, "freeze_bc_actor"):  # DemoSAC with IBRL or a residual: the clone stays
        algo.freeze_bc_actor(residual_std=cfg.bc_std)
    info = {
        "demos": len(demos),
        "transitions": len(tr["obs"]),
        "cloned_transitions": int(clone.sum()),
        "bc_loss": round(loss, 5),
    }
    if hasattr(algo, "set_demo_returns"):  # AWR: the demos join every refit, no critic
        algo.set_demo_returns(*demo_returns(demos, views, model, ctx, cfg))
        info["demo_transitions_in_fits"] = len(tr["obs"])
    elif hasattr(algo, "set_demos"):  # DemoSAC: demos mixed into every batch, critic pre-trained
        algo.set_demos(tr)
        if cfg.target_entropy == "bc":
            algo.target_entropy = cloned_entropy(algo, tr["obs"])
            info["target_entropy"] = round(algo.target_entropy, 3)
        info["demo_transitions_in_batches"] = len(tr["obs"])
        if cfg.critic_warmup:
            pretrain_critic(algo, cfg.critic_warmup)
            info["critic_warmup_steps"] = cfg.critic_warmup
    log.info("warm start: %s", info)
    return info


def refresh_demo_rewards(cfg, algo, model, ctx) -> None:
    """Re-score the demonstrations in the algorithm's batches after the reward model changed."""
    if getattr(algo, "demos", None) is not None and cfg.demos:
        demos, views = load_demos(cfg.demos, model)
        algo.set_demos(demo_transitions(demos, views, model, ctx, cfg))
