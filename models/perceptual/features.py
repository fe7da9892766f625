"""Frame encoders for the perceptual reward: intermediate features per view, concatenated.

* ``random_projection`` (default, no weights): each view average-pooled to a few grid
  sizes (``rp_scales``, coarse to fine, the "layers"); a level with more than ``rp_dim``
  values is projected to ``rp_dim`` by a fixed Gaussian matrix (Johnson-Lindenstrauss),
  smaller levels are kept as pixels.
* ``timm``: a timm backbone by name, weights from a local file; the spatial means of the
  feature maps of ``timm_layers`` (``forward_intermediates``).
* ``grm``: a trained GRM's per-view encoder (``GRM.from_pretrained``); the spatial means
  of its CNN's ReLU activations plus its output features.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.base import ModelInputError
from models.perceptual.config import EncoderKind, PerceptualConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class RandomProjectionEncoder(nn.Module):
    """Multi-scale pooled pixels, randomly projected (see module docstring)."""

    def __init__(self, cfg: PerceptualConfig):
        super().__init__()
        self.scales = tuple(cfg.rp_scales)
        gen = torch.Generator().manual_seed(cfg.seed)
        for s in self.scales:
            n = 3 * s * s
            proj = (
                torch.randn(n, cfg.rp_dim, generator=gen) / cfg.rp_dim**0.5
                if n > cfg.rp_dim
                else torch.eye(n)
            )
            self.register_buffer(f"proj_{s}", proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, 3, H, W)`` in [0, 1] -> ``(N, F)``."""
        out = []
        for s in self.scales:
            pooled = F.adaptive_avg_pool2d(x, s).flatten(1)
            out.append(pooled @ getattr(self, f"proj_{s}"))
        return torch.cat(out, 1)


def _load_timm_weights(model: nn.Module, path: Path, name: str) -> None:
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), use_ema=True)
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise many types on bad files
        raise ModelInputError(
            f"{path} is not a readable weights file ({type(e).__name__}): re-download it"
        ) from None
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if wrong or missing:
        what = (
            f"{len(wrong)} tensors of other shapes"
            if wrong
            else f"{len(missing)} of {len(own)} tensors missing"
        )
        raise ModelInputError(
            f"{path} holds weights for another architecture than timm's {name} ({what}): pass {name} weights"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own})


class TimmEncoder(nn.Module):
    """Spatially pooled intermediate feature maps of a timm backbone."""

    def __init__(self, cfg: PerceptualConfig):
        super().__init__()
        import timm

        try:
            self.net = timm.create_model(cfg.timm_name, pretrained=False, num_classes=0)
        except RuntimeError as e:
            raise ModelInputError(
                f"timm has no model {cfg.timm_name!r} ({e}): check timm_name"
            ) from None
        if not hasattr(self.net, "forward_intermediates"):
            raise ModelInputError(
                f"timm's {cfg.timm_name} has no forward_intermediates: choose another backbone"
            )
        if cfg.encoder_weights != "random":
            path = Path(cfg.encoder_weights).expanduser()
            if not path.is_file():
                raise ModelInputError(
                    f"{cfg.timm_name} weights not found at {path}: download timm's {cfg.timm_name} weights there or pass encoder_weights=<path>"
                )
            _load_timm_weights(self.net, path, cfg.timm_name)
        self.net.eval()
        self.layers = list(cfg.timm_layers)
        self.side = cfg.encoder_input
        pc = getattr(self.net, "pretrained_cfg", {}) or {}
        self.register_buffer(
            "mean", torch.tensor(pc.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(pc.get("std", IMAGENET_STD)).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(
            x, size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False
        )
        maps = self.net.forward_intermediates(
            (x - self.mean) / self.std, indices=self.layers, intermediates_only=True
        )
        return torch.cat(
            [m.float().mean((2, 3)) if m.ndim == 4 else m.float().mean(1) for m in maps], 1
        )


class GRMEncoder(nn.Module):
    """A trained GRM's per-view encoder: pooled ReLU activations of its CNN + its output."""

    def __init__(self, cfg: PerceptualConfig):
        super().__init__()
        from models.grm.model import GRM

        grm = GRM.from_pretrained(cfg.grm_dir).eval()
        self.encoder = grm.encoder
        self.resolution = getattr(self.encoder, "resolution", None)
        self.register_buffer("mean", grm.mean.clone(), persistent=False)
        self.register_buffer("std", grm.std.clone(), persistent=False)
        self._acts: list[torch.Tensor] = []
        for m in self.encoder.modules():
            if isinstance(m, nn.ReLU):
                m.register_forward_hook(
                    lambda _m, _i, out: self._acts.append(
                        out.float().mean((2, 3)) if out.ndim == 4 else out.float()
                    )
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from models.grm.model import resize

        self._acts = []
        out = self.encoder((resize(x, self.resolution) - self.mean) / self.std).float()
        return torch.cat([*self._acts, out], 1)


def build_encoder(cfg: PerceptualConfig) -> nn.Module:
    """The frame encoder named by ``cfg.encoder`` (in eval mode)."""
    if cfg.encoder is EncoderKind.random_projection:
        enc = RandomProjectionEncoder(cfg)
    elif cfg.encoder is EncoderKind.timm:
        enc = TimmEncoder(cfg)
    else:
        enc = GRMEncoder(cfg)
    return enc.eval()


@torch.inference_mode()
def encode_frames(encoder: nn.Module, frames: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """uint8 ``(N, V, H, W, 3)`` -> float32 features ``(N, V * F)`` (all views in one batch per chunk)."""
    n, v = frames.shape[:2]
    out = []
    for i in range(0, n, chunk):
        f = frames[i : i + chunk]
        x = f.reshape(-1, *f.shape[2:]).permute(0, 3, 1, 2).float().div_(255.0)
        out.append(encoder(x).float().reshape(len(f), -1))
    return torch.cat(out) if out else torch.zeros(0, 0)
