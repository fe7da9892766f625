"""Simulation and episode-store throughput.

Env steps/s with 3 views rendered every step at 64, 96 and 128 px; physics-only steps/s
(no rendering); episode-store write and read MB/s of frames. Median, min and max of
``--runs`` timed runs after a warm-up.

    python bench/sim_throughput.py [--envs tabletop/pick-place-v0,metaworld/pick-place-v3] [--runs 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import repeat, report, timed  # noqa: E402

import sim  # noqa: E402
from robo.store import Episode, EpisodeStore  # noqa: E402

VIEWS = {"tabletop": ("front", "side", "wrist"), "metaworld": ("front", "side", "wrist")}


def env_rate(env, steps: int, render: bool) -> float:
    env.reset(seed=0)
    u = env.unwrapped
    rng = np.random.default_rng(0)

    def run():
        for _ in range(steps):
            _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
            if render:
                u.render_views()
            if term or trunc:
                env.reset()

    return steps / timed(run)


def store_rates(size: int, steps: int = 200) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (steps, 3, size, size, 3), dtype=np.uint8)
    frames[:, :, : size // 2] = 128  # rendered frames compress; keep part of the image flat
    ep = Episode(
        frames=frames,
        states=np.zeros((steps, 24), np.float32),
        actions=np.zeros((steps, 4), np.float32),
        env_reward=np.zeros(steps, np.float32),
        success=np.zeros(steps, bool),
        stage=np.zeros(steps, np.int16),
        privileged_progress=np.zeros(steps, np.float32),
        task="bench",
        env_id="bench/x-v0",
        seed=0,
        policy="expert",
        outcome="failure",
    )
    mb = frames.nbytes / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        store = EpisodeStore.create(
            f"{tmp}/s",
            views=("a", "b", "c"),
            image_size=(size, size),
            env_id="bench/x-v0",
            state_dim=24,
            action_dim=4,
        )
        write = mb / timed(lambda: store.append_episode(ep))
        reader = EpisodeStore.open(f"{tmp}/s")
        read = mb / timed(lambda: reader.episode(0))
    return write, read


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--envs", default="tabletop/pick-place-v0,metaworld/pick-place-v3")
    ap.add_argument("--sizes", default="64,96,128")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for env_id in args.envs.split(","):
        if env_id not in sim.list_envs():
            print(f"skipping {env_id}: not available")
            continue
        views = VIEWS[env_id.split("/")[0]]
        env = sim.make(env_id, views=views, image_size=64)
        r = repeat(lambda e=env: env_rate(e, args.steps * 5, render=False), args.runs)
        rows.append({"what": f"{env_id} physics only", "unit": "steps/s", **r})
        env.close()
        for size in map(int, args.sizes.split(",")):
            env = sim.make(env_id, views=views, image_size=size)
            r = repeat(lambda e=env: env_rate(e, args.steps, render=True), args.runs)
            rows.append({"what": f"{env_id} 3 views @ {size}px", "unit": "steps/s", **r})
            env.close()
    for size in map(int, args.sizes.split(",")):
        rates = [store_rates(size) for _ in range(args.runs + 1)][1:]
        for k, label in enumerate(("write", "read")):
            vals = [r[k] for r in rates]
            rows.append(
                {
                    "what": f"store {label} 3 views @ {size}px",
                    "unit": "MB/s",
                    "median": float(np.median(vals)),
                    "min": min(vals),
                    "max": max(vals),
                    "runs": args.runs,
                }
            )
    report("sim_throughput", rows, ["what", "unit", "median", "min", "max", "runs"], args.out)


if __name__ == "__main__":
    main()
