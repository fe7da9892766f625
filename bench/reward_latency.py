"""Reward-query latency and throughput of the GRM, in process and through the reward server.

A query is everything one control step needs: all views of the current frame encoded
once, the incremental, forward- and backward-anchored hops in one batched fusion pass,
fusion and post-processing.

In process (``--modes inprocess``): p50/p99 latency at batch 1 and throughput at larger
batches, on CPU (and CUDA when present: the plain float32 model and the fast path of
``models.grm.fast``). Median of ``--runs`` timed runs after warm-up, with min and max.

Through the server (``--modes server``): a reward server (``python -m robo.serving.server``)
is started in a subprocess on loopback; ``--clients`` threads, each a robot with its own
client id and ``--envs-per-client`` environments, query it at ``--rate`` Hz for
``--duration`` seconds (after ``--warmup`` seconds), each at a random phase. Reported per
client and over all: p50/p99/max latency, missed deadlines (a query slower than the
period, or failed), the server's own time per request, the mean batch the server formed,
and the overhead against the in-process p50/p99 of the same batch on the same device,
measured in the same run. The "all" row gives the median over 5 equal time windows of
the run, with min and max.

    python bench/reward_latency.py [--model runs/grm/model] [--threads 2] [--batches 1,64,512]
    python bench/reward_latency.py --modes server --clients 16 --rate 30 --duration 60
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import report  # noqa: E402

from models.base import TaskContext  # noqa: E402
from models.ensemble import EnsembleProgressModel  # noqa: E402
from models.grm.config import GRMConfig  # noqa: E402
from models.grm.fast import make_fast, warmup  # noqa: E402
from models.grm.inference import GRMProgressModel  # noqa: E402
from models.grm.model import GRM  # noqa: E402

WINDOWS = 5


# ---------------------------------------------------------------------- in process
def latencies(
    pm: GRMProgressModel, batch: int, steps: int, size: tuple[int, int], views: int
) -> np.ndarray:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, batch, views, *size, 3), dtype=np.uint8)
    ctx = TaskContext("pick up the red cube", frames[0, 0], frames[1, 0])
    pm.reset(list(range(batch)), [ctx] * batch, frames[0])
    for k in range(5):  # warm-up
        pm.predict(frames[k % 8])
    out = []
    cuda = _first(pm).device.type == "cuda"
    for k in range(steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pm.predict(frames[k % 8])
        if cuda:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return np.array(out)


def inprocess_row(pm: GRMProgressModel, variant: str, batch: int, args, cfg) -> dict:
    steps = max(5, args.steps // max(1, batch // 16))
    runs = [latencies(pm, batch, steps, cfg.image_size, len(cfg.views)) for _ in range(args.runs)]
    p50 = [np.percentile(r, 50) for r in runs]
    p99 = [np.percentile(r, 99) for r in runs]
    qps = [batch / np.mean(r) for r in runs]
    device = _first(pm).device.type
    return {
        "device": device,
        "variant": variant,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "batch": batch,
        "p50_ms": 1e3 * float(np.median(p50)),
        "p99_ms": 1e3 * float(np.median(p99)),
        "queries_per_s": float(np.median(qps)),
        "qps_min": float(min(qps)),
        "qps_max": float(max(qps)),
        "views": len(cfg.views),
        "size": cfg.image_size[0],
        "perspectives": len(_first(pm).perspectives),
    }


def _first(pm) -> GRMProgressModel:
    """The GRM of a query (an ensemble's first member)."""
    return pm.members[0] if isinstance(pm, EnsembleProgressModel) else pm


def variants(model: GRM, device: str, compile: bool, ensemble: int = 1):
    """(name, progress model) pairs measured on ``device``: plain, an ensemble of ``ensemble``
    copies (as costly as that many trained members), and the fast path where it differs."""
    yield "plain", GRMProgressModel(copy.deepcopy(model), device=device)
    if ensemble > 1:
        members = [GRMProgressModel(copy.deepcopy(model), device=device) for _ in range(ensemble)]
        yield f"ensemble-{ensemble}", EnsembleProgressModel(members)
    if device == "cuda" or compile:
        pm = make_fast(GRMProgressModel(copy.deepcopy(model), device=device), compile=compile)
        if compile:
            warmup(pm, 64)
        s = pm.model.settings
        yield (
            f"fast-{s.dtype}{'-compiled' if s.compiled else ''}{'-graphs' if s.cuda_graphs else ''}",
            pm,
        )


def run_inprocess(model: GRM, args) -> list[dict]:
    rows = []
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        for name, pm in variants(model, device, args.compile, args.ensemble):
            for batch in map(int, args.batches.split(",")):
                rows.append(inprocess_row(pm, name, batch, args, model.cfg))
    return rows


# ---------------------------------------------------------------------- through the server
def start_server(model_dir: str, token: str, args, device: str) -> tuple[subprocess.Popen, str]:
    """Start ``python -m robo.serving.server`` on a free loopback port; return (process, url)."""
    cmd = [
        sys.executable,
        "-m",
        "robo.serving.server",
        "--model",
        f"grm:{model_dir}",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--device",
        device,
        "--max_batch",
        str(args.max_batch),
        "--max_wait_ms",
        str(args.max_wait_ms),
        "--threads",
        str(args.threads or 0),
        "--compile",
        str(args.compile).lower(),
        "--max_queue",
        str(max(256, 4 * args.clients)),
    ]
    env = {**os.environ, "ROBO_REWARD_TOKEN": token, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(
                f"reward server exited ({proc.wait()}): {proc.stderr.read().strip()[-2000:]}"
            )
        m = re.search(r"listening on (\S+):(\d+)", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, f"grpc://127.0.0.1:{m[2]}"
    proc.kill()
    raise SystemExit("reward server did not start within 600 s")


def client_loop(
    url: str, token: str, k: int, args, cfg, barrier: threading.Barrier, out: dict
) -> None:
    """One robot: reset, warm up, then query at ``args.rate`` Hz until the run ends."""
    from robo.serving.client import RemoteProgressModel

    rng = np.random.default_rng(k)
    envs = args.envs_per_client
    frames = rng.integers(0, 255, (8, envs, len(cfg.views), *cfg.image_size, 3), dtype=np.uint8)
    period = 1.0 / args.rate
    rec = {"lat": [], "server_ms": [], "batch_rows": [], "t": [], "errors": 0}
    with RemoteProgressModel(url, token=token, timeout_s=max(1.0, 5 * period)) as model:
        ids = list(range(envs))
        model.reset(
            ids, [TaskContext("pick up the red cube", frames[0, 0], frames[1, 0])] * envs, frames[0]
        )
        barrier.wait()
        start = time.perf_counter()
        t_timed, t_end = start + args.warmup, start + args.warmup + args.duration
        next_tick = start + rng.uniform(0, period)  # robots are not in phase
        step = 0
        while True:
            now = time.perf_counter()
            if next_tick >= t_end:
                break
            time.sleep(max(0.0, next_tick - now))
            t0 = time.perf_counter()
            try:
                model.predict(frames[step % 8], ids)
                ok = True
            except Exception:  # noqa: BLE001 - a failed query is a missed deadline
                ok = False
            dt = time.perf_counter() - t0
            if t0 >= t_timed:
                rec["t"].append(t0 - t_timed)
                rec["lat"].append(dt if ok else float("inf"))
                rec["errors"] += not ok
                if ok:
                    rec["server_ms"].append(model.last_reply.server_ms)
                    rec["batch_rows"].append(model.last_reply.batch_rows)
            step += 1
            next_tick += period
            if (
                time.perf_counter() - next_tick > period
            ):  # fell a whole tick behind: re-anchor, as a robot would
                next_tick = time.perf_counter()
    out[k] = rec


def pct(x, q) -> float:
    return 1e3 * float(np.percentile(x, q)) if len(x) else float("nan")


def server_rows(recs: dict, args, base: dict) -> list[dict]:
    period = 1.0 / args.rate
    rows = []

    def row(name, lat, server_ms, batch_rows, errors):
        lat = np.asarray(lat)
        finite = lat[np.isfinite(lat)]
        return {
            "client": name,
            "rate_hz": args.rate,
            "queries": len(lat),
            "achieved_hz": len(lat) / args.duration / (1 if name != "all" else args.clients),
            "p50_ms": pct(finite, 50),
            "p99_ms": pct(finite, 99),
            "max_ms": 1e3 * float(finite.max()) if len(finite) else None,
            "missed": int((lat > period).sum()),
            "missed_pct": 100.0 * float((lat > period).mean()) if len(lat) else None,
            "errors": errors,
            "server_p50_ms": float(np.median(server_ms)) if server_ms else None,
            "mean_batch": float(np.mean(batch_rows)) if batch_rows else None,
            "overhead_p50_ms": pct(finite, 50) - base["p50_ms"],
            "overhead_p99_ms": pct(finite, 99) - base["p99_ms"],
        }

    for k in sorted(recs):
        r = recs[k]
        rows.append(row(str(k), r["lat"], r["server_ms"], r["batch_rows"], r["errors"]))
    lat = np.concatenate([recs[k]["lat"] for k in recs])
    t = np.concatenate([recs[k]["t"] for k in recs])
    total = row(
        "all",
        lat,
        [x for k in recs for x in recs[k]["server_ms"]],
        [x for k in recs for x in recs[k]["batch_rows"]],
        sum(recs[k]["errors"] for k in recs),
    )
    # p50/p99 per time window: median (min, max) over the windows
    win = np.minimum((t / args.duration * WINDOWS).astype(int), WINDOWS - 1)
    for q in (50, 99):
        vals = [
            pct(lat[(win == w) & np.isfinite(lat)], q)
            for w in range(WINDOWS)
            if ((win == w) & np.isfinite(lat)).any()
        ]
        if vals:
            total[f"p{q}_ms"], total[f"p{q}_min"], total[f"p{q}_max"] = (
                float(np.median(vals)),
                min(vals),
                max(vals),
            )
    total["overhead_p50_ms"] = total["p50_ms"] - base["p50_ms"]
    total["overhead_p99_ms"] = total["p99_ms"] - base["p99_ms"]
    rows.append(total)
    return rows


def run_server(model: GRM, model_dir: str, args) -> tuple[list[dict], dict]:
    device = (
        args.server_device
        if args.server_device != "auto"
        else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    # the in-process reference: the same configuration as the server, same batch, same run
    pm = make_fast(GRMProgressModel(copy.deepcopy(model), device=device), compile=args.compile)
    if args.compile:
        warmup(pm, args.envs_per_client)
    base = inprocess_row(pm, "served-config", args.envs_per_client, args, model.cfg)
    del pm
    token = secrets.token_hex(16)
    proc, url = start_server(model_dir, token, args, device)
    try:
        from robo.serving.client import RemoteProgressModel

        with RemoteProgressModel(url, token=token) as probe:
            before = probe.info()
            recs: dict = {}
            barrier = threading.Barrier(args.clients)
            threads = [
                threading.Thread(
                    target=client_loop, args=(url, token, k, args, model.cfg, barrier, recs)
                )
                for k in range(args.clients)
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            after = probe.info()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if len(recs) != args.clients:
        raise SystemExit(
            f"only {len(recs)} of {args.clients} clients finished: see the errors above"
        )
    rows = server_rows(recs, args, base)
    calls = after.model_calls - before.model_calls
    summary = {
        "device": device,
        "clients": args.clients,
        "rate_hz": args.rate,
        "duration_s": args.duration,
        "envs_per_client": args.envs_per_client,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "inprocess_p50_ms": base["p50_ms"],
        "inprocess_p99_ms": base["p99_ms"],
        "server_requests": after.requests - before.requests,
        "server_model_calls": calls,
        "requests_per_model_call": (after.requests - before.requests) / calls if calls else None,
        "client_threads_in_one_process": True,
    }
    return rows, summary


# ---------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default="", help="GRM folder (default: a freshly initialised default GRM)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads, here and in the server (0: default)",
    )
    ap.add_argument("--modes", default="inprocess,server", help="inprocess, server or both")
    ap.add_argument("--batches", default="1,64,512", help="in-process batch sizes")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--devices", default="cpu,cuda", help="in-process devices (cuda skipped when absent)"
    )
    ap.add_argument(
        "--compile", action="store_true", help="torch.compile the fast path (CUDA graphs on CUDA)"
    )
    ap.add_argument("--server-device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--clients", type=int, default=16, help="concurrent robots querying the server")
    ap.add_argument("--rate", type=float, default=30.0, help="control rate of each robot, Hz")
    ap.add_argument("--duration", type=float, default=10.0, help="timed seconds through the server")
    ap.add_argument("--warmup", type=float, default=2.0, help="untimed seconds before that")
    ap.add_argument("--envs-per-client", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument(
        "--ensemble", type=int, default=1, help="also time an ensemble of N members (in process)"
    )
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument(
        "--out", default=None, help="JSON of the in-process table (server: same name + _server)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = set(args.modes.split(","))
    model = GRM.from_pretrained(args.model) if args.model else GRM(GRMConfig())
    if "inprocess" in modes:
        rows = run_inprocess(model, args)
        report(
            "reward_latency",
            rows,
            [
                "device",
                "variant",
                "threads",
                "batch",
                "p50_ms",
                "p99_ms",
                "queries_per_s",
                "qps_min",
                "qps_max",
                "views",
                "size",
                "perspectives",
            ],
            args.out,
        )
        print()
    if "server" in modes:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = args.model or str(model.save_pretrained(Path(tmp) / "grm"))
            rows, summary = run_server(model, model_dir, args)
        out = (
            None
            if args.out is None
            else str(Path(args.out).with_name(Path(args.out).stem + "_server.json"))
        )
        print(f"through the server: {summary}")
        for r in rows:
            r["summary"] = summary if r["client"] == "all" else None
        report(
            "reward_latency_server",
            rows,
            [
                "client",
                "rate_hz",
                "queries",
                "achieved_hz",
                "p50_ms",
                "p99_ms",
                "max_ms",
                "missed",
                "missed_pct",
                "errors",
                "server_p50_ms",
                "mean_batch",
                "overhead_p50_ms",
                "overhead_p99_ms",
            ],
            out,
        )


if __name__ == "__main__":
    main()
