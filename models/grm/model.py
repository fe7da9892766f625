"""The General Reward Model network: a relative-progress hop between two multi-view states.

Tokens: every view of the four frame sets (reference start, reference goal, BEFORE,
AFTER) is encoded by one shared per-view encoder, plus a learned view embedding and a
role embedding; an optional hashed bag-of-words token carries the task text. A
transformer fuses all tokens; a CLS token's head predicts a distribution over
``num_bins`` hop values in [-1, 1], whose expectation is the hop.

Missing views and missing context are masked (``key_padding_mask``); training drops
views and context at random so that inference tolerates them.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from models.base import ModelInputError
from models.grm.config import EncoderKind, GRMConfig

ROLES = ("start", "goal", "before", "after")
# Difference tokens (a - b, per view) make "what changed" explicit to the fusion.
DIFFS = (("after", "before"), ("after", "start"), ("goal", "after"))
CONFIG_FILE, WEIGHTS_FILE, ARCH = "config.json", "model.safetensors", "grm"


def resize(x: torch.Tensor, side: int | None) -> torch.Tensor:
    """Resize images ``(N, 3, H, W)`` to ``side`` (average pooling for integer factors)."""
    if side is None or x.shape[-2:] == (side, side):
        return x
    h, w = x.shape[-2:]
    if h % side == 0 and w % side == 0 and h // side == w // side:
        return F.avg_pool2d(x, h // side)
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


class SpatialSoftmax(nn.Module):
    """Expected 2-D image coordinates of each channel's softmax (keypoints)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = F.softmax(x.flatten(2), dim=-1).view(b, c, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        return torch.cat([(attn.sum(3) * ys).sum(-1), (attn.sum(2) * xs).sum(-1)], dim=1)


class ConvEncoder(nn.Module):
    """Small CNN trained from scratch: the view resized to ``resolution``, strided convs,
    then spatial-softmax keypoints and pooled features; with ``grid`` > 0 also the feature
    map average-pooled to a ``grid`` x ``grid`` layout (what is where, not only where the
    most salient things are)."""

    def __init__(self, channels: tuple[int, ...], d_model: int, resolution: int, grid: int = 0):
        super().__init__()
        self.resolution = resolution
        self.grid = grid
        layers, c_in = [], 3
        for i, c in enumerate(channels):
            k, s = (4, 2) if i == 0 else (3, 2 if i < len(channels) - 1 else 1)
            layers += [
                nn.Conv2d(c_in, c, k, s, (k - 1) // 2),
                nn.GroupNorm(8, c),
                nn.ReLU(inplace=True),
            ]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.keypoints = SpatialSoftmax()
        self.proj = nn.Linear(3 * c_in + c_in * grid * grid, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        parts = [self.keypoints(f), f.mean((2, 3))]
        if self.grid:
            parts.append(F.adaptive_avg_pool2d(f, self.grid).flatten(1))
        return self.proj(torch.cat(parts, dim=1))


class BackboneEncoder(nn.Module):
    """A timm or open_clip image backbone loaded from a local weights file, then projected."""

    def __init__(self, cfg: GRMConfig):
        super().__init__()
        if cfg.encoder is EncoderKind.timm:
            import timm

            self.net = timm.create_model(cfg.encoder_name, pretrained=False, num_classes=0)
            width = self.net.num_features
        else:
            import open_clip

            model = open_clip.create_model(cfg.encoder_name, pretrained=None)
            self.net = model.visual
            width = model.visual.output_dim
        if cfg.encoder_weights:
            path = Path(cfg.encoder_weights)
            if not path.is_file():
                raise ModelInputError(
                    f"encoder weights {path} not found: put the {cfg.encoder_name} weights file there"
                )
            state = (
                load_file(str(path))
                if path.suffix == ".safetensors"
                else torch.load(path, map_location="cpu")
            )
            missing, unexpected = self.net.load_state_dict(state, strict=False)
            if len(missing) > len(state) // 2:
                raise ModelInputError(
                    f"{path} does not hold {cfg.encoder_name} weights ({len(missing)} tensors missing)"
                )
        self.proj = nn.Linear(width, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(x))


def text_token_ids(texts: list[str | None], buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hash each text's words into ``buckets`` ids for an ``EmbeddingBag`` (ids, offsets)."""
    ids, offsets = [], []
    for t in texts:
        offsets.append(len(ids))
        words = re.findall(r"[a-z0-9]+", (t or "").lower())
        ids += [zlib.crc32(w.encode()) % buckets for w in words] or [0]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


class GRM(nn.Module):
    """Multi-view, step-aware hop predictor (see module docstring)."""

    def __init__(self, cfg: GRMConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.encoder = (
            ConvEncoder(cfg.channels, d, cfg.encoder_resolution, cfg.encoder_grid)
            if cfg.encoder is EncoderKind.cnn
            else BackboneEncoder(cfg)
        )
        self.view_emb = nn.Parameter(torch.randn(len(cfg.views), d) * 0.02)
        self.role_emb = nn.Parameter(torch.randn(len(ROLES) + len(DIFFS), d) * 0.02)
        self.diff_proj = nn.Linear(d, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.text = nn.EmbeddingBag(cfg.text_buckets, d, mode="mean") if cfg.text_buckets else None
        layer = nn.TransformerEncoderLayer(
            d, cfg.heads, 2 * d, dropout=0.0, activation="relu", batch_first=True, norm_first=True
        )
        self.fusion = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, cfg.num_bins))
        self.register_buffer("bins", torch.linspace(-1, 1, cfg.num_bins), persistent=False)
        self.register_buffer(
            "mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False
        )

    # ------------------------------------------------------------------ encoding
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, V, H, W, 3)`` -> per-view features ``(B, V, d)`` (view embedding added)."""
        b, v = frames.shape[:2]
        x = frames.reshape(b * v, *frames.shape[2:]).permute(0, 3, 1, 2).float()
        x = resize(x, getattr(self.encoder, "resolution", None))
        x = ((x * (1.0 / 255.0) - self.mean) / self.std).contiguous(
            memory_format=torch.channels_last
        )
        feats = self.encoder(x).view(b, v, -1)
        return feats + self.view_emb[:v]

    def text_features(self, texts: list[str | None], device) -> torch.Tensor | None:
        if self.text is None:
            return None
        ids, offsets = text_token_ids(texts, self.cfg.text_buckets)
        return self.text(ids.to(device), offsets.to(device))

    # ------------------------------------------------------------------ fusion
    def hop_logits(
        self, feats: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], text=None
    ) -> torch.Tensor:
        """Hop logits ``(B, num_bins)`` from encoded frame sets.

        Args:
            feats: role -> ``(B, V, d)`` encoded views (from :meth:`encode`).
            masks: role -> bool ``(B, V)``, True where a view is missing.
            text: optional ``(B, d)`` text features.
        """
        tokens, pad = [], []
        for r, role in enumerate(ROLES):
            tokens.append(feats[role] + self.role_emb[r])
            pad.append(masks[role])
        for k, (a, b) in enumerate(DIFFS):
            tokens.append(self.diff_proj(feats[a] - feats[b]) + self.role_emb[len(ROLES) + k])
            pad.append(masks[a] | masks[b])
        x = torch.cat(tokens, 1)
        pad = torch.cat(pad, 1)
        b = x.shape[0]
        head = [self.cls.expand(b, -1, -1)]
        head_pad = [torch.zeros(b, 1, dtype=torch.bool, device=x.device)]
        if text is not None:
            head.append(text.unsqueeze(1))
            head_pad.append(torch.zeros(b, 1, dtype=torch.bool, device=x.device))
        x = torch.cat(head + [x], 1)
        pad = torch.cat(head_pad + [pad], 1)
        out = self.fusion(x, src_key_padding_mask=pad)
        return self.head(self.norm(out[:, 0]))

    def expected_hop(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.softmax(-1) * self.bins).sum(-1)

    def forward(self, batch: dict) -> torch.Tensor:
        """Training forward. ``batch`` holds uint8 ``frames (N, V, H, W, 3)``, the unique frame
        sets of the batch, and per role ``<role>_idx (B,)`` indices into them, optional bool
        ``<role>_mask (B, V)`` (True = view missing) and optional ``text`` (list of B strings).
        Each unique frame set is encoded once. Returns hop logits ``(B, num_bins)``."""
        frames = batch["frames"]
        feats_all = self.encode(frames)
        feats, masks = {}, {}
        for role in ROLES:
            idx = batch[f"{role}_idx"]
            feats[role] = feats_all[idx]
            default = torch.zeros(
                (len(idx), frames.shape[1]), dtype=torch.bool, device=frames.device
            )
            masks[role] = batch.get(f"{role}_mask", default)
        text = (
            self.text_features(batch["text"], frames.device)
            if batch.get("text") is not None
            else None
        )
        return self.hop_logits(feats, masks, text)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (plus ``extra`` metadata in the config)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"architecture": ARCH, "config": self.cfg.to_dict(), **(extra or {})}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str))
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_FILE)
        )
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> GRM:
        """Load a model written by :meth:`save_pretrained`; clear errors for anything else."""
        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            hint = ""
            if (directory / "model" / CONFIG_FILE).is_file():  # a training run's folder
                hint = f" (this is a training run: its model is {directory / 'model'})"
            raise ModelInputError(
                f"{directory} is not a GRM checkpoint: it needs {CONFIG_FILE} and "
                f"{WEIGHTS_FILE}{hint}"
            )
        try:
            meta = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ModelInputError(
                f"{cfg_path} is corrupt ({e.msg}): re-export the checkpoint"
            ) from None
        if meta.get("architecture") != ARCH:
            raise ModelInputError(
                f"{directory} holds a {meta.get('architecture')!r} model, not a GRM"
            )
        model = cls(GRMConfig.from_dict(meta["config"]))
        try:
            state = load_file(str(w_path), device=map_location)
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise ModelInputError(
                f"{w_path} is corrupt or not safetensors ({type(e).__name__}): re-export it"
            ) from None
        try:
            model.load_state_dict(state)
        except RuntimeError:
            raise ModelInputError(
                f"{w_path} does not match the architecture in {cfg_path}: wrong checkpoint?"
            ) from None
        model.metadata = meta
        return model
