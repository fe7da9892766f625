"""`robo reward adapt`: one-shot adaptation of a GRM to a new task from one demonstration.

    robo reward adapt --model runs/grm/model --demo data/door-lock:0 --out runs/grm-door-lock
    robo reward adapt --model runs/grm-ens --demo data/door-lock:0 --out runs/ens-door-lock

An ensemble folder (``robo reward ensemble``) adapts member by member into ``<out>/member<k>``
and ``<out>`` becomes the ensemble of the adapted members, combined as before.

Hop pairs are drawn within the single demo (its first and last frames are the
reference context). A guard against forgetting keeps the weights near the general
model's (an L2 anchor to the pre-trained weights, "L2-SP"), with a short schedule and a
small learning rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from models.grm.model import GRM
from robo.errors import RoboError
from robo.reward.data import PairSampler, SamplerConfig, model_sampling
from robo.reward.train import LoopSettings, _encoder_resolution, fit


@dataclass
class AdaptConfig:
    """Settings of one-shot adaptation."""

    # folder of the general model (config.json + model.safetensors), or an ensemble of GRMs.
    model: str = ""
    # the single demonstration: <store>:<episode index>.
    demo: str = ""
    # folder of the adapted model; default <model>-adapted-<task>.
    out: str = ""
    # comma-separated stores of outcome-labelled episodes of this task (e.g. `robo robot run`
    # recordings with operator labels, or RL episodes): they refine success detection.
    outcomes: str = ""
    steps: int = 300
    groups: int = 8
    lr: float = 3e-4
    # strength of the L2 anchor to the general model's weights.
    anchor: float = 1e-2
    seed: int = 0
    # torch threads (0: leave torch's default).
    threads: int = 0
    sampler: SamplerConfig = field(
        default_factory=lambda: SamplerConfig(p_swap_context=0.0, p_outcome=0.0)
    )

    def __post_init__(self) -> None:
        if not self.model or not self.demo:
            raise RoboError("--model (a GRM folder) and --demo (<store>:<episode>) are required")
        if ":" not in self.demo.rstrip("/").split("/")[-1]:
            raise RoboError(
                f"--demo {self.demo}: write it as <store>:<episode index>, e.g. data/door-lock:0"
            )
        if self.steps < 1:
            raise RoboError("--steps must be positive")

    @property
    def store_and_episode(self) -> tuple[str, int]:
        url, _, index = self.demo.rpartition(":")
        try:
            return url, int(index)
        except ValueError:
            raise RoboError(
                f"--demo {self.demo}: the episode after ':' must be an integer"
            ) from None


def l2_anchor(reference: dict[str, torch.Tensor], weight: float):
    """``f(model) = weight * sum ||theta - theta_0||^2`` over the model's parameters."""

    def loss(model: torch.nn.Module) -> torch.Tensor:
        return weight * sum(((p - reference[n]) ** 2).sum() for n, p in model.named_parameters())

    return loss


def adapt(cfg: AdaptConfig) -> Path:
    """Fine-tune the general model on exactly one demonstration; returns the new model folder."""
    from robo.reward.ensemble import is_ensemble_dir

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if is_ensemble_dir(cfg.model):
        return adapt_ensemble(cfg)
    url, index = cfg.store_and_episode
    model = GRM.from_pretrained(cfg.model)
    outcome_urls = [u for u in cfg.outcomes.split(",") if u]
    sampler_cfg = (
        replace(cfg.sampler, p_outcome=max(cfg.sampler.p_outcome, 0.3))
        if outcome_urls
        else cfg.sampler
    )
    sampler = PairSampler(
        [url],
        model.cfg.views,
        sampler_cfg,
        seed=cfg.seed,
        episode_filter=lambda u, m: u != url or m.index == index,
        resolution=_encoder_resolution(model.cfg),
        **model_sampling(model.cfg),
        outcome_urls=outcome_urls,
    )
    task = sampler.tasks[0]
    if sampler.tasks[1:] and not any(t.rollout_ids for t in sampler.tasks[1:]):
        raise RoboError(f"--outcomes {cfg.outcomes}: no episodes labelled success or failure there")
    if task.demo_ids != [index]:
        raise RoboError(f"episode {index} of {url} is not a successful expert demonstration")
    if len(task.store.episode(index)) < 2:
        raise RoboError(f"episode {index} of {url} has fewer than 2 frames: nothing to learn from")
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = LoopSettings(
        steps=cfg.steps,
        groups=cfg.groups,
        lr=cfg.lr,
        warmup=20,
        seed=cfg.seed,
        desc="adapt GRM",
        log_every=10,
    )
    out = Path(cfg.out or f"{cfg.model.rstrip('/')}-adapted-{task.store.env_id.split('/')[-1]}")
    t0 = time.time()
    terms = fit(model, sampler, settings, None, extra_loss=l2_anchor(anchor, cfg.anchor))
    meta = dict(getattr(model, "metadata", {}))
    meta.pop("config", None)
    meta.pop("architecture", None)
    meta["adaptation"] = {
        "base_model": cfg.model,
        "demo": {"data": url, "episode": index, "env_id": task.store.env_id},
        "outcomes": {t.url: t.rollout_ids for t in sampler.tasks[1:]},
        "steps": cfg.steps,
        "wall_time_s": round(time.time() - t0, 1),
        "final_terms": terms,
    }
    model.save_pretrained(out, extra=meta)
    print(f"adapted model saved to {out} in {meta['adaptation']['wall_time_s']} s")
    return out


def adapt_ensemble(cfg: AdaptConfig) -> Path:
    """Adapt every member of an ensemble of GRMs to the demo; the adapted members form the
    new ensemble (same combine)."""
    from robo.reward.ensemble import EnsembleConfig, read_manifest, write_ensemble
    from robo.store import EpisodeStore

    specs, combine = read_manifest(cfg.model)
    not_grm = [s for s in specs if not s.startswith("grm:")]
    if not_grm:
        raise RoboError(
            f"{cfg.model}: only GRM members can be adapted, not {', '.join(not_grm)}: "
            "ensemble the GRMs alone"
        )
    url, _ = cfg.store_and_episode
    task = EpisodeStore.open(url).env_id.split("/")[-1]
    out = Path(cfg.out or f"{cfg.model.rstrip('/')}-adapted-{task}")
    adapted = [
        adapt(replace(cfg, model=s.partition(":")[2], out=str(out / f"member{k}")))
        for k, s in enumerate(specs)
    ]
    write_ensemble(EnsembleConfig(",".join(str(a) for a in adapted), str(out), combine))
    return out
