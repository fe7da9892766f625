import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# triton must be imported before Mesa's EGL is loaded by the first render (segfault otherwise).
import torch._dynamo  # noqa: E402, F401
