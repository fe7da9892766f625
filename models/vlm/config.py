"""Configuration of the VLM (CLIP goal-baseline projection) reward, stored as ``config.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from models.base import ModelInputError


class TargetMode(StrEnum):
    """Where the goal ``g`` and baseline ``b`` embeddings come from."""

    text = "text"  # g, b: mean normalised embeddings of the target / baseline prompts
    goal_image = "goal_image"  # g, b: embeddings of the context's goal / start frames, per view


class Fusion(StrEnum):
    """How per-view progress is fused into one value."""

    mean = "mean"
    max = "max"
    weighted = "weighted"  # mean weighted by ``view_weights``


@dataclass
class VLMConfig:
    """Settings of a :class:`models.vlm.clip_reward.VLMReward`.

    Attributes:
        arch: open_clip architecture name (a built-in such as ``ViT-B-32`` or one
            registered with ``open_clip.add_model_config``).
        pretrained: open_clip pretrained tag the weights come from; names the default
            weights file and picks the tag's image normalisation. Never downloaded.
        weights: local weights file (``.safetensors``, ``.bin``, ``.pt``). Empty: look for
            ``$ROBO_WEIGHTS_DIR/open_clip/<arch>_<pretrained>.{safetensors,bin,pt}``
            (default dir ``~/.cache/robo/weights``), then in the Hugging Face cache.
            ``"random"``: random initialisation (tests and experiments only). A relative
            path in a saved ``config.json`` is relative to that folder.
        clip_image_size: CLIP input side length; ``None`` keeps the architecture's. Frames
            are resized to it inside the model (shortest side, centre crop, CLIP's mean/std).
        views: camera names the model expects, in order.
        image_size: ``(H, W)`` of the frames the model is given.
        mode: ``text`` (prompts) or ``goal_image`` (one-shot: the demo's goal and start frames).
        target_prompts: prompts describing the goal state (text mode).
        baseline_prompts: prompts describing the task-neutral baseline (text mode).
        text_from_context: text mode: use the environment's ``TaskContext.text`` as its
            single target prompt when given (otherwise ``target_prompts``).
        alpha: projection strength: ``P = alpha d d^T / |d|^2 + (1 - alpha) I``, in [0, 1].
        fusion: ``mean``, ``max`` or ``weighted`` fusion of per-view progress.
        view_weights: one non-negative weight per view (``weighted`` fusion only).
        calibration: fixed ``(r_start, r_goal)`` reward range used to normalise progress
            when the task context has no reference start and goal frames (text mode):
            one pair for all views or one per view; empty = none (then reset needs
            reference frames). :meth:`VLMReward.calibrate` fills it from example frames.
        success_delta: success when progress >= 1 - success_delta.
        int8: on CPU, int8 dynamic quantization of the image tower's linear layers (about
            1.3x faster with VNNI; embeddings within cosine 0.9998 of fp32).
    """

    arch: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    weights: str = ""
    clip_image_size: int | None = None
    views: tuple[str, ...] = ("front", "side", "wrist")
    image_size: tuple[int, int] = (96, 96)
    mode: TargetMode = TargetMode.text
    target_prompts: tuple[str, ...] = ("a robot gripper has placed the cube on the target",)
    baseline_prompts: tuple[str, ...] = ("a robot arm and a cube on a table",)
    text_from_context: bool = False
    alpha: float = 0.5
    fusion: Fusion = Fusion.mean
    view_weights: tuple[float, ...] = ()
    calibration: tuple[tuple[float, float], ...] = ()
    success_delta: float = 0.05
    int8: bool = False

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        self.image_size = tuple(int(v) for v in self.image_size)
        self.target_prompts = tuple(str(p) for p in self.target_prompts)
        self.baseline_prompts = tuple(str(p) for p in self.baseline_prompts)
        self.view_weights = tuple(float(w) for w in self.view_weights)
        self.calibration = tuple((float(lo), float(hi)) for lo, hi in self.calibration)
        try:
            self.mode = TargetMode(self.mode)
            self.fusion = Fusion(self.fusion)
        except ValueError as e:
            raise ModelInputError(f"VLMConfig: {e}") from None
        if not self.arch:
            raise ModelInputError(
                "VLMConfig.arch is empty: name an open_clip architecture such as ViT-B-32"
            )
        if not self.views:
            raise ModelInputError("VLMConfig.views is empty: name the camera views the model sees")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ModelInputError(f"VLMConfig.image_size={self.image_size} must be (H, W)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ModelInputError(
                f"VLMConfig.alpha={self.alpha} must lie in [0, 1] (0: cosine, 1: full projection)"
            )
        if not 0.0 <= self.success_delta < 1.0:
            raise ModelInputError(
                f"VLMConfig.success_delta={self.success_delta} must lie in [0, 1)"
            )
        if self.clip_image_size is not None and self.clip_image_size < 8:
            raise ModelInputError(f"VLMConfig.clip_image_size={self.clip_image_size} is too small")
        if self.mode is TargetMode.text:
            self._check_prompts()
        self._check_views()

    def _check_prompts(self) -> None:
        for name in ("target_prompts", "baseline_prompts"):
            prompts = getattr(self, name)
            if not prompts or not all(p.strip() for p in prompts):
                raise ModelInputError(
                    f"VLMConfig.{name} is empty or has a blank prompt: give at least one prompt"
                )
        if set(self.target_prompts) == set(self.baseline_prompts):
            raise ModelInputError(
                "VLMConfig: baseline prompts equal the target prompts (d = g - b = 0): describe a neutral baseline"
            )

    def _check_views(self) -> None:
        if self.fusion is Fusion.weighted:
            w = self.view_weights
            if len(w) != len(self.views) or min(w) < 0 or sum(w) <= 0:
                raise ModelInputError(
                    f"VLMConfig.view_weights={w}: weighted fusion needs {len(self.views)} non-negative weights with a positive sum"
                )
        elif self.view_weights:
            raise ModelInputError(
                f"VLMConfig.view_weights are only used with fusion=weighted, not {self.fusion.value}"
            )
        if self.calibration:
            if len(self.calibration) not in (1, len(self.views)):
                raise ModelInputError(
                    f"VLMConfig.calibration needs 1 or {len(self.views)} (r_start, r_goal) pairs"
                )
            if any(abs(hi - lo) < 1e-6 for lo, hi in self.calibration):
                raise ModelInputError(
                    "VLMConfig.calibration has r_start == r_goal: recalibrate on frames that differ"
                )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mode"], d["fusion"] = self.mode.value, self.fusion.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VLMConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelInputError(f"VLMConfig has no field(s) {', '.join(sorted(unknown))}")
        return cls(**d)
