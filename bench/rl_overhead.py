"""What a learned reward adds to the wall time of an RL step.

Times stable-baselines3 SAC training steps (env step + gradient updates, no evaluation)
with the sparse reward (no rendering, no model) and with pbrs from a GRM (the model's
views rendered every step, one fused 3-perspective query per step), at each update-to-data
ratio asked for, on the same env, seed and thread count. pbrs runs twice: synchronous
(render and score inside the env step) and deferred (``robo.deferred_reward``: render and
score in a worker process while the learner takes its gradient steps; the default). Also times the two parts of the
reward on their own: rendering the model's views and the model's query. Median, min and
max of ``--runs`` timed runs after a warm-up.

    python bench/rl_overhead.py --model runs/demo/grm/model [--env tabletop/pick-place-v0] \
        [--utd 1,3] [--steps 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import repeat, report, timed  # noqa: E402

import robo  # noqa: E402,F401  (imports torch._dynamo before Mesa EGL)
from robo.rl.train import RLConfig, build  # noqa: E402
from robo.shaping import ShapingConfig  # noqa: E402


def step_times(cfgs: dict[str, RLConfig], steps: int, runs: int) -> dict[str, dict]:
    """Median/min/max ms per SAC training step (env step + ``utd`` gradient updates) of each
    setting. The settings are timed in turns within every round, so that a slow spell of a
    shared machine hits them alike."""
    setups = {}
    for name, cfg in cfgs.items():
        _, _, venv, algo = build(cfg)
        algo.learning_starts = 0
        algo.learn(100, progress_bar=False)  # warm-up: buffers, first episodes, worker start
        setups[name] = (venv, algo)
    times = {name: [] for name in cfgs}
    for _ in range(runs):
        for name, (_, algo) in setups.items():
            t = timed(lambda a=algo: a.learn(steps, reset_num_timesteps=False, progress_bar=False))
            times[name].append(1000.0 * t / steps)
    for venv, _ in setups.values():
        venv.close()
    return {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": runs}
        for name, v in times.items()
    }


def reward_parts_ms(cfg: RLConfig, runs: int, n: int = 100) -> dict:
    """ms per step of rendering the model's views and of the model's query, on their own."""
    model, ctx, venv, _ = build(cfg)
    env = venv.venv.envs[0]
    u = env.unwrapped
    idx = [list(u.views).index(v) for v in model.views]
    env.reset(seed=0)
    frames = u.render_views()[idx][None]
    model.reset([0], [ctx], frames)
    rng = np.random.default_rng(0)

    def render():
        def run():
            for _ in range(n):
                env.step(rng.uniform(-1, 1, 4).astype(np.float32))
                u.render_views()

        t_all = timed(run)

        def phys():
            for _ in range(n):
                env.step(rng.uniform(-1, 1, 4).astype(np.float32))

        return 1000.0 * (t_all - timed(phys)) / n

    def query():
        return 1000.0 * timed(lambda: [model.predict(frames, [0]) for _ in range(n)]) / n

    res = {"render": repeat(render, runs=runs), "model": repeat(query, runs=runs)}
    venv.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="tabletop/pick-place-v0")
    ap.add_argument("--model", default="runs/demo/grm/model", help="GRM folder")
    ap.add_argument("--utd", default="1,3", help="gradient steps per env step, comma-separated")
    ap.add_argument("--steps", type=int, default=500, help="SAC steps per timed run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not Path(args.model).is_dir():
        sys.exit(f"error: no GRM folder at {args.model}: train one (make demo) or pass --model")

    def cfg(mode: str, utd: int, deferred: bool = False) -> RLConfig:
        reward = "none" if mode == "sparse" else f"grm:{args.model}"
        return RLConfig(
            env=args.env,
            reward=reward,
            shaping=ShapingConfig(mode=mode),
            steps=args.steps,
            utd=utd,
            threads=args.threads,
            deferred_reward=deferred,
            out="/tmp/rl_overhead",
        )

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for utd in [int(x) for x in args.utd.split(",")]:
        t = step_times(
            {
                "sparse": cfg("sparse", utd),
                "sync": cfg("pbrs", utd),
                "deferred": cfg("pbrs", utd, deferred=True),
            },
            args.steps,
            args.runs,
        )
        sparse, pbrs, deferred = t["sparse"], t["sync"], t["deferred"]
        rows.append(
            {
                "utd": utd,
                "sparse_ms": sparse["median"],
                "sparse_range": f"{sparse['min']:.1f}-{sparse['max']:.1f}",
                "pbrs_sync_ms": pbrs["median"],
                "sync_range": f"{pbrs['min']:.1f}-{pbrs['max']:.1f}",
                "sync_overhead_pct": 100.0 * (pbrs["median"] / sparse["median"] - 1.0),
                "pbrs_deferred_ms": deferred["median"],
                "deferred_range": f"{deferred['min']:.1f}-{deferred['max']:.1f}",
                "deferred_overhead_pct": 100.0 * (deferred["median"] / sparse["median"] - 1.0),
            }
        )
    parts = reward_parts_ms(cfg("pbrs", 1), args.runs)
    for r in rows:
        r["render_ms"] = parts["render"]["median"]
        r["model_ms"] = parts["model"]["median"]
    report(
        "rl_overhead",
        rows,
        [
            "utd",
            "sparse_ms",
            "sparse_range",
            "pbrs_sync_ms",
            "sync_range",
            "sync_overhead_pct",
            "pbrs_deferred_ms",
            "deferred_range",
            "deferred_overhead_pct",
            "render_ms",
            "model_ms",
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
