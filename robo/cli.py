"""The `robo` command line: one entry point, subcommands, typed configs (draccus).

Every subcommand takes ``--config_path file.yaml`` plus dotted overrides
(``--randomization.colors true``); ``robo <command> --help`` lists the fields.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:ConfigClass, module:function)
    "collect": ("robo.collect:CollectConfig", "robo.collect:collect"),
    "preview": ("robo.preview:PreviewConfig", "robo.preview:preview"),
    "data info": ("robo.datacmd:InfoConfig", "robo.datacmd:info"),
    "reward train": ("robo.reward.train:TrainConfig", "robo.reward.train:train"),
    "reward adapt": ("robo.reward.adapt:AdaptConfig", "robo.reward.adapt:adapt"),
    "reward eval": ("robo.reward.evalcmd:EvalConfig", "robo.reward.evalcmd:run_eval"),
    "reward mine": ("robo.reward.mine:MineConfig", "robo.reward.mine:mine"),
    "reward ensemble": (
        "robo.reward.ensemble:EnsembleConfig",
        "robo.reward.ensemble:write_ensemble",
    ),
    "reward fit-perceptual": (
        "robo.reward.fitcmd:FitPerceptualConfig",
        "robo.reward.fitcmd:fit_perceptual",
    ),
    "reward serve": ("robo.serving.server:ServeConfig", "robo.serving.server:serve_forever"),
    "rl train": ("robo.rl.train:RLConfig", "robo.rl.train:train"),
    "rl compare": ("robo.rl.compare:CompareConfig", "robo.rl.compare:compare"),
    "robot run": ("robo.robotcmd:RobotRunConfig", "robo.robotcmd:run"),
    "robot record": ("robo.robotcmd:RobotRecordConfig", "robo.robotcmd:record"),
    "calibrate camera": ("calibration.cli:CameraCalibConfig", "calibration.cli:calibrate_camera"),
    "calibrate handeye": ("calibration.cli:HandEyeConfig", "calibration.cli:calibrate_handeye"),
    "calibrate reward": ("calibration.cli:RewardCalibConfig", "calibration.cli:calibrate_reward"),
    "data export": ("robo.datacmd:ExportConfig", "robo.datacmd:export"),
    "data import": ("robo.datacmd:ImportConfig", "robo.datacmd:import_"),
}
HELP = {
    "envs": "list the env ids",
    "collect": "record demonstrations / rollouts into an episode store",
    "preview": "write an MP4 of an episode, all views side by side",
    "data info": "summarise an episode store",
    "reward train": "train a General Reward Model on episode stores",
    "reward adapt": "adapt a GRM to a new task from one demonstration",
    "reward fit-perceptual": "fit an unsupervised perceptual reward from a few demos",
    "reward serve": "serve a reward model over gRPC to many robots / env workers (dynamic batching)",
    "reward eval": "evaluate a reward source on held-out episodes (VOC, MAE, outcomes, EPIC...)",
    "reward ensemble": "combine trained reward sources into one (mean or worst-case progress)",
    "reward mine": "record the action sequences a GRM over-scores as labelled failure rollouts",
    "rl compare": "compare reward conditions on the same seeds and budget (curves + table)",
    "rl train": "train a policy (SAC/PPO) with shaped rewards from a reward source, BC warm start",
    "robot run": "run a policy on a robot at a fixed rate with rewards, timing, labels, recording",
    "robot record": "record demonstrations on a robot (scripted expert on the simulated arm)",
    "calibrate camera": "camera intrinsics from ChArUco/chessboard images (or --render N self-test)",
    "calibrate handeye": "hand-eye calibration (eye-in-hand or eye-to-hand)",
    "calibrate reward": "success threshold of a reward model from labelled rollouts",
    "data export": "export a store as a LeRobotDataset v3 (lerobot extra)",
    "data import": "import a LeRobotDataset v3 into a store (lerobot extra)",
}


def _load(ref: str) -> Callable | type:
    import importlib

    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _usage() -> str:
    lines = ["usage: robo <command> [--config_path FILE.yaml] [--field value ...]", "", "commands:"]
    lines += [f"  {name:<14} {text}" for name, text in HELP.items()]
    return "\n".join(lines)


def _split(argv: list[str]) -> tuple[str | None, list[str]]:
    for n in (2, 1):
        name = " ".join(argv[:n])
        if name in COMMANDS or name in HELP:
            return name, argv[n:]
    return None, argv


def _run(name: str, args: list[str]):
    import draccus

    if name == "envs":
        import sim

        print("\n".join(sim.list_envs()))
        return None
    config_cls, fn = (_load(ref) for ref in COMMANDS[name])
    args = ["--config_path" if a == "--config" else a for a in args]  # --config is an alias
    try:
        cfg = draccus.parse(config_class=config_cls, args=args)
    except (draccus.utils.ParsingError, draccus.utils.DecodingError) as e:
        raise _parse_error(name, e) from None
    return fn(cfg)


def _parse_error(name: str, e: Exception) -> ValueError:
    """One-line error from draccus' chained exceptions: our validation message, or the bad field."""
    import re

    from robo.errors import RoboError

    chain = [e]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    if isinstance(root, ValueError) and type(root).__module__.split(".")[0] in (
        "robo",
        "sim",
        "models",
        "hardware",
        "calibration",
    ):
        return RoboError(_first_line(root))  # our own validation message
    for err in chain:
        m = re.match(r"`([\w.]+)`: (.*)", _first_line(err))
        if m:
            return RoboError(f"--{m[1]}: {m[2]} (see `robo {name} --help`)")
    return RoboError(f"{_first_line(root)} (see `robo {name} --help`)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=os.environ.get("ROBO_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    name, rest = _split(argv)
    if name is None:
        print(_usage(), file=sys.stderr if argv else sys.stdout)
        return 2 if argv and argv[0] not in ("-h", "--help") else 0
    try:
        _run(name, rest)
    except ValueError as e:  # RoboError, SimError, StoreError and validation errors
        if os.environ.get("ROBO_DEBUG"):
            raise
        print(f"robo {name}: error: {_first_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robo {name}: interrupted; complete episodes are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
