"""The semantic trap in numbers: discounted return of recorded rollouts under each shaping.

Scores every episode of a store with a progress model (the RL wrapper's way: reset on the
first frame, one query per step) and computes its discounted return under sparse, naive
and pbrs rewards, as an RL run with ``terminate_on_success`` would see it (the episode
ends at the first success). A reward is faithful when the expert's return is the highest;
naive shaping pays slow or failing behaviour for every step spent at partial progress.

    python bench/shaping_returns.py --model runs/grm/model --data runs/demo/rollouts \
        --demos data/pick-place [--gamma 0.99]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import report  # noqa: E402

import robo  # noqa: E402,F401  (imports torch._dynamo before Mesa EGL)
from robo.rl.train import RLConfig, demo_context, load_reward  # noqa: E402
from robo.shaping import ShapingMode, shaped_reward  # noqa: E402
from robo.store import EpisodeStore  # noqa: E402

MODES = (ShapingMode.sparse, ShapingMode.naive, ShapingMode.pbrs)


def episode_returns(model, ctx, frames, success, gamma: float) -> tuple[dict, int]:
    phi = [float(model.reset([0], [ctx], frames[:1]).progress[0])]
    phi += [float(model.predict(frames[t : t + 1], [0]).progress[0]) for t in range(1, len(frames))]
    phi, succ = np.array(phi), success.astype(float)
    end = int(np.argmax(succ)) if succ.any() else len(phi) - 1
    end = max(end, 1)
    terminated = np.zeros(end, bool)
    terminated[-1] = bool(succ[end])
    disc = gamma ** np.arange(end)
    out = {}
    for mode in MODES:
        r = shaped_reward(mode, succ[1 : end + 1], phi[:end], phi[1 : end + 1], terminated, gamma)
        out[mode.value] = float((disc * r).sum())
    return out, end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/grm/model", help="GRM folder")
    ap.add_argument("--data", default="runs/demo/rollouts", help="store of rollouts to score")
    ap.add_argument("--demos", default="data/pick-place", help="store with the reference demo")
    ap.add_argument("--env", default="tabletop/pick-place-v0")
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    model = load_reward(f"grm:{args.model}")
    ctx = demo_context(RLConfig(env=args.env, demos=args.demos), model)
    store = EpisodeStore.open(args.data)
    idx = [store.views.index(v) for v in model.views]
    per_policy: dict[str, list] = defaultdict(list)
    for i in range(len(store)):
        ep = store.episode(i)
        ret, length = episode_returns(model, ctx, ep.frames[:, idx], ep.success, args.gamma)
        per_policy[store.episode_meta(i).policy].append({**ret, "length": length})
    rows = []
    for policy, eps in sorted(per_policy.items()):
        row = {"policy": policy, "episodes": len(eps)}
        for key in ("length", *(m.value for m in MODES)):
            row[key] = float(np.mean([e[key] for e in eps]))
        rows.append(row)
    report(
        "shaping_returns",
        rows,
        ["policy", "episodes", "length", "sparse", "naive", "pbrs"],
        args.out,
    )


if __name__ == "__main__":
    main()
