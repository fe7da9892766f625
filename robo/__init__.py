"""The platform: reward API, shaping, RL, datasets, evaluation, serving, CLI."""

# Importing triton (pulled in by torch._dynamo, torchvision, timm) after Mesa's EGL has
# been loaded by a MuJoCo renderer segfaults; importing it first avoids that.
try:  # noqa: SIM105 - torch is a dependency, but keep `robo` importable without it
    import torch._dynamo  # noqa: F401
except Exception:  # noqa: BLE001
    pass
