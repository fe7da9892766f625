"""`robo reward train`: train a GRM on episode stores (single process or torchrun DDP).

    robo reward train --data data/pick-place,data/stack --config configs/grm/default.yaml
    torchrun --nproc_per_node 2 -m robo.cli reward train --data ... --config ...

Writes ``<out>/model`` (config.json + model.safetensors, with the tasks and episodes it
saw), ``<out>/checkpoint`` (weights + optimiser state, for ``--resume true``) and
TensorBoard logs in ``<out>/tb``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models.grm.config import GRMConfig
from models.grm.model import GRM, ROLES
from robo.errors import RoboError
from robo.reward.data import PairSampler, SamplerConfig, model_sampling

log = logging.getLogger(__name__)


def is_training_task(env_id: str) -> bool:
    """The general model's training set: our own tabletop tasks plus Meta-World MT10."""
    from sim.metaworld_env import MT10_TASKS

    return env_id.startswith("tabletop/") or env_id in {f"metaworld/{t}" for t in MT10_TASKS}


@dataclass
class TrainConfig:
    """Settings of a GRM training run."""

    # comma-separated episode stores (one per task).
    data: str = ""
    # run folder.
    out: str = "runs/grm"
    # network and inference settings.
    model: GRMConfig = field(default_factory=GRMConfig)
    # pair sampling.
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # optimisation steps.
    steps: int = 1500
    # groups per batch (each group: pairs_per_group pairs sharing a context).
    groups: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # weight of the outcome (success) loss.
    outcome_weight: float = 0.5
    seed: int = 0
    # continue from <out>/checkpoint.
    resume: bool = False
    # start from a trained model's weights (a GRM folder): its architecture replaces
    # --model's, and the new model records what both runs saw.
    init: str = ""
    # comma-separated outcome-only stores (labelled rollouts, e.g. `robo reward mine`
    # failures): pooled with the rollouts of their env's store in --data.
    outcomes: str = ""
    log_every: int = 25
    checkpoint_every: int = 250
    # torch threads (0: leave torch's default).
    threads: int = 0
    # allow tasks outside the general model's training set (own tasks + MT10).
    allow_any_task: bool = False

    def __post_init__(self) -> None:
        if not self.data:
            raise RoboError(
                "--data is required: comma-separated episode stores of the training tasks"
            )
        if self.steps < 1 or self.groups < 1:
            raise RoboError("--steps and --groups must be positive")
        if not self.lr > 0:
            raise RoboError(f"--lr {self.lr} must be positive")

    @property
    def urls(self) -> list[str]:
        return [u.strip() for u in self.data.split(",") if u.strip()]

    @property
    def outcome_urls(self) -> list[str]:
        return [u.strip() for u in self.outcomes.split(",") if u.strip()]


# ---------------------------------------------------------------------------- loss
def two_hot(target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Soft one-hot of continuous targets on the two nearest bins ``(B, num_bins)``."""
    n = len(bins)
    pos = (target.clamp(-1, 1) + 1) / 2 * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w_hi = pos - lo.float()
    out = torch.zeros(len(target), n, device=target.device)
    out.scatter_add_(1, lo[:, None], (1 - w_hi)[:, None])
    out.scatter_add_(1, hi[:, None], w_hi[:, None])
    return out


def interval_nll(logp: torch.Tensor, bins: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """``-log P(lo <= H < hi)`` per row: the likelihood of an interval-censored hop label
    (an outcome says which interval the final progress lies in, not where)."""
    inside = (bins[None] >= lo[:, None] - 1e-6) & (bins[None] < hi[:, None] - 1e-6)
    return -torch.logsumexp(logp.masked_fill(~inside, -torch.inf), -1).clamp(max=20.0)


def grm_loss(logits: torch.Tensor, batch: dict, bins: torch.Tensor, outcome_weight: float):
    """Cross-entropy on hop bins (rows with a hop label) + the outcome rows' interval
    likelihood (success, partial or failure puts the final frame's hop in an interval)."""
    hop = batch["hop"]
    labelled = torch.isfinite(hop)
    logp = logits.log_softmax(-1)
    hop_loss = -(two_hot(hop[labelled], bins) * logp[labelled]).sum(-1).mean()
    mae = ((logp[labelled].exp() * bins).sum(-1) - hop[labelled]).abs().mean()
    terms = {"hop_ce": hop_loss, "hop_mae": mae}
    loss = hop_loss + mae  # the expectation is what inference uses: train it directly too
    if len(batch["outcome_idx"]):
        rows = batch["outcome_idx"]
        out_loss = interval_nll(logp[rows], bins, batch["outcome_lo"], batch["outcome_hi"]).mean()
        terms["outcome_nll"] = out_loss
        loss = loss + outcome_weight * out_loss
    terms["loss"] = loss
    return loss, terms


def add_masks(
    batch: dict, views: int, view_p: float, ctx_p: float, rng: np.random.Generator
) -> dict:
    """View dropout (each view of each role, at least one kept) and context dropout."""
    b = len(batch["hop"])
    for role in ROLES:
        m = rng.random((b, views)) < view_p
        m[m.all(1), rng.integers(views)] = False  # keep at least one view
        if role in ("start", "goal"):
            m[rng.random(b) < ctx_p] = True
        batch[f"{role}_mask"] = torch.from_numpy(m)
    return batch


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    path: Path, model: GRM, opt: torch.optim.Optimizer, step: int, rng_state: dict
) -> None:
    """Weights + optimiser state as safetensors, counters as JSON (no pickle)."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    state = opt.state_dict()
    tensors = {
        f"{pid}.{k}": v
        for pid, s in state["state"].items()
        for k, v in s.items()
        if torch.is_tensor(v)
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "optimizer.safetensors"))
    meta = {"step": step, "param_groups": state["param_groups"], "rng": rng_state}
    tmp = path / "trainer_state.json.tmp"
    tmp.write_text(json.dumps(meta, default=str))
    tmp.replace(path / "trainer_state.json")  # the commit point of a checkpoint


def load_checkpoint(path: Path, model: GRM, opt: torch.optim.Optimizer) -> tuple[int, dict]:
    meta = json.loads((path / "trainer_state.json").read_text())
    model.load_state_dict(GRM.from_pretrained(path).state_dict())
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), meta.get("rng", {})


# ---------------------------------------------------------------------------- distributed
def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun; initialises the process group (gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


# ---------------------------------------------------------------------------- training
@dataclass
class LoopSettings:
    """What the optimisation loop needs (shared by training and one-shot adaptation)."""

    steps: int
    groups: int
    lr: float
    weight_decay: float = 1e-4
    outcome_weight: float = 0.5
    warmup: int = 100
    log_every: int = 25
    checkpoint_every: int = 250
    seed: int = 0
    desc: str = "train GRM"


def fit(
    model: GRM,
    sampler: PairSampler,
    s: LoopSettings,
    out: Path | None,
    *,
    resume: bool = False,
    rank: int = 0,
    world: int = 1,
    extra_loss=None,
) -> dict:
    """Optimise ``model`` on batches from ``sampler``; checkpoints and TensorBoard under ``out``.

    Args:
        extra_loss: optional ``f(model) -> Tensor`` added to the loss (e.g. an anchor to
            the pre-trained weights during adaptation).

    Returns:
        The last step's loss terms as floats.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    start = 0
    ckpt = out / "checkpoint" if out is not None else None
    if resume and ckpt is not None and (ckpt / "trainer_state.json").is_file():
        start, _ = load_checkpoint(ckpt, model, opt)
        sampler.rng = np.random.default_rng(s.seed + 1000 * rank + start)
    elif resume:
        log.warning("no checkpoint in %s: starting from scratch", out)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    def schedule(step: int) -> float:
        return (
            min(1.0, (step + 1) / s.warmup) * 0.5 * (1 + np.cos(np.pi * min(step / s.steps, 1.0)))
        )

    writer = _writer(out) if rank == 0 and out is not None else None
    model.train()
    mask_rng = np.random.default_rng(s.seed + 7 + rank)
    cfg = model.cfg
    terms: dict = {}
    bar = tqdm(range(start, s.steps), desc=s.desc, initial=start, total=s.steps, disable=rank != 0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = s.lr * schedule(step)
        batch = add_masks(
            sampler.sample(s.groups),
            len(cfg.views),
            cfg.view_dropout,
            cfg.context_dropout,
            mask_rng,
        )
        loss, terms = grm_loss(net(batch), batch, model.bins, s.outcome_weight)
        if extra_loss is not None:
            terms["anchor"] = extra_loss(model)
            loss = loss + terms["anchor"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if writer is not None and (step % s.log_every == 0 or step == s.steps - 1):
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in terms.items() if k != "loss"})
            for k, v in terms.items():
                writer.add_scalar(f"train/{k}", v.item(), step)
            writer.add_scalar("train/lr", opt.param_groups[0]["lr"], step)
        if (
            rank == 0
            and ckpt is not None
            and ((step + 1) % s.checkpoint_every == 0 or step == s.steps - 1)
        ):
            save_checkpoint(ckpt, model, opt, step + 1, {})
    if writer is not None:
        writer.close()
    model.eval()
    return {k: round(float(v.detach()), 4) for k, v in terms.items()}


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) and return the folder of the final model."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.allow_any_task:
        _check_training_tasks(cfg.urls + cfg.outcome_urls)
    rank, world = dist_info()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    init = GRM.from_pretrained(cfg.init) if cfg.init else None
    model_cfg = init.cfg if init is not None else cfg.model
    sampler = PairSampler(
        cfg.urls,
        model_cfg.views,
        cfg.sampler,
        seed=cfg.seed + 1000 * rank,
        resolution=_encoder_resolution(model_cfg),
        **model_sampling(model_cfg),
        outcome_urls=cfg.outcome_urls,
    )
    _check_image_size(sampler, model_cfg)
    model = init if init is not None else GRM(cfg.model)
    settings = LoopSettings(
        steps=cfg.steps,
        groups=cfg.groups,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        outcome_weight=cfg.outcome_weight,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        seed=cfg.seed,
    )
    t0 = time.time()
    terms = fit(model, sampler, settings, out, resume=cfg.resume, rank=rank, world=world)
    final = out / "model"
    if rank == 0:
        info = {
            "training": {
                "tasks": sampler.describe(),
                "steps": cfg.steps,
                "world_size": world,
                "wall_time_s": round(time.time() - t0, 1),
                "final_terms": terms,
                "config": _jsonable(asdict(cfg)),
            }
        }
        if init is not None:  # what the starting weights saw, recursively
            info["training"]["init"] = {
                "model": cfg.init,
                "training": init.metadata.get("training"),
            }
        model.save_pretrained(final, extra=info)
        print(f"saved {final} ({cfg.steps} steps, {info['training']['wall_time_s']} s)")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return final


def _encoder_resolution(model_cfg: GRMConfig) -> int | None:
    return model_cfg.encoder_resolution if model_cfg.encoder.value == "cnn" else None


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: getattr(o, "value", str(o))))


def _writer(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"))


def _check_training_tasks(urls: list[str]) -> None:
    from robo.store import EpisodeStore

    for url in urls:
        env_id = EpisodeStore.open(url).env_id
        if not is_training_task(env_id):
            raise RoboError(
                f"{url} holds {env_id}, which is not a training task of the general model "
                "(own tabletop tasks + Meta-World MT10): adapt to it with `robo reward adapt` instead"
            )


def _check_image_size(sampler: PairSampler, model_cfg: GRMConfig) -> None:
    for t in sampler.tasks:
        if tuple(t.store.image_size) != tuple(model_cfg.image_size):
            raise RoboError(
                f"{t.url} has {t.store.image_size[0]} px frames but the model expects "
                f"{model_cfg.image_size[0]} px: set --model.image_size or record at that size"
            )
