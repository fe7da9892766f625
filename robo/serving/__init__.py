"""Reward inference at control rate: a batched gRPC reward server and its client.

One server process holds a progress model (GPU or CPU) and answers many robots or
vectorised environments; concurrent requests are batched into one model call
(:mod:`robo.serving.batcher`). Clients use :class:`robo.serving.client.RemoteProgressModel`,
a :class:`models.base.ProgressModel`, so the reward wrappers and the control loop take it
like any in-process model (``load_progress_model("grpc://127.0.0.1:50051")``).

    python -m robo.serving.server --model grm:runs/grm/model --port 50051 --token-file token.txt

The wire format is ``reward.proto``; ``reward_pb2.py`` and ``reward_pb2_grpc.py`` are
generated from it and committed. After editing the ``.proto``, regenerate them from the
repository root (needs ``grpcio-tools``, no make)::

    .venv/bin/python -c "from robo.serving import regenerate; regenerate()"

which runs ``grpc_tools.protoc -I. --python_out=. --grpc_python_out=. robo/serving/reward.proto``
and marks the outputs as generated for ruff.
"""

from __future__ import annotations

from pathlib import Path

PROTO = Path(__file__).with_name("reward.proto")
_GENERATED_HEADER = "# ruff: noqa\n# fmt: off\n# Generated from reward.proto: see robo/serving/__init__.py to regenerate.\n"


def regenerate() -> None:
    """Regenerate ``reward_pb2.py`` and ``reward_pb2_grpc.py`` from ``reward.proto``."""
    from grpc_tools import protoc

    root = PROTO.parents[2]
    rel = PROTO.relative_to(root).as_posix()
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{root}", f"--python_out={root}", f"--grpc_python_out={root}", rel]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit {rc})")
    for name in ("reward_pb2.py", "reward_pb2_grpc.py"):
        path = PROTO.with_name(name)
        path.write_text(_GENERATED_HEADER + path.read_text())
