"""Build an open_clip model from local weights only: nothing is ever downloaded.

Lookup order for ``VLMConfig.weights == ""``: ``$ROBO_WEIGHTS_DIR/open_clip/<arch>_<tag>``
with suffix ``.safetensors``, ``.bin`` or ``.pt`` (default dir ``~/.cache/robo/weights``),
then the Hugging Face hub cache where ``open_clip`` itself would have put the tag's file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from models.base import ModelInputError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
RANDOM = "random"


def weights_dir() -> Path:
    return Path(os.environ.get("ROBO_WEIGHTS_DIR", "~/.cache/robo/weights")).expanduser()


def default_weights_path(arch: str, tag: str) -> Path:
    """Where the platform looks for ``arch``'s ``tag`` weights (``.safetensors`` form named)."""
    return weights_dir() / "open_clip" / f"{arch}_{tag or 'weights'}.safetensors"


def _hf_cached(arch: str, tag: str) -> Path | None:
    """The tag's file in the local Hugging Face cache, if open_clip downloaded it before (no network)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on it
        return None
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def resolve_weights(arch: str, tag: str, weights: str) -> Path | None:
    """Local weights file for ``arch`` (None for random init); a one-line error says where to put it."""
    if weights == RANDOM:
        return None
    what = f"open_clip's {arch} ({tag})" if tag else f"{arch} weights"
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelInputError(
                f"{arch} weights not found at {path}: download {what} to {path} or pass weights=<path>"
            )
        return path
    default = default_weights_path(arch, tag)
    for suffix in WEIGHT_SUFFIXES:
        if default.with_suffix(suffix).is_file():
            return default.with_suffix(suffix)
    cached = _hf_cached(arch, tag)
    if cached is not None:
        return cached
    raise ModelInputError(
        f"{arch} weights not found at {default}: download {what} to {default} or pass weights=<path>"
    )


def create_clip(arch: str, tag: str = "", weights: str = "", image_size: int | None = None):
    """An open_clip model in eval mode with weights from a local file (or random for ``"random"``).

    Raises:
        ModelInputError: unknown architecture, missing file, or a file for another architecture.
    """
    import open_clip

    if open_clip.get_model_config(arch) is None:
        raise ModelInputError(
            f"open_clip has no architecture {arch!r}: use a built-in name (e.g. ViT-B-32) "
            "or register it with open_clip.add_model_config"
        )
    path = resolve_weights(arch, tag, weights)
    # pretrained_text/image=False: an HF or timm tower must not fetch its own base weights.
    model = open_clip.create_model(
        arch,
        pretrained=None,
        pretrained_image=False,
        pretrained_text=False,
        force_image_size=image_size,
    )
    if path is not None:
        _load(model, path, arch)
    else:
        logging.getLogger(__name__).warning(
            "VLM reward: %s is randomly initialised (weights=%r)", arch, RANDOM
        )
    return model.eval(), path


def _readable(path: Path) -> bool:
    """Whether the file opens at all (header / memory map only), to tell a broken file from a wrong one."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
        else:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - torch/safetensors raise many types on bad files
        return False
    return True


def _load(model, path: Path, arch: str) -> None:
    import open_clip

    try:
        open_clip.load_checkpoint(model, str(path), strict=True)
    except Exception as e:  # noqa: BLE001 - shape mismatches surface as RuntimeError or AssertionError
        if not _readable(path):
            raise ModelInputError(
                f"{path} is not a readable weights file ({type(e).__name__}): re-download it"
            ) from None
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:120]
        raise ModelInputError(
            f"{path} holds weights for another architecture than {arch} ({detail}): "
            f"pass {arch} weights or set arch to the file's architecture"
        ) from None


def state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
