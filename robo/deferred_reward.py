"""Deferred rewards: rendering and the reward model run beside the learner, one step late.

An RL step with a learned reward is: step the physics, render the model's views, query
the model, store the transition, take the gradient steps. The policy acts on the state
vector, so only the reward needs the frames; and nothing needs the reward before the
transition is sampled for a gradient step. :class:`DeferredRewardVecEnv` therefore runs
the environments *and the reward model* in one worker process: a step answers with the
observations as soon as the physics has stepped, then the worker renders and scores the
step while the learner stores the transition and takes its gradient steps. The step's
rewards arrive before the next step is sent (:meth:`DeferredRewardVecEnv.flush`).

The rewards are exactly those of :class:`robo.shaping.RewardVecEnvWrapper` (the same
:class:`robo.shaping._Shaper` computes them, one batched model call per vectorised step);
only *when* they are known changes:

* ``step_wait`` returns NaN rewards; each info carries ``deferred_reward_seq``. The
  rewards are delivered to ``reward_sink(seq, rewards)`` (see
  :class:`DeferredRewardReplayBuffer`) and the step's infos get ``reward_terms``
  (and ``terminal_frames`` on episode ends) in place when they arrive.
* Consumers of ``reward_terms`` (callbacks) read a step late: see
  :func:`robo.rl.callbacks.completed_steps`.

Only for off-policy learners whose buffer fills rewards in late (SAC here); PPO's rollout
buffer would store the NaNs, so it keeps the synchronous wrapper.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.vec_env import CloudpickleWrapper, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices

from models.base import TaskContext
from robo.errors import RoboError
from robo.shaping import ShapingConfig, _Shaper, check_model_views

SEQ_KEY = "deferred_reward_seq"


# ---------------------------------------------------------------------------- worker
class _Worker:
    """Environment and reward side of the pipe: lives in the worker process."""

    def __init__(self, env_fns, model, cfg: ShapingConfig, contexts, threads: int):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.envs = [fn() for fn in env_fns]
        self.model = model
        views = tuple(self.envs[0].unwrapped.views)
        self.view_idx = [views.index(v) for v in model.views]
        self.shaper = _Shaper(model, cfg, contexts)
        self.last_frames: np.ndarray | None = None

    def frames(self, k: int) -> np.ndarray:
        return self.envs[k].unwrapped.render_views()[self.view_idx]

    def reset(self, seeds, options):
        obs, infos = [], []
        for env, seed, opt in zip(self.envs, seeds, options, strict=True):
            o, info = env.reset(seed=seed, **({"options": opt} if opt else {}))
            obs.append(o)
            infos.append(info)
        self.last_frames = np.stack([self.frames(k) for k in range(len(self.envs))])
        self.shaper.reset(range(len(self.envs)), self.last_frames, infos)
        return obs, infos

    def step(self, actions, send) -> None:
        """Physics, answer, then frames and rewards (a second message)."""
        n = len(self.envs)
        obs, rews, dones, infos, reset_infos = [], [], [], [], []
        terminal, first = {}, {}
        for k, (env, a) in enumerate(zip(self.envs, actions, strict=True)):
            o, r, term, trunc, info = env.step(a)
            done = term or trunc
            info["TimeLimit.truncated"] = trunc and not term
            reset_info = {}
            if done:  # the terminal state's frames before the reset replaces it
                terminal[k] = (self.shaper.first.get(k), self.frames(k))  # start, end
                info["terminal_observation"] = o
                o, reset_info = env.reset()
                first[k] = self.frames(k)
            obs.append(o)
            rews.append(r)
            dones.append(done)
            infos.append(info)
            reset_infos.append(reset_info)
        send(("obs", obs, np.array(rews, np.float64), np.array(dones), infos, reset_infos))
        # from here on the learner runs its gradient steps
        frames = np.stack([terminal[k][1] if k in terminal else self.frames(k) for k in range(n)])
        trunc = np.array([bool(i["TimeLimit.truncated"]) for i in infos])
        term = np.array(dones) & ~trunc
        reward, _, terms = self.shaper.step(frames, np.array(rews), infos, term, trunc)
        for k in terminal:  # start, end and the key frames of the episode that ended
            terminal[k] = (*terminal[k], self.shaper.key_frames(k))
        ended = sorted(first)
        self.last_frames = frames.copy()
        if ended:
            self.shaper.reset(
                ended, np.stack([first[k] for k in ended]), [reset_infos[k] for k in ended]
            )
            self.last_frames[ended] = np.stack([first[k] for k in ended])
        send(("reward", reward, terms, terminal))

    def load_weights(self, state_dict) -> None:
        self.model.model.load_state_dict(state_dict)
        self.model.model.eval()
        if self.last_frames is not None:
            self.shaper.resync(self.last_frames)


def _serve(remote, parent_remote, payload: CloudpickleWrapper) -> None:
    # Mesa's software rasteriser would otherwise spread each frame over every core, onto
    # the one the learner's gradient steps are using
    os.environ.setdefault("LP_NUM_THREADS", "1")
    import robo  # noqa: F401  (torch._dynamo before Mesa's EGL, as in the main process)

    parent_remote.close()
    try:
        worker = _Worker(*payload.var)
        remote.send(("ready", worker.envs[0].observation_space, worker.envs[0].action_space))
    except Exception as exc:  # the learner raises it with the worker's message
        remote.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            cmd, *data = remote.recv()
        except (EOFError, KeyboardInterrupt):
            break
        try:
            if cmd == "step":
                worker.step(data[0], remote.send)
            elif cmd == "reset":
                remote.send(("reset", *worker.reset(*data)))
            elif cmd == "weights":
                worker.load_weights(data[0])
                remote.send(("ok",))
            elif cmd == "get_attr":
                name, idx = data
                remote.send(("ok", [worker.envs[i].get_wrapper_attr(name) for i in idx]))
            elif cmd == "set_attr":
                name, value, idx = data
                for i in idx:
                    setattr(worker.envs[i], name, value)
                remote.send(("ok",))
            elif cmd == "env_method":
                name, args, kwargs, idx = data
                out = [getattr(worker.envs[i], name)(*args, **kwargs) for i in idx]
                remote.send(("ok", out))
            elif cmd == "is_wrapped":
                from stable_baselines3.common.env_util import is_wrapped

                cls, idx = data
                remote.send(("ok", [is_wrapped(worker.envs[i], cls) for i in idx]))
            elif cmd == "close":
                for env in worker.envs:
                    env.close()
                remote.send(("ok",))
                break
        except AttributeError as exc:  # get_attr of an attribute the env lacks
            remote.send(("attr_error", str(exc)))
        except Exception as exc:
            remote.send(("error", f"{type(exc).__name__}: {exc}"))
    remote.close()


# ---------------------------------------------------------------------------- learner side
class DeferredRewardVecEnv(VecEnv):
    """A VecEnv whose rewards (from any picklable progress model) arrive one step late.

    Args:
        env_fns: functions building the environments (rendering the model's views).
        model: the progress model; a copy runs in the worker. After its weights change in
            this process (refinement), :meth:`resync_model` sends them over.
        cfg: reward shaping settings.
        context: the task context (one, or one per env).
        threads: torch threads in the worker (0: torch's default).
        start_method: multiprocessing start method of the worker.
    """

    deferred_rewards = True
    _DIED = (
        "the reward worker process died (see its output above); re-run with "
        "--deferred_reward false to get the error in this process"
    )

    def __init__(
        self,
        env_fns: Sequence[Callable],
        model,
        cfg: ShapingConfig,
        context: TaskContext | Sequence[TaskContext],
        threads: int = 1,
        start_method: str = "forkserver",
    ):
        n = len(env_fns)
        contexts = [context] * n if isinstance(context, TaskContext) else list(context)
        probe = env_fns[0]()
        check_model_views(model, probe)
        probe.close()
        self.model = model
        payload = CloudpickleWrapper((list(env_fns), model, cfg, contexts, threads))
        try:
            import cloudpickle

            cloudpickle.dumps(payload.var)
        except Exception as exc:
            raise RoboError(
                f"the reward model cannot be sent to a worker process ({type(exc).__name__}): "
                "train with --deferred_reward false"
            ) from exc
        ctx = mp.get_context(start_method)
        self.remote, work_remote = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(work_remote, self.remote, payload), daemon=True
        )
        self.process.start()
        work_remote.close()
        self.reward_sink: Callable[[int, np.ndarray], None] | None = None
        self.seq = 0
        self._pending: list[dict] | None = None  # infos of the step whose rewards are due
        self.last_rewards: np.ndarray | None = None
        self.closed = False
        msg = self._recv()
        super().__init__(n, msg[1], msg[2])

    # ----------------------------------------------------------------- plumbing
    def _recv(self):
        try:
            msg = self.remote.recv()
        except (EOFError, ConnectionResetError) as exc:
            raise RoboError(self._DIED) from exc
        if msg[0] == "error":
            raise RoboError(f"reward worker: {msg[1]}")
        if msg[0] == "attr_error":
            raise AttributeError(msg[1])
        return msg

    def _send(self, msg) -> None:
        try:
            self.remote.send(msg)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise RoboError(self._DIED) from exc

    def _call(self, *msg):
        self.flush()
        self._send(msg)
        return self._recv()

    def flush(self) -> np.ndarray | None:
        """Wait for the rewards of the last step and deliver them; returns them (or None)."""
        if self._pending is None:
            return None
        _, reward, terms, terminal = self._recv()
        infos, self._pending = self._pending, None
        for k, info in enumerate(infos):
            info["reward_terms"] = terms[k]
            if k in terminal:
                first, end, key = terminal[k]
                info["episode_first_frames"], info["terminal_frames"] = first, end
                info["episode_key_frames"] = key
        self.last_rewards = reward
        if self.reward_sink is not None:
            self.reward_sink(infos[0][SEQ_KEY], reward)
        return reward

    # ----------------------------------------------------------------- VecEnv API
    def reset(self):
        _, obs, infos = self._call("reset", self._seeds, self._options)
        self.reset_infos = list(infos)
        self._reset_seeds()
        self._reset_options()
        return np.stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self.flush()
        self._send(("step", np.asarray(actions)))

    def step_wait(self):
        _, obs, env_rew, dones, infos, reset_infos = self._recv()
        self.seq += 1
        for k, info in enumerate(infos):
            info[SEQ_KEY] = self.seq
            info["original_env_rew"] = float(env_rew[k])
            if dones[k]:
                self.reset_infos[k] = reset_infos[k]
        self._pending = infos
        return np.stack(obs), np.full(self.num_envs, np.nan, np.float32), dones, infos

    def resync_model(self) -> None:
        """Send this process's model weights to the worker and restart its per-env state."""
        state = {k: v.detach().cpu() for k, v in self.model.model.state_dict().items()}
        self._call("weights", state)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._call("close")
        except (RoboError, BrokenPipeError, OSError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list:
        return self._call("get_attr", attr_name, list(self._get_indices(indices)))[1]

    def set_attr(self, attr_name: str, value, indices: VecEnvIndices = None) -> None:
        self._call("set_attr", attr_name, value, list(self._get_indices(indices)))

    def env_method(self, method_name: str, *args, indices: VecEnvIndices = None, **kwargs) -> list:
        idx = list(self._get_indices(indices))
        return self._call("env_method", method_name, args, kwargs, idx)[1]

    def env_is_wrapped(self, wrapper_class, indices: VecEnvIndices = None) -> list[bool]:
        return self._call("is_wrapped", wrapper_class, list(self._get_indices(indices)))[1]


# ---------------------------------------------------------------------------- replay buffer
class PotentialSamples(NamedTuple):
    """SB3's replay samples plus each transition's next-state potential ``(batch, 1)``."""

    observations: th.Tensor
    actions: th.Tensor
    next_observations: th.Tensor
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None = None
    next_potentials: th.Tensor | None = None


class PotentialReplayBuffer(ReplayBuffer):
    """SB3's replay buffer that also keeps each transition's next-state potential (the
    shaper's ``info["reward_terms"]["next_potential"]``, NaN until known), for the per-state
    bound of pbrs values (:class:`robo.rl.demosac.DemoSAC`'s ``potential_bounds``); samples
    are :class:`PotentialSamples`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.optimize_memory_usage:
            raise ValueError("PotentialReplayBuffer does not support optimize_memory_usage")
        self.next_potentials = np.full((self.buffer_size, self.n_envs), np.nan, np.float32)

    def add(self, obs, next_obs, action, reward, done, infos) -> None:
        pos = self.pos
        super().add(obs, next_obs, action, reward, done, infos)
        self._store_potentials(pos, infos)

    def _store_potentials(self, pos: int, infos) -> None:
        terms = [info.get("reward_terms") for info in infos]
        if all(t is not None for t in terms):
            self.next_potentials[pos] = [t["next_potential"] for t in terms]

    def _get_samples(self, batch_inds: np.ndarray, env=None) -> PotentialSamples:
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        data = (
            self._normalize_obs(self.observations[batch_inds, env_indices, :], env),
            self.actions[batch_inds, env_indices, :],
            self._normalize_obs(self.next_observations[batch_inds, env_indices, :], env),
            # timeouts are not terminal: their value is bootstrapped
            (
                self.dones[batch_inds, env_indices] * (1 - self.timeouts[batch_inds, env_indices])
            ).reshape(-1, 1),
            self._normalize_reward(self.rewards[batch_inds, env_indices].reshape(-1, 1), env),
        )
        pots = self.next_potentials[batch_inds, env_indices].reshape(-1, 1)
        return PotentialSamples(*map(self.to_torch, data), next_potentials=self.to_torch(pots))


class DeferredRewardReplayBuffer(ReplayBuffer):
    """SB3's replay buffer for :class:`DeferredRewardVecEnv`: transitions are stored with
    their rewards still due and are never sampled until the rewards are filled in.

    Rewards are matched to transitions by the step's ``deferred_reward_seq``, so they may
    arrive before the transition is stored (a callback flushed in between) or after.
    ``on_starved`` (the env's ``flush``) is called when every stored transition is due.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._due: dict[int, int] = {}  # seq -> buffer position
        self._early: dict[int, np.ndarray] = {}  # seq -> rewards that came before the add
        self.on_starved: Callable[[], object] | None = None

    def add(self, obs, next_obs, action, reward, done, infos) -> None:
        pos = self.pos
        super().add(obs, next_obs, action, reward, done, infos)
        seq = infos[0].get(SEQ_KEY) if infos else None
        if seq is None:
            return
        if seq in self._early:
            self.rewards[pos] = self._early.pop(seq)
        else:
            self._due[seq] = pos
        self._early = {s: r for s, r in self._early.items() if s > seq}

    def fill(self, seq: int, rewards: np.ndarray) -> None:
        """Rewards of step ``seq`` (the env's ``reward_sink``)."""
        pos = self._due.pop(seq, None)
        if pos is None:
            self._early[seq] = np.asarray(rewards, np.float32)
        else:
            self.rewards[pos] = rewards

    def _blocked(self, upper: int) -> np.ndarray:
        """Positions not to sample: those whose reward is due and, with n-step returns,
        the n - 1 before each of them (their returns would read the missing reward)."""
        due = np.fromiter(self._due.values(), int, len(self._due))
        n = int(getattr(self, "n_steps", 1))
        if n > 1 and len(due):
            due = (due[:, None] - np.arange(n)[None, :]).ravel() % self.buffer_size
            due = np.unique(due[due < upper])
        return due

    def sample(self, batch_size: int, env=None):
        upper = self.buffer_size if self.full else self.pos
        due = self._blocked(upper)
        if upper - len(due) < 1 and self.on_starved is not None:
            self.on_starved()
            due = self._blocked(upper)
        valid = upper - len(due)
        if valid < 1:
            raise RuntimeError("no transition with a known reward to sample from")
        # draw among the valid positions: skip over the due ones in sorted order
        inds = np.random.randint(0, valid, size=batch_size)
        for d in np.sort(due):
            inds[inds >= d] += 1
        return self._get_samples(inds, env=env)


class DeferredPotentialReplayBuffer(DeferredRewardReplayBuffer, PotentialReplayBuffer):
    """The deferred-reward buffer that also keeps next-state potentials: read from the step's
    reward terms once they are in (the env writes them into the step's infos in place when
    the rewards arrive, before or after the add)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._due_infos: dict[int, list] = {}  # seq -> infos of a step whose terms are due

    def add(self, obs, next_obs, action, reward, done, infos) -> None:
        super().add(obs, next_obs, action, reward, done, infos)  # terms already in: stored
        seq = infos[0].get(SEQ_KEY) if infos else None
        if seq in self._due:
            self._due_infos[seq] = infos

    def fill(self, seq: int, rewards: np.ndarray) -> None:
        pos, infos = self._due.get(seq), self._due_infos.pop(seq, None)
        super().fill(seq, rewards)
        if pos is not None and infos is not None:
            self._store_potentials(pos, infos)


class DeferredNStepReplayBuffer(DeferredRewardReplayBuffer, NStepReplayBuffer):
    """The deferred-reward buffer with SB3's n-step returns (``n_steps``, ``gamma``): a
    transition is sampled only once the rewards of all n steps it sums are in."""
