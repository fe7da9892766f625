"""Reward-query latency and throughput of the GRM (a fused 3-perspective query per control step).

A query is everything one control step needs: all views of the current frame encoded
once, the incremental, forward- and backward-anchored hops in one batched fusion pass,
fusion and post-processing. Reports p50/p99 latency at batch 1 and throughput at larger
batches, on CPU (and CUDA when present). Median of ``--runs`` timed runs after warm-up.

    python bench/reward_latency.py [--model runs/grm/model] [--threads 2] [--batches 1,64,512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from models.base import TaskContext  # noqa: E402
from models.grm.config import GRMConfig  # noqa: E402
from models.grm.inference import GRMProgressModel  # noqa: E402
from models.grm.model import GRM  # noqa: E402


def latencies(pm: GRMProgressModel, batch: int, steps: int, size: tuple[int, int], views: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, batch, views, *size, 3), dtype=np.uint8)
    ctx = TaskContext("pick up the red cube", frames[0, 0], frames[1, 0])
    pm.reset(list(range(batch)), [ctx] * batch, frames[0])
    for k in range(5):  # warm-up
        pm.predict(frames[k % 8])
    out = []
    for k in range(steps):
        if pm.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pm.predict(frames[k % 8])
        if pm.device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="GRM folder (default: a freshly initialised default GRM)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--batches", default="1,64,512")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = GRM.from_pretrained(args.model) if args.model else GRM(GRMConfig())
    cfg = model.cfg
    rows = []
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        pm = GRMProgressModel(model, device=device)
        for batch in map(int, args.batches.split(",")):
            steps = max(5, args.steps // max(1, batch // 16))
            runs = [latencies(pm, batch, steps, cfg.image_size, len(cfg.views)) for _ in range(args.runs)]
            p50 = [np.percentile(r, 50) for r in runs]
            p99 = [np.percentile(r, 99) for r in runs]
            qps = [batch / np.mean(r) for r in runs]
            rows.append({"device": device, "threads": torch.get_num_threads() if device == "cpu" else None,
                         "batch": batch, "p50_ms": 1e3 * float(np.median(p50)), "p99_ms": 1e3 * float(np.median(p99)),
                         "queries_per_s": float(np.median(qps)), "qps_min": float(min(qps)), "qps_max": float(max(qps)),
                         "views": len(cfg.views), "size": cfg.image_size[0], "perspectives": len(pm.perspectives)})
    report("reward_latency", rows, ["device", "threads", "batch", "p50_ms", "p99_ms", "queries_per_s", "qps_min",
                                    "qps_max", "views", "size", "perspectives"], args.out)


if __name__ == "__main__":
    main()
