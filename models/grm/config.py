"""Configuration of the General Reward Model (stored as ``config.json`` beside the weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum


class EncoderKind(StrEnum):
    """Per-view image encoder."""

    cnn = "cnn"  # small CNN trained from scratch (default)
    timm = "timm"  # any timm backbone, weights from a local file
    open_clip = "open_clip"  # an open_clip visual tower, weights from a local file


class Perspective(StrEnum):
    """Inference perspectives fused into the progress estimate."""

    incremental = "incremental"  # chain hops from the previous step
    forward = "forward"  # hop from the reference start frame
    backward = "backward"  # hop from the reference goal frame


ALL_PERSPECTIVES = ("incremental", "forward", "backward")


class ForwardAnchor(StrEnum):
    """What the forward-anchored perspective hops from (progress 0)."""

    episode = "episode"  # the episode's own first frame (same scene as the current frame)
    reference = "reference"  # the task context's reference start frame (another scene)


class LabelSpacing(StrEnum):
    """How a demo's frames are spread over their stage's share of progress (training labels)."""

    time = "time"  # evenly in time
    gripper = "gripper"  # by the gripper's approach to where the stage ends (states[:, :3])
    blend = "blend"  # the mean of the two: strictly increasing, so expert order is kept


@dataclass
class GRMConfig:
    """Architecture and inference settings of a GRM.

    Attributes:
        views: camera names, in order.
        image_size: ``(H, W)`` of every view.
        encoder: per-view encoder kind.
        encoder_name: timm / open_clip model name when ``encoder`` is not ``cnn``.
        encoder_weights: local weights file of that backbone (never downloaded).
        channels: CNN widths.
        encoder_resolution: side length each view is resized to before the CNN.
        encoder_grid: with the CNN, also read its feature map out average-pooled to a
            ``grid`` x ``grid`` layout (0: spatial-softmax keypoints and the mean only).
        d_model: token width of the fusion transformer.
        layers: transformer layers.
        heads: attention heads.
        num_bins: discrete hop bins over [-1, 1] (odd, so 0 is a bin centre).
        text_buckets: hashed word buckets of the task-text embedding (0: no text token).
        view_dropout: training probability of masking each view of a frame set.
        context_dropout: training probability of masking the start or goal context.
        perspectives: which perspectives inference fuses.
        forward_anchor: the forward perspective hops from the episode's own first frame
            (``episode``, the default: every episode starts at progress 0 in its own scene)
            or from the context's reference start frame (``reference``).
        fusion_alpha: alpha of the consistency weight ``w = exp(-alpha * delta**2)``.
        fusion_eps: epsilon of the relative disagreement
            ``delta = |phi_B - phi_F| / (mean + eps)``; it keeps small absolute disagreements
            near progress 0 from freezing the conservative update.
        success_delta: success when progress >= 1 - delta.
        label_spacing: how training spreads a demo's frames over a stage's share of
            progress: evenly in time (``time``) or by the gripper's approach to where the
            stage ends (``gripper``, read from ``states[:, 0:3]``, the gripper position in
            the tabletop suite's and Meta-World's states), or the mean of the two
            (``blend``, the default; time spacing on stores whose states do not hold the
            gripper position). Recorded so that one-shot adaptation labels its demo the
            same way; checkpoints saved before the option were trained with ``time``.
        num_stages: stage count of the task family (for stage read-outs), informational.
    """

    views: tuple[str, ...] = ("front", "side", "wrist")
    image_size: tuple[int, int] = (96, 96)
    encoder: EncoderKind = EncoderKind.cnn
    encoder_name: str = ""
    encoder_weights: str = ""
    channels: tuple[int, ...] = (32, 64, 64)
    encoder_resolution: int = 64
    encoder_grid: int = 0
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    num_bins: int = 41
    text_buckets: int = 512
    view_dropout: float = 0.15
    context_dropout: float = 0.2
    perspectives: tuple[str, ...] = ALL_PERSPECTIVES
    forward_anchor: ForwardAnchor = ForwardAnchor.episode
    fusion_alpha: float = 2.0
    fusion_eps: float = 1e-3
    success_delta: float = 0.05
    label_spacing: LabelSpacing = LabelSpacing.blend
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        self.image_size = tuple(int(v) for v in self.image_size)
        self.channels = tuple(int(c) for c in self.channels)
        self.perspectives = tuple(str(getattr(p, "value", p)) for p in self.perspectives)
        self.encoder = EncoderKind(self.encoder)
        try:
            self.forward_anchor = ForwardAnchor(self.forward_anchor)
        except ValueError:
            raise ValueError(
                f"GRMConfig.forward_anchor={self.forward_anchor!r}: choose episode or reference"
            ) from None
        try:
            self.label_spacing = LabelSpacing(self.label_spacing)
        except ValueError:
            raise ValueError(
                f"GRMConfig.label_spacing={self.label_spacing!r}: choose time, gripper or blend"
            ) from None
        if not self.views:
            raise ValueError("GRMConfig.views is empty: name the camera views the model sees")
        if self.num_bins < 3 or self.num_bins % 2 == 0:
            raise ValueError(f"GRMConfig.num_bins={self.num_bins} must be odd and >= 3")
        if self.d_model % self.heads:
            raise ValueError(
                f"GRMConfig.d_model={self.d_model} must be divisible by heads={self.heads}"
            )
        unknown = set(self.perspectives) - set(ALL_PERSPECTIVES)
        if unknown or not self.perspectives:
            raise ValueError(
                f"GRMConfig.perspectives {self.perspectives}: choose from {ALL_PERSPECTIVES}"
            )
        if self.fusion_alpha < 0 or self.fusion_eps <= 0:
            raise ValueError(
                f"GRMConfig: fusion_alpha={self.fusion_alpha} must be >= 0 and "
                f"fusion_eps={self.fusion_eps} > 0"
            )
        for name in ("view_dropout", "context_dropout", "success_delta"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GRMConfig.{name}={getattr(self, name)} must lie in [0, 1)")
        if self.encoder_grid < 0:
            raise ValueError(f"GRMConfig.encoder_grid={self.encoder_grid} must be >= 0")
        if self.encoder is not EncoderKind.cnn and not self.encoder_name:
            raise ValueError(
                f"GRMConfig.encoder={self.encoder.value} needs encoder_name (a model name)"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder"] = self.encoder.value
        d["forward_anchor"] = self.forward_anchor.value
        d["label_spacing"] = self.label_spacing.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GRMConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        # Checkpoints written before the option existed were trained from the reference start.
        known.setdefault("forward_anchor", ForwardAnchor.reference)
        # ... and with their demos spaced evenly in time.
        known.setdefault("label_spacing", LabelSpacing.time)
        return cls(**known)
