"""Unsupervised perceptual reward after Sermanet et al. 2016, behind the progress-model contract.

:func:`fit` learns a task-specific reward from a handful of demos (``(T, V, H, W, 3)``
uint8 videos) in seconds:

1. every frame is encoded (``features.py``: pooled intermediate features, all views
   concatenated) and standardised with the demos' mean and std;
2. ``K`` steps are discovered without labels (``steps.discover_steps``: DP segmentation
   of the time-aligned average demo minimising within-segment variance, refined by
   segmental k-means against shared step prototypes);
3. for each step ``k = 0..K-1`` the ``top_k`` features with the largest Fisher ratio
   ``(mu1 - mu0)^2 / (var1 + var0)`` between the step's frames and all other frames are
   selected, and a class-balanced, L2-regularised logistic regression on them gives the
   detector output ``p_k = P(in step k)``.

Each step's detector is one-vs-rest ("in step k" against the other steps' frames), so a
step is a compact region of feature space. Per environment a forward (HMM) filter tracks
a distribution over the current step: left-to-right transitions (advance one step with
``advance_prob``, fall back one with ``fall_prob``, stay otherwise, a small floor to any
step) weighted by the detector outputs. Progress is a weighted count of completed steps,
``sum_j w_j P(step >= j) / sum_j w_j`` over ``j = 1..K-1`` with increasing ``w_j``
(``step_weighting``): monotone-friendly (one odd frame does not undo a step, and a step
is in effect reached only through the previous ones) yet able to fall when the task is
undone.
The first frame of an episode is scored on its own (uniform prior). Success is the
probability of being in the last step; confidence is the strongest detector output.
The task context is not used: the model is fitted to one task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from models.base import ModelInputError, ProgressOutput, TaskContext, check_frames
from models.perceptual.config import EncoderKind, PerceptualConfig, StepWeighting
from models.perceptual.features import build_encoder, encode_frames
from models.perceptual.steps import discover_steps, fisher_scores, fit_logistic

CONFIG_FILE, WEIGHTS_FILE, ARCH = "config.json", "model.safetensors", "perceptual"
PARAMS = ("feat_mean", "feat_std", "selected", "coef", "bias")
EMISSION_FLOOR = 1e-3  # no detector output rules a step out entirely


def transition_matrix(k: int, advance: float, fall: float) -> torch.Tensor:
    """Left-to-right step transitions ``(K, K)``: advance one step with ``advance``, fall back one
    with ``fall``, stay otherwise; a small floor lets the filter recover from any state."""
    t = torch.zeros(k, k)
    for i in range(k):
        t[i, min(i + 1, k - 1)] += advance
        t[i, max(i - 1, 0)] += fall
        t[i, i] += 1.0 - advance - fall
    t += 1e-3
    return t / t.sum(1, keepdim=True)


def step_weights(kind: StepWeighting, n: int) -> torch.Tensor:
    k = torch.arange(1, n + 1, dtype=torch.float32)
    return {"linear": k, "exponential": 2.0 ** (k - 1), "uniform": torch.ones(n)}[kind.value]


class PerceptualReward:
    """A fitted perceptual reward; build it with :func:`fit` or :meth:`from_pretrained`.

    Args:
        cfg: a complete configuration (``views``, ``image_size``, ``num_steps`` set).
        params: fitted tensors ``feat_mean``, ``feat_std`` ``(F,)``, ``selected`` (long)
            and ``coef`` ``(K, top_k)``, ``bias`` ``(K,)`` of the ``K`` step detectors.
        encoder: the frame encoder (built from ``cfg`` when omitted).
        fit_info: what fitting found (step boundaries per demo, timings), saved with the model.
    """

    def __init__(
        self,
        cfg: PerceptualConfig,
        params: dict[str, torch.Tensor],
        encoder=None,
        fit_info: dict | None = None,
        device: str | torch.device = "cpu",
    ):
        if not cfg.views or not cfg.image_size or cfg.num_steps < 2:
            raise ModelInputError(
                "PerceptualReward needs a fitted config (views, image_size, num_steps): use fit()"
            )
        self.cfg = cfg
        self.device = torch.device(device)
        self.views = tuple(cfg.views)
        self.image_size = tuple(cfg.image_size)
        self.encoder = (encoder if encoder is not None else build_encoder(cfg)).to(self.device)
        self.params = {k: params[k].to(self.device) for k in PARAMS}
        if self.params["coef"].shape[0] != cfg.num_steps:
            raise ModelInputError(
                f"fitted parameters hold {self.params['coef'].shape[0]} steps, the config says {cfg.num_steps}"
            )
        self.step_w = step_weights(cfg.step_weighting, cfg.num_steps - 1).to(self.device)
        self.fit_info = fit_info or {}
        self.transition = transition_matrix(cfg.num_steps, cfg.advance_prob, cfg.fall_prob).to(
            self.device
        )
        self._belief: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ inference
    def _check(self, frames, views, what: str) -> torch.Tensor:
        if views is not None and tuple(views) != self.views:
            raise ModelInputError(
                f"{what}: the perceptual reward needs all views ({', '.join(self.views)}), got {tuple(views)}"
            )
        return check_frames(frames, self.views, self.image_size, what)

    @torch.inference_mode()
    def step_probabilities(self, frames) -> torch.Tensor:
        """Outputs ``(B, K)`` of the one-vs-rest step detectors, ``P(in step k)`` (not normalised)."""
        f = self._check(frames, None, "frames").to(self.device)
        return self._probs(f)

    def _probs(self, frames: torch.Tensor) -> torch.Tensor:
        p = self.params
        z = (encode_frames(self.encoder, frames) - p["feat_mean"]) / p["feat_std"]
        logits = (z[:, p["selected"]] * p["coef"]).sum(-1) + p["bias"]
        return torch.sigmoid(logits)

    def _progress(self, belief: torch.Tensor) -> torch.Tensor:
        """Weighted count of completed steps from a distribution ``(B, K)`` over the current step."""
        completed = belief.flip(1).cumsum(1).flip(1)[:, 1:]  # P(step >= j), j = 1..K-1
        return ((completed * self.step_w).sum(1) / self.step_w.sum()).clamp(0.0, 1.0)

    def _update(self, belief: torch.Tensor | None, probs: torch.Tensor) -> torch.Tensor:
        """One forward-filter step: predict with the left-to-right transitions, weigh by the detectors."""
        prior = (
            torch.full_like(probs, 1.0 / probs.shape[1])
            if belief is None
            else belief @ self.transition
        )
        post = prior * (probs + EMISSION_FLOOR)
        return post / post.sum(1, keepdim=True)

    def _output(self, belief: torch.Tensor, probs: torch.Tensor) -> ProgressOutput:
        return ProgressOutput(
            progress=self._progress(belief).float().cpu(),
            success=belief[:, -1].float().cpu(),
            confidence=probs.max(1).values.float().cpu(),
        )

    @torch.inference_mode()
    def progress_curve(self, video, filtered: bool = True) -> np.ndarray:
        """Progress ``(T,)`` over one video ``(T, V, H, W, 3)``, stateless (for evaluation);
        ``filtered=False`` scores every frame on its own (no temporal filter)."""
        f = self._check(video, None, "video").to(self.device)
        probs = self._probs(f)
        if not filtered:
            return self._progress(self._update(None, probs)).cpu().numpy()
        beliefs, belief = [], None
        for t in range(len(probs)):
            belief = self._update(belief, probs[t : t + 1])
            beliefs.append(belief)
        return self._progress(torch.cat(beliefs)).cpu().numpy()

    @torch.inference_mode()
    def reset(
        self, env_indices: Sequence[int], contexts: Sequence[TaskContext], frames, views=None
    ) -> ProgressOutput:
        """Start episodes (contexts are not used: the reward is fitted to one task); returns
        the progress of the first frames, scored on their own."""
        env_indices = [int(i) for i in env_indices]
        if len(contexts) != len(env_indices):
            raise ModelInputError(
                f"reset got {len(env_indices)} env indices but {len(contexts)} contexts"
            )
        f = self._check(frames, views, "first frames")
        if f.shape[0] != len(env_indices):
            raise ModelInputError(
                f"reset got {f.shape[0]} first frame sets for {len(env_indices)} env indices"
            )
        probs = self._probs(f.to(self.device))
        belief = self._update(None, probs)
        for k, i in enumerate(env_indices):
            self._belief[i] = belief[k]
        return self._output(belief, probs)

    @torch.inference_mode()
    def predict(
        self, frames, env_indices: Sequence[int] | None = None, views=None
    ) -> ProgressOutput:
        """Progress of the current frames ``(B, V, H, W, 3)``; one batched encoder pass."""
        f = self._check(frames, views, "frames")
        env_indices = (
            list(range(f.shape[0])) if env_indices is None else [int(i) for i in env_indices]
        )
        if len(env_indices) != f.shape[0]:
            raise ModelInputError(f"{f.shape[0]} frame sets but {len(env_indices)} env indices")
        missing = [i for i in env_indices if i not in self._belief]
        if missing:
            raise ModelInputError(f"env indices {missing} were never reset: call reset() first")
        probs = self._probs(f.to(self.device))
        belief = self._update(torch.stack([self._belief[i] for i in env_indices]), probs)
        for k, i in enumerate(env_indices):
            self._belief[i] = belief[k]
        return self._output(belief, probs)

    # ------------------------------------------------------------------ persistence
    def _saves_encoder(self) -> bool:
        return self.cfg.encoder is EncoderKind.random_projection or (
            self.cfg.encoder is EncoderKind.timm and self.cfg.encoder_weights == "random"
        )

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (config + fit info) and ``model.safetensors`` (fitted tensors,
        plus the encoder when it has no weights file of its own)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.params.items()}
        if self._saves_encoder():
            tensors.update(
                {
                    f"encoder.{k}": v.detach().cpu().contiguous()
                    for k, v in self.encoder.state_dict().items()
                }
            )
        meta = {"architecture": ARCH, "config": self.cfg.to_dict(), "fit": self.fit_info}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        save_file(tensors, str(directory / WEIGHTS_FILE))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> PerceptualReward:
        """Load a folder written by :meth:`save_pretrained`."""
        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise ModelInputError(
                f"{directory} is not a perceptual reward folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
        try:
            meta = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ModelInputError(f"{cfg_path} is corrupt ({e.msg}): re-save the model") from None
        if meta.get("architecture") != ARCH:
            raise ModelInputError(
                f"{directory} holds a {meta.get('architecture')!r} model, not a perceptual reward"
            )
        try:
            tensors = load_file(str(w_path))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise ModelInputError(
                f"{w_path} is corrupt or not safetensors ({type(e).__name__}): re-save the model"
            ) from None
        cfg = PerceptualConfig.from_dict(meta["config"])
        missing = [k for k in PARAMS if k not in tensors]
        if missing:
            raise ModelInputError(
                f"{w_path} lacks {', '.join(missing)}: not a perceptual reward checkpoint"
            )
        encoder = build_encoder(cfg)
        enc_state = {
            k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")
        }
        if enc_state:
            try:
                encoder.load_state_dict(enc_state)
            except RuntimeError:
                raise ModelInputError(
                    f"{w_path} does not match the encoder in {cfg_path}: wrong checkpoint?"
                ) from None
        return cls(cfg, tensors, encoder=encoder, fit_info=meta.get("fit"), device=device)


# ---------------------------------------------------------------------- fitting
def _check_demos(
    demos, cfg: PerceptualConfig, num_steps: int, views
) -> tuple[list[torch.Tensor], tuple[str, ...]]:
    if isinstance(demos, np.ndarray | torch.Tensor) and demos.ndim == 5:
        demos = [demos]
    demos = list(demos)
    if len(demos) < cfg.min_demos:
        raise ModelInputError(
            f"fit needs at least {cfg.min_demos} demos, got {len(demos)}: record more or lower min_demos"
        )
    if num_steps < 2:
        raise ModelInputError(
            f"num_steps={num_steps}: the perceptual reward needs at least 2 steps"
        )
    first = demos[0]
    if getattr(first, "ndim", 0) != 5:
        raise ModelInputError(
            f"demo 0 must have shape (T, V, H, W, 3), got {tuple(getattr(first, 'shape', ()))}"
        )
    views = tuple(views or cfg.views or (f"view{i}" for i in range(first.shape[1])))
    size = tuple(cfg.image_size) or tuple(first.shape[2:4])
    out = [check_frames(d, views, size, f"demo {i}") for i, d in enumerate(demos)]
    shortest = min(len(d) for d in out)
    if num_steps > shortest:
        raise ModelInputError(
            f"requested {num_steps} steps but the shortest demo has {shortest} frames"
        )
    return out, views


def _pca(z: np.ndarray, dims: int) -> np.ndarray:
    """Scores on the top ``dims`` principal components (eigh of the smaller Gram matrix)."""
    zc = z - z.mean(0)
    if len(zc) <= zc.shape[1]:
        vals, vecs = np.linalg.eigh(zc @ zc.T)
        top = np.argsort(vals)[::-1][:dims]
        return vecs[:, top] * np.sqrt(np.clip(vals[top], 0.0, None))
    vals, vecs = np.linalg.eigh(zc.T @ zc)
    return zc @ vecs[:, np.argsort(vals)[::-1][:dims]]


def fit(
    demos,
    num_steps: int,
    config: PerceptualConfig | None = None,
    views: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> PerceptualReward:
    """Fit a perceptual reward to demos (see module docstring).

    Args:
        demos: uint8 videos ``(T_i, V, H, W, 3)``, same views and size.
        num_steps: number of steps ``K >= 2`` to discover.
        config: encoder and fitting settings (defaults: random-projection features).
        views: camera names (default ``config.views``, else ``view0..``).
        device: torch device of the encoder.

    Raises:
        ModelInputError: too few demos, fewer frames than steps, bad frame shapes or config.
    """
    cfg = config or PerceptualConfig()
    t0 = time.perf_counter()
    videos, views = _check_demos(demos, cfg, num_steps, views)
    cfg = replace(cfg, views=views, image_size=tuple(videos[0].shape[2:4]), num_steps=num_steps)
    encoder = build_encoder(cfg).to(device)
    lengths = [len(v) for v in videos]
    feats = encode_frames(encoder, torch.cat(videos).to(device)).cpu().double().numpy()
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mean) / std
    splits = np.cumsum(lengths)[:-1]
    labels = discover_steps(
        np.split(_pca(z, cfg.segment_dims), splits), num_steps, cfg.refine_iters
    )
    y_all = np.concatenate(labels)
    k = min(cfg.top_k, z.shape[1])
    selected, coef, bias = [], [], []
    for step in range(num_steps):
        y = y_all == step
        idx = np.argsort(-fisher_scores(z, y), kind="stable")[:k]
        w, b = fit_logistic(z[:, idx], y, cfg.l2)
        selected.append(idx)
        coef.append(w)
        bias.append(b)
    params = {
        "feat_mean": torch.tensor(mean, dtype=torch.float32),
        "feat_std": torch.tensor(std, dtype=torch.float32),
        "selected": torch.tensor(np.stack(selected), dtype=torch.long),
        "coef": torch.tensor(np.stack(coef), dtype=torch.float32),
        "bias": torch.tensor(bias, dtype=torch.float32),
    }
    info = {
        "num_demos": len(videos),
        "demo_lengths": lengths,
        "boundaries": [(np.flatnonzero(np.diff(lab)) + 1).tolist() for lab in labels],
        "num_features": int(z.shape[1]),
        "fit_seconds": round(time.perf_counter() - t0, 3),
    }
    return PerceptualReward(cfg, params, encoder=encoder, fit_info=info, device=device)
