"""`robo rl train`: stable-baselines3 with rewards from any progress model, BC warm start.

    robo rl train --env tabletop/pick-place-v0 --reward grm:runs/grm/model --shaping.mode pbrs \
                  --algo sac --demos data/pick-place --steps 20000

Warm start (``--demos``): the actor is behaviour-cloned on the expert demonstrations
(mean and a small exploration noise, ``--bc_std``). For SAC (``robo.rl.demosac.DemoSAC``)
the demonstrations, rewarded by the same shaping, are then mixed into every minibatch
(``--demo_ratio``), the actor keeps a behaviour-cloning term on them (``--bc_weight``), the
entropy coefficient starts small (``--init_ent_coef``) and the critic is pre-trained on
them with the actor frozen (``--critic_warmup``), so that the cloned policy is not torn
down by a random critic when RL begins.

With SAC and a reward that needs frames, rendering and scoring run in a worker process
while the learner takes its gradient steps (``--deferred_reward``, see
``robo.deferred_reward``); ``--ibrl``, ``--critic_layernorm``, critic ensembles
(``--n_critics``, ``--critic_subset``) and TD targets bounded to the return's range
(``--q_clip``, see ``return_bounds``) are optional additions to DemoSAC (``robo.rl.demosac``).
``--action_chunk k`` makes every decision k actions run open-loop (``robo.rl.chunking``);
steps, evaluation cadence and actor delay then count decisions.

Writes ``<out>/`` : TensorBoard logs, checkpoints, ``eval.json`` (success rate every
``eval_every`` steps, 20 deterministic episodes), the final policy and ``best_policy.zip``
(the policy of the best evaluation, the warm start included).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import torch

from models.base import TaskContext
from robo.errors import RoboError
from robo.shaping import ShapingConfig, ShapingMode, SuccessSource, make_reward_vec_env


class Algo(StrEnum):
    sac = "sac"
    ppo = "ppo"
    awr = "awr"  # critic-free advantage-weighted regression (robo.rl.awr)


class PolicyObs(StrEnum):
    auto = "auto"  # the env's invariant part where it declares one, else everything
    all = "all"
    invariant = "invariant"


@dataclass
class RLConfig:
    """Settings of one RL run."""

    # env id (`robo envs`).
    env: str = ""
    # reward source: grm:<dir> | vlm:<dir> | perceptual:<dir> | grpc://host:port | none
    # (sparse/oracle without a model) | privileged (evaluation only: the simulator's progress).
    reward: str = "none"
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    algo: Algo = Algo.sac
    # environment steps of RL.
    steps: int = 20000
    n_envs: int = 1
    seed: int = 0
    # expert demonstrations (a store of this env) for the BC warm start and the task context.
    demos: str = ""
    # behaviour-cloning epochs over the demonstrations (0: no warm start).
    bc_epochs: int = 1000
    # SAC: critic pre-training steps on the demonstrations with the actor frozen.
    critic_warmup: int = 500
    # SAC, warm-started: env steps at the start of RL during which only the critic learns
    # (from the demos and the cloned policy's own rollouts); the actor stays the clone until
    # then (without it a strong clone lost half its success in the first episodes).
    actor_delay: int = 2000
    # normalise observations by the demonstrations' per-dimension mean and std (fixed; a
    # layer of the policy and critics, saved with them). Needs --demos; off without them.
    obs_norm: bool = True
    # with --obs_norm: also read how the scenes vary from this many seeded resets of the env
    # (0: the demonstrations alone). Few demos show the object at few positions; normalised
    # by them alone, other scenes' positions are far outliers, clipped to one value.
    obs_norm_scenes: int = 64
    # what of the observation the policy and critics see (a selection inside the normaliser):
    # invariant: the part a shift of the whole scene leaves unchanged (heights, gripper,
    # orientations, relative positions; the env declares it) | all | auto (invariant where the
    # env declares it, else all).
    policy_obs: str = "auto"
    # exploration noise (pre-squashing std) the cloned policy starts with.
    bc_std: float = 0.2
    # SAC: share of every minibatch drawn from the demonstrations (0: replay only).
    demo_ratio: float = 0.5
    # SAC: weight of the behaviour-cloning term on the demonstration share (0: none).
    bc_weight: float = 10.0
    # SAC: apply the BC term only where the critic rates the demo action above the actor's.
    q_filter: bool = False
    # SAC: entropy target when warm-started: "bc" (the cloned policy's own entropy on the
    # demo states) or "auto" (SB3's -dim(A)).
    target_entropy: str = "auto"
    # SAC: initial entropy coefficient when warm-started (tuned automatically from there).
    init_ent_coef: float = 0.01
    # SAC: gradient steps per environment step (update-to-data ratio).
    utd: int = 1
    # SAC: minibatch size of every gradient step (demos and replay together).
    batch_size: int = 256
    # SAC: imitation-bootstrapped RL (Hu et al. 2023): a frozen copy of the cloned actor
    # proposes actions beside the RL actor; the critic picks the better one (acting and
    # in the TD target). Needs --demos and --bc_epochs > 0.
    ibrl: bool = False
    # SAC: residual RL on the clone (0: off): a frozen copy of the cloned actor is the base
    # policy and the RL actor learns a correction of at most this much per action dimension
    # (in the [-1, 1] action scale; 2 lets it flip a saturated gripper command), starting
    # at zero. Needs --demos and --bc_epochs > 0; not with --ibrl or --actor_update awac.
    residual_scale: float = 0.0
    # SAC: probability per decision of flipping the sign of one action dimension (the
    # gripper command) in training rollouts (0: off): exploration of the switches a cloned,
    # saturated gripper command never tries under Gaussian noise. With --action_chunk every
    # step of the chunk is flipped.
    flip_prob: float = 0.0
    # the dimension --flip_prob flips, within one step's action (-1: the last, the gripper).
    flip_dim: int = -1
    # SAC: self-imitation: the policy's own successful training episodes join the
    # behaviour-cloning term beside the demonstrations (needs the warm start's BC term).
    self_imitation: bool = False
    # SAC: the actor's update: sac (reparameterised, maximises Q) | awac (advantage-weighted
    # likelihood of the batch's own demo and replay actions, AWAC: the actor cannot leave the
    # data's support, so an over-estimating critic cannot pull it off; no entropy tuning).
    actor_update: str = "sac"
    # SAC with --actor_update awac: temperature of the weights exp(A / beta), in units of the
    # return (sparse and pbrs returns lie within [-1, 2]).
    awac_beta: float = 0.1
    # SAC with --actor_update awac: the advantage: critic (Q(s, a) - Q(s, mu(s))) | return
    # (critic-free: the transition's --n_step return; under pbrs the progress the action led
    # to over the next n steps, the potential standing in for the value baseline).
    awac_advantage: str = "critic"
    # SAC with --actor_update awac: standardise the advantages over each batch (--awac_beta is
    # then in units of their spread; a potential's per-step changes are small against 0.1).
    awac_normalize: bool = False
    # AWR: training episodes collected between refits of the actor.
    awr_episodes: int = 10
    # AWR: minibatches of --batch_size per refit (drawn in proportion to the weights).
    awr_fit_steps: int = 3000
    # AWR: temperature of the weights exp(G / beta) on positive Monte Carlo returns G (clipped
    # at 20; sparse and pbrs returns lie within [-1, 2]).
    awr_beta: float = 0.1
    # SAC: n-step returns in the TD target (replay and demonstrations; 1: SAC's one-step).
    n_step: int = 1
    # actions per decision: the policy outputs the next k actions and the env runs them
    # open-loop (robo.rl.chunking); demonstrations are cut into chunks from every step, the
    # discount per decision is gamma^k and the reward model scores once per chunk.
    action_chunk: int = 1
    # SAC: LayerNorm in the critics' hidden layers (RLPD).
    critic_layernorm: bool = False
    # SAC: clip TD targets to the range the return can take (sparse: [0, bonus]; pbrs with
    # a potential in [0, 1]: [-1, bonus], the sparse value minus the potential; other modes
    # are not clipped; see return_bounds). Without it the
    # critic over-estimates: Q of 2-4 where the sparse return is at most 1.
    q_clip: bool = True
    # SAC with pbrs: also clip each bootstrapped value to [lo - Phi(s'), hi - Phi(s')], the
    # sparse range minus the next state's potential (a pbrs value is the sparse one minus the
    # potential): as tight as sparse's own clip. One-step targets, no action chunks.
    q_clip_potential: bool = False
    # SAC: the entropy bonus in the critic's TD target (soft values, as SAC): auto | true |
    # false. auto: off where the targets are clipped (--q_clip on sparse or pbrs,
    # --q_clip_potential), since the clip bounds the return, not a soft value (which adds up
    # to alpha * H / (1 - gamma): from scratch, at alpha = 1, every clipped target sits at
    # the top bound); on otherwise. The actor keeps its entropy term either way.
    backup_entropy: str = "auto"
    # SAC: critics in the ensemble (2: SAC's pair). With more, the actor maximises their mean.
    n_critics: int = 2
    # SAC: critics whose minimum is the TD target, drawn at random each update (REDQ; 0: all).
    critic_subset: int = 0
    # evaluate every this many env steps, on this many deterministic episodes (fixed scenes;
    # 20 proved too few to tell 0.6 from 0.9).
    eval_every: int = 2000
    eval_episodes: int = 50
    # episode step limit (0: the env's default).
    max_episode_steps: int = 0
    out: str = ""
    # torch threads (0: leave torch's default).
    threads: int = 1
    # SAC with a frame-based reward: render and score each step in a worker process while
    # the learner takes its gradient steps (rewards arrive one step late; same values).
    deferred_reward: bool = True
    # reward-refinement loop: adapt the GRM on episodes whose outcome contradicts it.
    refine: bool = False
    # refinement cadence (env steps), minimum contradicting episodes, adaptation steps.
    refine_every: int = 2000
    refine_min_episodes: int = 2
    refine_steps: int = 150
    # each refinement also adds agreeing episodes of the minority outcome (hard negatives
    # against missed successes, detected successes against false ones); false = off.
    refine_balance: bool = True

    def __post_init__(self) -> None:
        self.algo = Algo(self.algo)
        try:
            self.policy_obs = PolicyObs(self.policy_obs)
        except ValueError:
            raise RoboError(
                f"--policy_obs {self.policy_obs!r}: use auto, all or invariant"
            ) from None
        if not self.env:
            raise RoboError("--env is required (see `robo envs`)")
        if self.steps < 1 or self.n_envs < 1:
            raise RoboError("--steps and --n_envs must be positive")
        if not 0.0 <= self.demo_ratio < 1.0:
            raise RoboError(f"--demo_ratio {self.demo_ratio} must lie in [0, 1)")
        if str(self.backup_entropy).lower() not in ("auto", "true", "false"):
            raise RoboError(f"--backup_entropy {self.backup_entropy!r}: use auto, true or false")
        if self.target_entropy not in ("bc", "auto"):
            raise RoboError(f"--target_entropy {self.target_entropy!r}: use bc or auto")
        if self.bc_std <= 0 or self.init_ent_coef <= 0 or self.utd < 1 or self.batch_size < 2:
            raise RoboError(
                "--bc_std and --init_ent_coef must be positive, --utd at least 1 and "
                "--batch_size at least 2"
            )
        if self.actor_delay < 0:
            raise RoboError(f"--actor_delay {self.actor_delay} must be at least 0 (0: no delay)")
        if self.actor_update not in ("sac", "awac"):
            raise RoboError(f"--actor_update {self.actor_update!r}: use sac or awac")
        if self.awac_advantage not in ("critic", "return"):
            raise RoboError(f"--awac_advantage {self.awac_advantage!r}: use critic or return")
        if self.awac_beta <= 0:
            raise RoboError(f"--awac_beta {self.awac_beta} must be positive")
        if self.action_chunk < 1:
            raise RoboError(
                f"--action_chunk {self.action_chunk} must be at least 1 (1: one action per step)"
            )
        if self.action_chunk > 1 and self.n_step > 1:
            raise RoboError(
                "--action_chunk already backs up values over k steps: drop --n_step (use 1)"
            )
        if self.obs_norm_scenes < 0:
            raise RoboError(
                f"--obs_norm_scenes {self.obs_norm_scenes} must be 0 (demonstrations only) or more"
            )
        if self.n_step < 1:
            raise RoboError(f"--n_step {self.n_step} must be at least 1 (1: one-step TD targets)")
        if self.n_critics < 1 or not 0 <= self.critic_subset <= self.n_critics:
            raise RoboError(
                f"--n_critics {self.n_critics} must be at least 1 and --critic_subset "
                f"{self.critic_subset} lie in [0, n_critics]"
            )

    def validate(self) -> None:
        """Checks that depend on the combination of reward and shaping (run before training)."""
        if self.algo is Algo.awr:
            if self.awr_episodes < 1 or self.awr_fit_steps < 1 or self.awr_beta <= 0:
                raise RoboError(
                    "--awr_episodes and --awr_fit_steps must be at least 1 and --awr_beta positive"
                )
            if self.action_chunk > 1:
                raise RoboError("--algo awr takes one action per decision: drop --action_chunk")
        if self.policy_obs is PolicyObs.invariant and not (self.demos and self.obs_norm):
            raise RoboError(
                "--policy_obs invariant selects inputs inside the observation normaliser: it "
                "needs --demos <store> and --obs_norm true"
            )
        if self.ibrl and (self.algo is not Algo.sac or not self.demos or not self.bc_epochs):
            raise RoboError(
                "--ibrl true needs --algo sac, --demos <store> and --bc_epochs > 0 (the cloned actor)"
            )
        needs_model = (
            self.shaping.mode in (ShapingMode.pbrs, ShapingMode.naive)
            or self.shaping.success_source == "model"
        )
        if self.residual_scale < 0:
            raise RoboError(f"--residual_scale {self.residual_scale} must be at least 0 (0: off)")
        if self.residual_scale and (
            self.algo is not Algo.sac or not self.demos or not self.bc_epochs
        ):
            raise RoboError(
                "--residual_scale corrects the cloned actor: it needs --algo sac, --demos <store> "
                "and --bc_epochs > 0"
            )
        if self.residual_scale and (self.ibrl or self.actor_update != "sac"):
            raise RoboError(
                "--residual_scale works with SAC's own actor update: drop --ibrl and "
                "--actor_update awac"
            )
        if not 0.0 <= self.flip_prob < 1.0:
            raise RoboError(f"--flip_prob {self.flip_prob} must lie in [0, 1) (0: off)")
        if self.flip_prob and self.algo is not Algo.sac:
            raise RoboError("--flip_prob explores in SAC's rollouts: use --algo sac")
        if self.reward == "privileged" and self.refine:
            raise RoboError(
                "--refine true adapts a GRM; the privileged potential has nothing to refine"
            )
        if self.self_imitation and (
            self.algo is not Algo.sac or not self.demos or not self.bc_epochs or self.bc_weight <= 0
        ):
            raise RoboError(
                "--self_imitation true adds to SAC's behaviour-cloning term: it needs --algo sac, "
                "--demos <store>, --bc_epochs > 0 and --bc_weight > 0"
            )
        if self.actor_update == "awac" and self.algo is not Algo.sac:
            raise RoboError("--actor_update awac is SAC's actor update: use --algo sac")
        if self.n_step > 1 and self.algo is not Algo.sac:
            raise RoboError(
                "--n_step applies to --algo sac (PPO has its own returns): drop it or use sac"
            )
        if self.q_clip_potential and (
            self.algo is not Algo.sac
            or self.shaping.mode is not ShapingMode.pbrs
            or self.n_step > 1
            or self.action_chunk > 1
        ):
            raise RoboError(
                "--q_clip_potential true bounds SAC's one-step pbrs targets: it needs --algo sac "
                "and --shaping.mode pbrs, without --n_step or --action_chunk above 1"
            )
        if needs_model and self.reward == "none":
            raise RoboError(
                f"--shaping.mode {self.shaping.mode.value} needs a reward model: pass --reward grm:<dir>"
            )
        if self.refine and (not self.reward.startswith("grm:") or not self.demos):
            raise RoboError(
                "--refine true adapts a GRM: pass --reward grm:<dir> and --demos <store>"
            )

    @property
    def decision_shaping(self) -> ShapingConfig:
        """The shaping of one decision: with action chunks its discount is ``gamma^k``."""
        if self.action_chunk == 1:
            return self.shaping
        return replace(self.shaping, gamma=self.shaping.gamma**self.action_chunk)

    @property
    def out_dir(self) -> Path:
        return Path(
            self.out
            or f"runs/rl/{self.env.split('/')[-1]}-{self.shaping.mode.value}-{self.algo.value}-s{self.seed}"
        )


class _NoModel:
    """Stands in when no progress model is needed (sparse, oracle): potential 0, renders nothing."""

    views: tuple[str, ...] = ()
    image_size = None

    def reset(self, env_indices, contexts, frames):
        from models.base import ProgressOutput

        z = torch.zeros(len(env_indices))
        return ProgressOutput(z, z, torch.ones(len(env_indices)))

    def predict(self, frames, env_indices=None):
        return self.reset(
            env_indices if env_indices is not None else range(len(frames)), None, frames
        )


class PrivilegedPotential(_NoModel):
    """Evaluation-only potential: the simulator's privileged progress (``info``), no frames.

    ``pbrs`` with it is the upper bound of what a perfect progress model could give the
    RL algorithm; it tells a weak reward model from a weak RL set-up. Never for robots.
    """

    reads_info = True


def return_bounds(shaping: ShapingConfig) -> tuple[float, float] | None:
    """Range of the discounted return under this shaping, or None where it is unbounded.

    Sparse: the success bonus once (training envs terminate on the env's success). With the
    model's success detection as the gold signal the episode does not end on it, so the
    bonus may recur: ``bonus / (1 - gamma)``. pbrs: the value is the sparse one minus the
    potential, ``Q_pbrs(s, a) = Q_sparse(s, a) - Phi(s)`` (Ng et al. 1999; Wiewiora 2003):
    the critic bootstraps through time-limit truncations, so the shaping terms telescope over
    an unbounded horizon to ``-Phi(s_0)`` for ``gamma < 1`` (``Phi = 0`` at a true terminal).
    With a potential in [0, 1] that is ``[lo - 1, hi]``; at ``gamma = 1`` a never-ending
    episode may also collect up to 1 of progress, so the top is ``max(hi, 1)``.
    """
    recurs = shaping.success_source is not SuccessSource.env
    if recurs and shaping.gamma >= 1.0:
        return None
    times = 1.0 / (1.0 - shaping.gamma) if recurs else 1.0
    lo, hi = min(shaping.success_bonus, 0.0) * times, max(shaping.success_bonus, 0.0) * times
    if shaping.mode is ShapingMode.sparse:
        return (lo, hi) if lo < hi else None
    if shaping.mode is ShapingMode.pbrs:
        return (lo - 1.0, hi if shaping.gamma < 1.0 else max(hi, 1.0))
    return None


def backup_entropy(cfg: RLConfig) -> bool:
    """``--backup_entropy`` resolved: ``auto`` is off exactly where TD targets are clipped."""
    choice = str(cfg.backup_entropy).lower()
    if choice != "auto":
        return choice == "true"
    shaping = cfg.decision_shaping
    return not ((cfg.q_clip and return_bounds(shaping) is not None) or cfg.q_clip_potential)


def load_reward(spec: str):
    if spec == "none":
        return _NoModel()
    if spec == "privileged":
        return PrivilegedPotential()
    from robo.reward.registry import load_progress_model

    return load_progress_model(spec)


def demo_context(cfg: RLConfig, model) -> TaskContext:
    """Task context from the first expert demo in ``--demos`` (text + start/goal frames in the model's views)."""
    if not cfg.demos:
        return TaskContext()
    from robo.store import EpisodeStore

    store = EpisodeStore.open(cfg.demos)
    for i in range(len(store)):
        if store.episode_meta(i).policy == "expert":
            ep = store.episode(i)
            idx = [store.views.index(v) for v in model.views] if model.views else []
            if not idx:
                return TaskContext(ep.task)
            return TaskContext(ep.task, ep.frames[0][idx], ep.frames[ep.goal_index][idx])
    raise RoboError(f"{cfg.demos} has no expert demonstration")


def make_env_fn(cfg: RLConfig, model, seed: int):
    import sim

    def fn():
        kwargs = {"terminate_on_success": True}
        if model.views:
            kwargs.update(views=tuple(model.views), image_size=int(model.image_size[0]))
        if cfg.max_episode_steps:
            kwargs["max_episode_steps"] = cfg.max_episode_steps
        env = sim.make(cfg.env, **kwargs)
        if cfg.action_chunk > 1:
            from robo.rl.chunking import ActionChunkWrapper

            env = ActionChunkWrapper(env, cfg.action_chunk, cfg.shaping.gamma)
        env.reset(seed=seed)
        return env

    return fn


def potential_bounds(shaping: ShapingConfig) -> tuple[float, float]:
    """The sparse return's range, from which a pbrs value at ``s`` is ``Phi(s)`` less."""
    bounds = return_bounds(replace(shaping, mode=ShapingMode.sparse))
    if bounds is None:
        raise RoboError(
            "--q_clip_potential true needs a bounded sparse return: a success bonus other "
            "than 0 and, with --shaping.success_source model, a discount below 1"
        )
    return bounds


def replay_buffer_args(cfg: RLConfig, deferred: bool) -> dict:
    """SAC's replay buffer: deferred rewards and/or n-step returns, else SB3's default."""
    from stable_baselines3.common.buffers import NStepReplayBuffer

    from robo.deferred_reward import (
        DeferredNStepReplayBuffer,
        DeferredPotentialReplayBuffer,
        DeferredRewardReplayBuffer,
        PotentialReplayBuffer,
    )

    if cfg.q_clip_potential:  # validated: one-step targets
        cls = DeferredPotentialReplayBuffer if deferred else PotentialReplayBuffer
        return {"replay_buffer_class": cls}
    if cfg.n_step > 1:
        cls = DeferredNStepReplayBuffer if deferred else NStepReplayBuffer
        kwargs = {"n_steps": cfg.n_step, "gamma": cfg.decision_shaping.gamma}
        return {"replay_buffer_class": cls, "replay_buffer_kwargs": kwargs}
    return {"replay_buffer_class": DeferredRewardReplayBuffer} if deferred else {}


def policy_obs_indices(cfg: RLConfig) -> list[int] | None:
    """The observation indices the networks see under ``--policy_obs`` (``None``: all)."""
    import sim

    if cfg.policy_obs is PolicyObs.all:
        return None
    keep = sim.invariant_obs(cfg.env)
    if keep is None and cfg.policy_obs is PolicyObs.invariant:
        raise RoboError(
            f"--policy_obs invariant: {cfg.env} declares no invariant part of its observation; "
            "use --policy_obs all"
        )
    return None if keep is None else list(keep)


def policy_obs_relative(cfg: RLConfig) -> tuple[tuple[int, int], ...]:
    """The relative positions the networks see after the observation (``sim.relative_obs``;
    none under ``--policy_obs all``)."""
    import sim

    return () if cfg.policy_obs is PolicyObs.all else sim.relative_obs(cfg.env)


def flip_dims(cfg: RLConfig, action_space) -> tuple[int, ...]:
    """Indices of ``--flip_dim`` in every step of a decision's (possibly chunked) action."""
    per_step = int(action_space.shape[0]) // cfg.action_chunk
    if not -per_step <= cfg.flip_dim < per_step:
        raise RoboError(
            f"--flip_dim {cfg.flip_dim}: the env's actions have {per_step} dimensions "
            f"(use 0..{per_step - 1}, or -1 for the last)"
        )
    d = cfg.flip_dim % per_step
    return tuple(j * per_step + d for j in range(cfg.action_chunk))


def build(cfg: RLConfig, demos: tuple | None = None):
    """Reward model, shaped vec env and SB3 algorithm (``demos``: ``load_demos``'s answer
    for ``cfg.demos`` when the caller has it already)."""
    from stable_baselines3 import PPO

    from robo.deferred_reward import DeferredRewardVecEnv
    from robo.rl.demosac import DemoSAC, LayerNormSACPolicy

    model = load_reward(cfg.reward)
    ctx = demo_context(cfg, model)
    fns = [make_env_fn(cfg, model, cfg.seed + 1000 * k) for k in range(cfg.n_envs)]
    # both wrappers check the model's views against the env's before anything runs
    deferred = cfg.deferred_reward and cfg.algo is Algo.sac and bool(model.views)
    shaping = cfg.decision_shaping
    if deferred:
        venv = DeferredRewardVecEnv(fns, model, shaping, ctx, threads=cfg.threads)
    else:
        venv = make_reward_vec_env(fns, model, shaping, ctx)
    venv.seed(cfg.seed)
    policy_kwargs = {}
    if cfg.demos:
        from robo.rl.warmstart import (
            check_demo_states,
            load_demos,
            obs_norm_kwargs,
            scene_states,
        )

        episodes = (demos or load_demos(cfg.demos, model))[0]
        check_demo_states(episodes, venv.observation_space, cfg.demos, cfg.env)
        if cfg.obs_norm:
            scenes = None
            if cfg.obs_norm_scenes:
                scenes = scene_states(make_env_fn(cfg, _NoModel(), 0), cfg.obs_norm_scenes)
            policy_kwargs = obs_norm_kwargs(
                episodes, policy_obs_indices(cfg), scenes, policy_obs_relative(cfg)
            )
    common = dict(
        seed=cfg.seed, verbose=0, tensorboard_log=str(cfg.out_dir / "tb"), gamma=shaping.gamma
    )
    if cfg.algo is Algo.sac:
        warm = bool(cfg.demos and cfg.bc_epochs)
        algo = DemoSAC(
            LayerNormSACPolicy if cfg.critic_layernorm else "MlpPolicy",
            venv,
            learning_starts=0 if warm else 1000,
            demo_ratio=cfg.demo_ratio if warm else 0.0,
            bc_weight=cfg.bc_weight if warm else 0.0,
            q_filter=cfg.q_filter,
            ibrl=cfg.ibrl and warm,
            residual_scale=cfg.residual_scale if warm else 0.0,
            flip_prob=cfg.flip_prob,
            flip_dims=flip_dims(cfg, venv.action_space) if cfg.flip_prob else (),
            critic_subset=cfg.critic_subset,
            q_bounds=return_bounds(shaping) if cfg.q_clip else None,
            potential_bounds=potential_bounds(shaping) if cfg.q_clip_potential else None,
            actor_delay=cfg.actor_delay if warm else 0,
            actor_update=cfg.actor_update,
            awac_beta=cfg.awac_beta,
            awac_advantage=cfg.awac_advantage,
            awac_normalize=cfg.awac_normalize,
            backup_entropy=backup_entropy(cfg),
            policy_kwargs={"n_critics": cfg.n_critics, **policy_kwargs},
            ent_coef=f"auto_{cfg.init_ent_coef}" if warm else "auto",
            gradient_steps=cfg.utd,
            batch_size=cfg.batch_size,
            **replay_buffer_args(cfg, deferred),
            **common,
        )
        if deferred:
            venv.reward_sink = algo.replay_buffer.fill
            algo.replay_buffer.on_starved = venv.flush
    elif cfg.algo is Algo.awr:
        from robo.rl.awr import AWR

        algo = AWR(
            "MlpPolicy",
            venv,
            learning_starts=0,
            train_freq=(cfg.awr_episodes, "episode"),
            gradient_steps=cfg.awr_fit_steps,
            batch_size=cfg.batch_size,
            awr_beta=cfg.awr_beta,
            awr_std=cfg.bc_std,
            policy_kwargs=policy_kwargs,
            **common,
        )
    else:
        algo = PPO(
            "MlpPolicy",
            venv,
            n_steps=max(64, 1024 // cfg.n_envs),
            batch_size=64,
            policy_kwargs=policy_kwargs,
            **common,
        )
    return model, ctx, venv, algo


def train(cfg: RLConfig, progress_bar: bool = True) -> dict:
    """Run the warm start and RL; returns the evaluation history."""
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback

    from robo.rl.callbacks import SuccessEvalCallback
    from robo.rl.warmstart import load_demos, refresh_demo_rewards, warm_start

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    demos = load_demos(cfg.demos, None) if cfg.demos else None
    model, ctx, venv, algo = build(cfg, demos)
    t0 = time.time()
    warm = warm_start(cfg, algo, model, ctx, demos) if cfg.demos and cfg.bc_epochs else {}
    eval_cb = SuccessEvalCallback(
        lambda: make_env_fn(cfg, _NoModel(), cfg.seed + 777)(),
        cfg.eval_every,
        cfg.eval_episodes,
        out / "eval.json",
        seed=cfg.seed + 777,
        best_path=out / "best_policy",
    )
    eval_cb.evaluate_now(algo, step=0)  # the warm-started policy's success before RL
    ckpt = CheckpointCallback(
        save_freq=max(cfg.eval_every // cfg.n_envs, 1), save_path=str(out / "checkpoints")
    )
    callbacks = [eval_cb, ckpt]
    self_imitation = None
    if cfg.self_imitation:
        from robo.rl.callbacks import SelfImitationCallback

        self_imitation = SelfImitationCallback()
        callbacks.append(self_imitation)
    refine_cb = None
    if cfg.refine:
        from robo.rl.refine import RefineCallback

        refine_cb = RefineCallback(
            venv,
            model,
            cfg.demos,
            out,
            every=cfg.refine_every,
            min_episodes=cfg.refine_min_episodes,
            adapt_steps=cfg.refine_steps,
            balance=cfg.refine_balance,
            env_id=cfg.env,
            on_refined=lambda: refresh_demo_rewards(cfg, algo, model, ctx),
        )
        callbacks.append(refine_cb)
    algo.learn(
        cfg.steps, callback=CallbackList(callbacks), progress_bar=progress_bar, tb_log_name="rl"
    )
    if refine_cb is not None:
        model.model.save_pretrained(out / "refined_model")
    algo.save(out / "final_policy")
    summary = {
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "warm_start": warm,
        "evaluations": eval_cb.history,
        "best": eval_cb.best,
        "backup_entropy": getattr(algo, "backup_entropy", None),
        "wall_time_s": round(time.time() - t0, 1),
        "hacking_watch": eval_cb.watch_summary(),
        "refinement": refine_cb.history if refine_cb is not None else None,
        "refinement_false_success": refine_cb.before_after() if refine_cb is not None else None,
        "awr_fits": getattr(algo, "awr_history", None),
        "self_imitation": (
            {"episodes": self_imitation.episodes, "transitions": self_imitation.transitions}
            if self_imitation is not None
            else None
        ),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    venv.close()
    last = eval_cb.history[-1]["success_rate"] if eval_cb.history else float("nan")
    best = eval_cb.best or {"success_rate": float("nan"), "step": 0}
    print(
        f"{cfg.env} {cfg.shaping.mode.value}: success {last:.2f} after {cfg.steps} steps "
        f"(best {best['success_rate']:.2f} at step {best['step']}, best_policy.zip); "
        f"report {out}/"
    )
    return summary
