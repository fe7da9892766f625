"""Configuration of the unsupervised perceptual reward (stored in ``config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from models.base import ModelInputError


class EncoderKind(StrEnum):
    """Frame encoder whose intermediate features the reward selects from."""

    random_projection = "random_projection"  # pooled pixels, random projection: no weights
    timm = "timm"  # a timm backbone, weights from a local file
    grm = "grm"  # a trained GRM folder's per-view encoder


class StepWeighting(StrEnum):
    """Weights ``w_k`` of completed steps ``k = 1..K-1`` in the progress."""

    linear = "linear"  # w_k = k (later steps weigh more; the default)
    exponential = "exponential"  # w_k = 2^(k-1), as in Sermanet et al.
    uniform = "uniform"  # w_k = 1: progress = fraction of completed steps


@dataclass
class PerceptualConfig:
    """Settings of a :class:`models.perceptual.reward.PerceptualReward`.

    ``views``, ``image_size`` and ``num_steps`` are filled by :func:`fit` from the demos.

    Attributes:
        views: camera names, in order (``fit`` names them ``view0..`` when empty).
        image_size: ``(H, W)`` of every view.
        num_steps: number of discovered steps ``K`` (>= 2); ``K - 1`` step-completion classifiers.
        encoder: ``random_projection`` (default), ``timm`` or ``grm``.
        rp_scales: grid sizes the random-projection encoder pools each view to.
        rp_dim: projection width of a level with more than ``rp_dim`` pooled values.
        seed: seed of the random projection.
        timm_name: timm model name (``encoder=timm``).
        timm_layers: stage indices of the timm backbone whose pooled maps are features.
        encoder_weights: local weights file of the timm backbone (``"random"``: random init).
        encoder_input: side length frames are resized to before the timm backbone.
        grm_dir: folder of a trained GRM (``encoder=grm``).
        min_demos: fewest demos ``fit`` accepts.
        top_k: features selected per step (largest Fisher ratio).
        segment_dims: principal components of the standardised features used for step discovery.
        refine_iters: segmental k-means iterations of step discovery.
        l2: L2 penalty of the per-step logistic regressions.
        step_weighting: weights of completed steps in the progress.
        advance_prob: per-frame probability of moving on to the next step in the forward
            filter over the current step.
        fall_prob: per-frame probability of falling back one step: small, so progress is
            monotone-friendly (a single odd frame does not undo a step) but can fall.
    """

    views: tuple[str, ...] = ()
    image_size: tuple[int, ...] = ()
    num_steps: int = 0
    encoder: EncoderKind = EncoderKind.random_projection
    rp_scales: tuple[int, ...] = (1, 4, 16)
    rp_dim: int = 128
    seed: int = 0
    timm_name: str = ""
    timm_layers: tuple[int, ...] = (1, 2, 3)
    encoder_weights: str = ""
    encoder_input: int = 64
    grm_dir: str = ""
    min_demos: int = 2
    top_k: int = 32
    segment_dims: int = 16
    refine_iters: int = 10
    l2: float = 1.0
    step_weighting: StepWeighting = StepWeighting.linear
    advance_prob: float = 0.3
    fall_prob: float = 0.05

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        self.image_size = tuple(int(v) for v in self.image_size)
        self.rp_scales = tuple(int(s) for s in self.rp_scales)
        self.timm_layers = tuple(int(i) for i in self.timm_layers)
        try:
            self.encoder = EncoderKind(self.encoder)
            self.step_weighting = StepWeighting(self.step_weighting)
        except ValueError as e:
            raise ModelInputError(f"PerceptualConfig: {e}") from None
        if self.image_size and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ModelInputError(f"PerceptualConfig.image_size={self.image_size} must be (H, W)")
        if self.num_steps == 1 or self.num_steps < 0:
            raise ModelInputError(
                f"PerceptualConfig.num_steps={self.num_steps}: need at least 2 steps"
            )
        if not self.rp_scales or min(self.rp_scales) < 1 or self.rp_dim < 1:
            raise ModelInputError("PerceptualConfig.rp_scales and rp_dim must be positive")
        if self.min_demos < 1 or self.top_k < 1 or self.segment_dims < 1:
            raise ModelInputError("PerceptualConfig.min_demos, top_k and segment_dims must be >= 1")
        if not (
            0.0 <= self.advance_prob
            and 0.0 <= self.fall_prob
            and self.advance_prob + self.fall_prob <= 1.0
        ):
            raise ModelInputError(
                "PerceptualConfig.advance_prob and fall_prob must be >= 0 with a sum <= 1"
            )
        if self.l2 <= 0:
            raise ModelInputError(f"PerceptualConfig.l2={self.l2} must be positive")
        if self.encoder is EncoderKind.timm and not (self.timm_name and self.encoder_weights):
            raise ModelInputError(
                "encoder=timm needs timm_name and encoder_weights (a local file, or 'random')"
            )
        if self.encoder is EncoderKind.grm and not self.grm_dir:
            raise ModelInputError("encoder=grm needs grm_dir (a trained GRM folder)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder"], d["step_weighting"] = self.encoder.value, self.step_weighting.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PerceptualConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelInputError(f"PerceptualConfig has no field(s) {', '.join(sorted(unknown))}")
        return cls(**d)
