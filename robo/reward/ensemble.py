"""`robo reward ensemble`: combine trained reward sources into one (``ensemble:<dir>``).

    robo reward ensemble --members runs/a/model,runs/b/model --out runs/ens/model
    robo reward eval --model ensemble:runs/ens/model --data data/pp-eval --calibrate true

The folder holds ``ensemble.json``: the member specs (paths relative to the folder, so it
can be moved together with its members) and how to combine them. It is a model folder like
a GRM's: calibration saves ``thresholds.json`` in it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from robo.errors import RoboError

MANIFEST = "ensemble.json"
_PATH_KINDS = ("grm", "vlm", "perceptual", "ensemble")


@dataclass
class EnsembleConfig:
    """Settings of `robo reward ensemble`."""

    # comma-separated reward sources (a bare folder means grm:<dir>, an ensemble folder ensemble:<dir>).
    members: str = ""
    # the ensemble folder to write.
    out: str = ""
    # mean (default) or min (the most pessimistic member: a worst-case reward).
    combine: str = "mean"

    def __post_init__(self) -> None:
        if not self.members or not self.out:
            raise RoboError(
                "--members (comma-separated model folders or specs) and --out (a folder) are required"
            )


def member_specs(members: str) -> list[str]:
    """``--members`` as specs; bare folders become ``grm:`` or ``ensemble:`` by what they hold."""
    from robo.reward.registry import as_spec

    return [as_spec(m.strip()) for m in members.split(",") if m.strip()]


def write_ensemble(cfg: EnsembleConfig) -> Path:
    """Check that the members load and fit together, then write the folder's manifest."""
    from models.base import ModelInputError
    from models.ensemble import EnsembleProgressModel
    from robo.reward.registry import load_progress_model

    specs = member_specs(cfg.members)
    out = Path(cfg.out)
    try:
        EnsembleProgressModel([load_progress_model(s) for s in specs], cfg.combine)
    except ModelInputError as e:
        raise RoboError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    stored = []
    for s in specs:
        kind, _, arg = s.partition(":")
        if kind in _PATH_KINDS:
            arg = os.path.relpath(Path(arg).resolve(), out.resolve())
        stored.append(f"{kind}:{arg}")
    (out / MANIFEST).write_text(
        json.dumps({"members": stored, "combine": cfg.combine}, indent=2) + "\n"
    )
    print(f"ensemble of {len(specs)} ({cfg.combine}) written to {out}")
    return out


def read_manifest(directory: str | Path) -> tuple[list[str], str]:
    """An ensemble folder's member specs (paths resolved against the folder) and combine."""
    root = Path(directory)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise RoboError(
            f"{root} has no {MANIFEST}: write one with `robo reward ensemble --members ... --out {root}`"
        )
    try:
        data = json.loads(manifest.read_text())
        specs, combine = list(data["members"]), str(data.get("combine", "mean"))
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RoboError(
            f"{manifest} is not an ensemble manifest (a JSON object with a members list): rewrite it "
            "with `robo reward ensemble`"
        ) from None
    resolved = []
    for s in specs:
        kind, _, arg = str(s).partition(":")
        if kind in _PATH_KINDS and not Path(arg).is_absolute():
            arg = os.path.normpath(root / arg)
        resolved.append(f"{kind}:{arg}")
    return resolved, combine


def load_ensemble(directory: str):
    """Registry loader for ``ensemble:<dir>``."""
    from models.base import ModelInputError
    from models.ensemble import EnsembleProgressModel
    from robo.reward.registry import load_progress_model

    specs, combine = read_manifest(directory)
    members = [load_progress_model(s) for s in specs]
    try:
        return EnsembleProgressModel(members, combine)
    except ModelInputError as e:
        raise RoboError(f"{Path(directory) / MANIFEST}: {e}") from None


def is_ensemble_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()
