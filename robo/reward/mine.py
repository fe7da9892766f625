"""`robo reward mine`: adversarial negatives from the exploitation search.

    robo reward mine --model runs/grm/model --reference data/drawer-close:0 \
                     --out data/drawer-close-mined --starts 8 --sequences 64

From the start states of ``--starts`` seeds (``--seed``, ``--seed`` + 1, ...), the
exploitation test's search (random shooting or CEM over temporally smoothed action
sequences) looks for what the model scores highest. Of the top ``--top_frac`` of each
search, the sequences the environment judges failed are replayed from the same start
state and recorded as rollouts (policy ``adversarial``), labelled with the environment's
outcome, into ``--out``: exactly the states the model over-scores, with the label an
operator would give. ``robo reward adapt --outcomes <out>`` (or training on the store with
the others) then teaches the model that these are not successes; re-running the
exploitation test on other seeds measures the effect.

Use seeds disjoint from the evaluation's, and only the tasks the model may be trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robo.errors import RoboError


@dataclass
class MineConfig:
    """Settings of adversarial mining."""

    # reward model: grm:<dir> (a bare folder means grm:<dir>).
    model: str = ""
    # reference demonstration for the task context, <store>:<episode>; its env is searched.
    reference: str = ""
    # store the mined rollouts are appended to (created with the model's views and size).
    out: str = ""
    # first start seed; start k uses seed + k (keep them apart from evaluation seeds).
    seed: int = 200_000
    # start states searched.
    starts: int = 4
    # action sequences per start state.
    sequences: int = 64
    # top fraction of each search examined; its env failures are recorded.
    top_frac: float = 0.1
    # search: random | cem.
    method: str = "random"
    # success margin delta for the report (default: the model folder's thresholds.json, else 0.05).
    delta: float = -1.0
    # torch threads (0: leave torch's default).
    threads: int = 0
    # JSON file the summary is written to (default: none).
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.model or not self.reference or not self.out:
            raise RoboError(
                "--model (a GRM), --reference (<store>:<episode>) and --out (a store) are required"
            )
        if ":" not in self.reference.rstrip("/").split("/")[-1]:
            raise RoboError(f"--reference {self.reference}: write it as <store>:<episode>")
        if self.starts < 1 or self.sequences < 1:
            raise RoboError("--starts and --sequences must be positive")
        if not 0.0 < self.top_frac <= 1.0:
            raise RoboError(f"--top_frac {self.top_frac} must lie in (0, 1]")
        if self.method not in ("random", "cem"):
            raise RoboError(f"--method {self.method}: use random or cem")
        if self.threads < 0:
            raise RoboError(f"--threads {self.threads} must be >= 0 (0: torch's default)")

    @property
    def spec(self) -> str:
        from robo.reward.registry import as_spec

        return as_spec(self.model)


def _delta(cfg: MineConfig) -> float:
    from robo.evaluation import DEFAULT_DELTA
    from robo.reward.evalcmd import saved_thresholds
    from robo.reward.registry import model_dir

    if cfg.delta >= 0:
        return cfg.delta
    saved = saved_thresholds(model_dir(cfg.spec))
    return saved.delta if saved is not None else DEFAULT_DELTA


def mine_adversarial(
    model,
    reference,
    env_id: str,
    out: str,
    seeds: list[int],
    sequences: int = 64,
    top_frac: float = 0.1,
    method: str = "random",
    delta: float = 0.05,
    reference_views=None,
) -> dict:
    """For each start seed: the exploitation search, then the top sequences the env judged
    failed replayed from that seed and appended to the store ``out`` (policy
    ``adversarial``, the env's outcome as label). Returns a summary with one entry per seed."""
    from robo.collect import make_env, open_or_create, rollout_to_episode
    from robo.evaluation import exploitation_test
    from sim.rollouts import ActionSequenceRollout, run_rollout

    size = int(np.atleast_1d(model.image_size)[0])
    env = make_env(env_id, model.views, size)
    runs, recorded = [], {"success": 0, "partial": 0, "failure": 0}
    try:
        store = open_or_create(
            out,
            env_id,
            model.views,
            size,
            env.observation_space.shape[0],
            env.action_space.shape[0],
        )
        for seed in tqdm(seeds, desc=f"mine {env_id}", unit="start"):
            res = exploitation_test(
                model,
                env_id,
                seed,
                reference,
                horizon=len(reference),
                n_sequences=sequences,
                top_frac=top_frac,
                method=method,
                rng=seed,
                delta=delta,
                reference_views=reference_views,
                return_actions=True,
            )
            kept = 0
            for actions, ok in zip(res.pop("top_actions"), res["top_env_success"], strict=True):
                if ok:
                    continue
                policy = ActionSequenceRollout(env, None, actions, name="adversarial")
                rollout = run_rollout(env, policy, seed, render=True, max_steps=len(actions))
                store.append_episode(rollout_to_episode(rollout, env_id))
                recorded[rollout.outcome] += 1
                kept += 1
            runs.append({**res, "recorded": kept})
    finally:
        env.close()
    return {
        "env_id": env_id,
        "out": out,
        "delta": delta,
        "exploit_rate": float(np.mean([r["exploit_rate"] for r in runs])),
        "recorded": recorded,
        "runs": runs,
    }


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def mine(cfg: MineConfig) -> dict:
    """`robo reward mine`: load the model and reference, search, record; returns a summary."""
    from robo.reward.registry import load_progress_model
    from robo.store import EpisodeStore

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    model = load_progress_model(cfg.spec)
    url, _, idx = cfg.reference.rpartition(":")
    ref_store = EpisodeStore.open(url)
    try:
        reference = ref_store.episode(int(idx))
    except (ValueError, IndexError):
        raise RoboError(
            f"--reference {cfg.reference}: {url} has episodes 0-{len(ref_store) - 1}"
        ) from None
    summary = mine_adversarial(
        model,
        reference,
        ref_store.env_id,
        cfg.out,
        [cfg.seed + k for k in range(cfg.starts)],
        sequences=cfg.sequences,
        top_frac=cfg.top_frac,
        method=cfg.method,
        delta=_delta(cfg),
        reference_views=ref_store.views,
    )
    if cfg.summary:
        import json

        Path(cfg.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.summary).write_text(json.dumps(summary, indent=1, default=_json_default))
    recorded = summary["recorded"]
    print(
        f"{cfg.out}: {sum(recorded.values())} adversarial rollouts recorded {recorded}; "
        f"exploit rate on the searched starts {summary['exploit_rate']:.3f}"
    )
    return summary
