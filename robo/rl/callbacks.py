"""Success-rate evaluation and the reward-hacking watch, as SB3 callbacks (``_on_step`` only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback


def start_value(policy, obs, action) -> float | None:
    """The critic's value of the first decision, ``Q(s_0, a_0)`` (SAC-family policies with
    a critic; ``None`` for others). With the success reward of the episode that follows
    (:func:`run_eval_episodes`'s ``return_start``) it shows over-estimation."""
    if not hasattr(policy, "critic") or not hasattr(policy, "_q_value"):
        return None
    import torch as th

    obs_t, _ = policy.policy.obs_to_tensor(obs)
    act = policy.policy.scale_action(np.asarray(action, np.float32).reshape(1, -1))
    with th.no_grad():
        return float(policy._q_value(policy.critic, obs_t, th.as_tensor(act)).item())


def run_eval_episodes(policy, env, episodes: int, seed: int) -> dict:
    """Deterministic episodes; success if the env reports success at any step.

    For a policy with a critic, also ``q_start``, the critic's mean ``Q(s_0, a_0)``, beside
    ``return_start``, the mean discounted success reward that followed (``gamma^(T-1)`` at a
    success in decision T, else 0; the training envs end on success). Under pbrs the critic's
    value is the sparse one minus the start state's potential (about 0 at a reset), so the two
    compare under every mode but ``naive`` and ``oracle``: a gap is over-estimation.
    """
    successes, lengths, q0, ret0 = [], [], [], []
    gamma = float(getattr(policy, "gamma", 1.0))
    for k in range(episodes):
        obs, info = env.reset(seed=seed + k)
        done, success, steps = False, False, 0
        while not done:
            action, _ = policy.predict(obs, deterministic=True)
            if steps == 0:
                q = start_value(policy, obs, action)
            obs, _, term, trunc, info = env.step(action)
            success |= bool(info.get("success", False))
            done, steps = term or trunc, steps + 1
        successes.append(success)
        lengths.append(steps)
        if q is not None:
            q0.append(q)
            ret0.append(gamma ** (steps - 1) if success else 0.0)
    out = {"success_rate": float(np.mean(successes)), "mean_length": float(np.mean(lengths))}
    if q0:
        out.update(q_start=float(np.mean(q0)), return_start=float(np.mean(ret0)))
    return out


def tally_episode(counts: dict, model_success: bool, env_success: bool) -> None:
    """Add one ended episode to ``counts``: ``episodes``, ``env_failures``, and the model's
    detection errors against the env's label, ``false_successes`` and ``missed_successes``."""
    counts["episodes"] += 1
    if not env_success:
        counts["env_failures"] += 1
        counts["false_successes"] += int(model_success)
    else:
        counts["missed_successes"] += int(not model_success)


def completed_steps(callback: BaseCallback, final: bool = False) -> list[tuple[list, np.ndarray]]:
    """``(infos, dones)`` of the vectorised steps whose reward terms are known by now.

    With a synchronous reward that is the step just taken. With a deferred reward
    (:class:`robo.deferred_reward.DeferredRewardVecEnv`) a step's terms arrive when the
    next step is sent, so this returns the previous step; ``final`` (at training end)
    waits for the last step's terms and returns it as well.
    """
    env = callback.training_env
    current = (callback.locals["infos"], callback.locals["dones"]) if not final else None
    if not getattr(env, "deferred_rewards", False):
        return [current] if current is not None else []
    previous = getattr(callback, "_deferred_step", None)
    callback._deferred_step = current
    if final and previous is not None:
        env.flush()
    return [previous] if previous is not None else []


class SuccessEvalCallback(BaseCallback):
    """Every ``every`` env steps: success rate of the deterministic policy on ``episodes``
    fixed-seed episodes; plus, from the training episodes' reward terms, how often the
    model's success detection fired on episodes the env judged failed (false successes) and
    how far the model's progress was from privileged progress (the reward-hacking watch).

    With ``best_path``, the policy of the best evaluation so far (the first of equals, the
    warm start's included) is saved there: success under RL can swing between
    evaluations, and a robot should run the policy that was measured best, not the last."""

    def __init__(
        self,
        make_env,
        every: int,
        episodes: int,
        out: Path,
        seed: int = 0,
        best_path: Path | None = None,
    ):
        super().__init__()
        self.make_env, self.every, self.episodes, self.out, self.seed = (
            make_env,
            every,
            episodes,
            out,
            seed,
        )
        self.history: list[dict] = []
        self.best_path = best_path
        self.best: dict | None = None  # step, train_episodes and success_rate of the best
        self.train_episodes = 0
        self._next = every
        self._ep: dict[int, dict] = {}
        self.watch = {
            "episodes": 0,
            "env_failures": 0,
            "false_successes": 0,
            "missed_successes": 0,  # env successes the model's detection never fired on
            "abs_err_sum": 0.0,
            "frames": 0,
        }
        self._env = None

    def evaluate_now(self, model, step: int) -> dict:
        if self._env is None:
            self._env = self.make_env()
        row = {
            "step": step,
            "train_episodes": self.train_episodes,
            **run_eval_episodes(model, self._env, self.episodes, self.seed),
            **self.watch_summary(),
        }
        self.history.append(row)
        self.out.write_text(json.dumps(self.history, indent=2))
        if self.best_path is not None and (
            self.best is None or row["success_rate"] > self.best["success_rate"]
        ):
            model.save(self.best_path)
            self.best = {k: row[k] for k in ("step", "train_episodes", "success_rate")}
        if getattr(self, "model", None) is not None and step:
            self.logger.record("eval/success_rate", row["success_rate"])
            self.logger.record("watch/false_success_rate", row["false_success_rate"])
            if "q_start" in row:
                self.logger.record("eval/q_start", row["q_start"])
                self.logger.record("eval/return_start", row["return_start"])
        return row

    def _on_step(self) -> bool:
        for infos, dones in completed_steps(self):
            self._watch(infos, dones)
        if self.num_timesteps >= self._next:
            self._next += self.every
            self.evaluate_now(self.model, self.num_timesteps)
        return True

    def _watch(self, infos, dones) -> None:
        for k, (info, done) in enumerate(zip(infos, dones, strict=True)):
            ep = self._ep.setdefault(k, {"model": False, "env": False, "scored": False})
            terms = info.get("reward_terms", {})
            ep["model"] |= bool(terms.get("model_success", False))
            ep["env"] |= bool(info.get("success", False))
            ep["scored"] |= bool(terms.get("has_model", False))
            if "privileged_progress" in info and terms.get("has_model"):
                self.watch["abs_err_sum"] += abs(
                    terms["next_potential"] - info["privileged_progress"]
                )
                self.watch["frames"] += 1
            if done:
                self.train_episodes += 1
                if ep["scored"]:  # no model, no detection to judge (sparse, oracle)
                    tally_episode(self.watch, ep["model"], ep["env"])
                self._ep[k] = {"model": False, "env": False, "scored": False}

    def watch_summary(self) -> dict:
        w = self.watch
        fsr = w["false_successes"] / w["env_failures"] if w["env_failures"] else float("nan")
        successes = w["episodes"] - w["env_failures"]
        msr = w["missed_successes"] / successes if successes else float("nan")
        mae = w["abs_err_sum"] / w["frames"] if w["frames"] else float("nan")
        return {
            "false_success_rate": fsr,
            "missed_success_rate": msr,
            "progress_mae": mae,
            "watched_episodes": w["episodes"],
        }

    def _on_training_end(self) -> None:
        for infos, dones in completed_steps(self, final=True):
            self._watch(infos, dones)
        if not self.history or self.history[-1]["step"] != self.num_timesteps:
            self.evaluate_now(self.model, self.num_timesteps)
        if self._env is not None:
            self._env.close()


class SelfImitationCallback(BaseCallback):
    """Hands each successful training episode's ``(obs, action)`` pairs to
    ``DemoSAC.add_self_demos`` (self-imitation). An episode counts as successful when its
    outcome label says so at any step: ``info["success"]``, the env's success in
    simulation, the operator's label on a robot."""

    def __init__(self):
        super().__init__()
        self._eps: dict[int, tuple[list, list, bool]] = {}
        self.episodes = 0
        self.transitions = 0

    def _on_step(self) -> bool:
        obs = self.model._last_obs  # the observations the actions were taken in
        actions = self.locals["buffer_actions"]  # in the policy's [-1, 1] scale
        for k, (info, done) in enumerate(
            zip(self.locals["infos"], self.locals["dones"], strict=True)
        ):
            o, a, ok = self._eps.get(k, ([], [], False))
            o.append(np.array(obs[k], copy=True))
            a.append(np.array(actions[k], copy=True))
            ok = ok or bool(info.get("success", False))
            if done:
                if ok:
                    self.model.add_self_demos(np.stack(o), np.stack(a))
                    self.episodes += 1
                    self.transitions += len(o)
                    self.logger.record("train/self_imitation_episodes", self.episodes)
                o, a, ok = [], [], False
            self._eps[k] = (o, a, ok)
        return True
