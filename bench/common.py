"""Shared helpers of the benchmark scripts: machine description, timing, table + JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def repeat(fn: Callable[[], float], runs: int = 5, warmup: int = 1) -> dict:
    """Call ``fn`` (which returns a rate) ``warmup + runs`` times; median, min, max of the runs."""
    for _ in range(warmup):
        fn()
    rates = [fn() for _ in range(runs)]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": runs}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def report(name: str, rows: list[dict], columns: list[str], out: str | None) -> Path:
    """Print a fixed-width table and write ``{machine, rows}`` as JSON."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))
    path = Path(out or f"runs/bench/{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "rows": rows}, indent=2))
    print(f"\nmachine: {machine()}\nwrote {path}")
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3f}"
    return "" if v is None else str(v)
