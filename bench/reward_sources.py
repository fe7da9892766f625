"""All reward sources side by side on the same evaluation episodes, plus VLM speed.

Sources: a trained GRM (``--grm``), the perceptual reward fitted on 5 demos, the VLM
reward with a tiny randomly initialised CLIP (plumbing only: its numbers mean nothing)
and, when a real open_clip ViT-B-32 weights file is present, with it. Every source is
scored with the same ``robo reward eval`` figures (VOC, MAE, Pearson, regress tracking,
outcome accuracy, false successes, EPIC distance, exploitation test).

Speed: a VLM query for 3 views at 224 px with ViT-B-32 (architecture cost is the same
with random weights), median of several runs.

    python bench/reward_sources.py --demos data/pick-place --data data/pp-eval --grm runs/grm/model
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from robo.cli import main as robo  # noqa: E402
from robo.store import EpisodeStore  # noqa: E402

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_vlm(out: Path, views, size) -> str:
    """A VLM-RM config over a tiny random CLIP, registered with open_clip (plumbing only)."""
    import open_clip
    import yaml

    folder = out / "clip_configs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "robo-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    cfg = {
        "arch": "robo-tiny-clip",
        "pretrained": "",
        "weights": "random",
        "views": list(views),
        "image_size": [size, size],
        "mode": "goal_image",
    }
    path = out / "vlm_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return f"vlm:{path}"


def real_vlm() -> str | None:
    from models.vlm import load_config

    try:
        load_config("configs/vlm/goal_image.yaml")
        from models.vlm import load

        load("configs/vlm/goal_image.yaml")
        return "vlm:configs/vlm/goal_image.yaml"
    except ValueError as e:  # weights not present: say so in the table
        print(f"real CLIP weights unavailable: {e}")
        return None


def evaluate(spec: str, data: str, reference: str, out: Path, exploit: int) -> dict:
    args = [
        "reward",
        "eval",
        "--model",
        spec,
        "--data",
        data,
        "--reference",
        reference,
        "--out",
        str(out),
        "--video_episodes",
        "0",
        "--exploit_sequences",
        str(exploit),
        "--exploit_starts",
        "1",
    ]
    if robo(args):
        raise SystemExit(f"evaluation of {spec} failed")
    return json.loads((out / "summary.json").read_text())


def vlm_speed(runs: int, views: int = 3, size: int = 224, int8: bool = False) -> dict:
    from models.base import TaskContext
    from models.vlm import VLMConfig, VLMReward

    cfg = VLMConfig(
        arch="ViT-B-32",
        pretrained="",
        weights="random",
        views=tuple(f"v{i}" for i in range(views)),
        image_size=(size, size),
        mode="goal_image",
        int8=int8,
    )
    model = VLMReward.from_config(cfg)
    rng = np.random.default_rng(0)
    frames, start, goal = (
        rng.integers(0, 255, (1, views, size, size, 3), dtype=np.uint8) for _ in range(3)
    )
    model.reset([0], [TaskContext(None, start[0], goal[0])], frames)
    model.predict(frames)
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(5):
            model.predict(frames)
        rates.append(5 / (time.perf_counter() - t0))
    return {"median": float(np.median(rates)), "min": min(rates), "max": max(rates)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--demos",
        required=True,
        help="store with expert demos of the task (perceptual fit, reference)",
    )
    ap.add_argument(
        "--data", required=True, help="held-out evaluation store (expert and non-expert rollouts)"
    )
    ap.add_argument("--grm", default="", help="a trained GRM folder")
    ap.add_argument("--out", default="runs/reward_sources")
    ap.add_argument("--exploit", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    store = EpisodeStore.open(a.data)
    reference = f"{a.demos}:0"
    sources = {}
    if a.grm:
        sources["grm"] = f"grm:{a.grm}"
    perc = out / "perceptual"
    robo(
        [
            "reward",
            "fit-perceptual",
            "--demos",
            a.demos,
            "--episodes",
            "5",
            "--num_steps",
            "4",
            "--out",
            str(perc),
        ]
    )
    sources["perceptual (5 demos)"] = f"perceptual:{perc}"
    sources["vlm (tiny random CLIP: plumbing)"] = tiny_vlm(out, store.views, store.image_size[0])
    real = real_vlm()
    if real:
        sources["vlm (ViT-B-32 weights)"] = real
    rows = []
    for name, spec in sources.items():
        s = evaluate(spec, a.data, reference, out / "eval" / name.split(" ")[0], a.exploit)
        rows.append(
            {
                "source": name,
                "episodes": s.get("episodes"),
                "voc": s.get("voc"),
                "mae": s.get("progress_mae"),
                "pearson": s.get("progress_pearson"),
                "regress": s.get("regress_tracking"),
                "outcome_acc": s.get("outcome_accuracy"),
                "false_succ": s.get("false_success_rate"),
                "epic": s.get("epic_distance"),
                "exploit": (s.get("exploitation") or {}).get("exploit_rate"),
            }
        )
    for int8 in (False, True):
        speed = vlm_speed(a.runs, int8=int8)
        rows.append(
            {
                "source": f"VLM ViT-B-32 speed{' int8' if int8 else ''}, 3 views @ 224 px: "
                f"{speed['median']:.1f} q/s (min {speed['min']:.1f}, max {speed['max']:.1f}, "
                f"{torch.get_num_threads()} threads)"
            }
        )
    report(
        "reward_sources",
        rows,
        [
            "source",
            "episodes",
            "voc",
            "mae",
            "pearson",
            "regress",
            "outcome_acc",
            "false_succ",
            "epic",
            "exploit",
        ],
        str(out / "reward_sources.json"),
    )


if __name__ == "__main__":
    main()
