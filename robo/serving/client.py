"""A progress model served by a reward server: :class:`RemoteProgressModel`.

It implements :class:`models.base.ProgressModel` (``views`` and ``image_size`` come from the
server's Info), so the reward wrappers and the control loop use it like an in-process
model::

    from robo.reward.registry import load_progress_model
    model = load_progress_model("grpc://127.0.0.1:50051")   # token from $ROBO_REWARD_TOKEN

Each instance has its own client id, so its environment indices never collide with
another client's on the same server. gRPC reconnects by itself after a server restart;
the restarted server has forgotten every environment, so a predict then raises
:class:`models.base.ModelInputError` ("never reset ... did it restart?") until the
environment is reset again.

Errors are one line: :class:`RewardServerError` (unreachable, unauthenticated, busy,
deadline) with the gRPC ``code``; invalid input raises :class:`ModelInputError` as an
in-process model would.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence

import grpc
import numpy as np
import torch

from models.base import ModelInputError, ProgressOutput, TaskContext, check_frames
from robo.errors import RoboError
from robo.serving import reward_pb2, reward_pb2_grpc

TOKEN_ENV = "ROBO_REWARD_TOKEN"
_OVERHEAD = 64 * 1024  # bytes of a request besides its frames (ids, contexts' text, framing)


class RewardServerError(RoboError):
    """The reward server could not answer; ``code`` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


def parse_url(url: str) -> str:
    """``grpc://host:port`` (or ``//host:port``, ``host:port``) -> ``host:port``."""
    m = re.fullmatch(r"(?:grpc:)?(?://)?(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(\d{1,5})/?", url.strip())
    if not m or not 0 < int(m[2]) < 65536:
        raise RoboError(
            f"reward server URL {url!r}: write it as grpc://HOST:PORT, e.g. grpc://127.0.0.1:50051"
        )
    return f"{m[1]}:{m[2]}"


def _frames_msg(a: np.ndarray) -> reward_pb2.Frames:
    a = np.ascontiguousarray(a, np.uint8)
    return reward_pb2.Frames(data=a.tobytes(), shape=list(a.shape), dtype="uint8")


def _as_uint8(frames) -> np.ndarray:
    return frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)


class RemoteProgressModel:
    """A :class:`models.base.ProgressModel` answered by a reward server.

    Args:
        url: ``grpc://host:port`` of the server.
        token: bearer token (default ``$ROBO_REWARD_TOKEN``).
        timeout_s: deadline of each call (queue + model + network).
        connect_timeout_s: deadline of the first Info call.
        wait_for_ready: let that call wait (up to ``connect_timeout_s``) for a server that is
            not up yet, instead of failing at once with "connection refused".
        client_id: namespace of this client's env indices (default: a fresh random id).
        max_message_mb: largest message this client sends or accepts (the server's limit
            applies too: bigger batches are split into several calls).
    """

    def __init__(
        self,
        url: str = "grpc://127.0.0.1:50051",
        token: str | None = None,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        client_id: str | None = None,
        max_message_mb: float = 64.0,
        wait_for_ready: bool = False,
    ):
        self.address = parse_url(url)
        self.url = f"grpc://{self.address}"
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self._metadata = (("authorization", f"Bearer {token.strip()}"),) if token else ()
        self.timeout_s = timeout_s
        self.client_id = client_id or uuid.uuid4().hex
        limit = int(max_message_mb * 2**20)
        self._channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                # reconnect quickly after a server restart (gRPC's default backoff reaches minutes)
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)
        try:
            info = self._call(
                "Info",
                reward_pb2.InfoRequest(),
                timeout=connect_timeout_s,
                wait_for_ready=wait_for_ready,
            )
        except BaseException:
            self._channel.close()
            raise
        self.views = tuple(info.views)
        self.image_size = (int(info.height), int(info.width))
        self.model_name = info.model
        self.server_id = info.server_id
        self.max_message_bytes = min(limit, int(info.max_message_bytes) or limit)
        self.last_reply: reward_pb2.ProgressReply | None = (
            None  # server_ms, batch_rows of the last call
        )

    # ------------------------------------------------------------------ contract
    def reset(
        self, env_indices: Sequence[int], contexts: Sequence[TaskContext], frames
    ) -> ProgressOutput:
        """Start episodes on the server; returns the progress of their first frames."""
        env_indices = [int(i) for i in env_indices]
        if len(contexts) != len(env_indices):
            raise ModelInputError(
                f"reset got {len(env_indices)} env indices but {len(contexts)} contexts"
            )
        frames = self._check(frames, "first frames", len(env_indices))
        ctx = [self._context(c) for c in contexts]
        return self._chunked(
            frames,
            env_indices,
            "Reset",
            lambda ids, f, sl: reward_pb2.ResetRequest(
                client_id=self.client_id, env_ids=ids, frames=f, contexts=ctx[sl]
            ),
        )

    def predict(self, frames, env_indices: Sequence[int] | None = None) -> ProgressOutput:
        """Progress of the current frames of ``env_indices`` (default ``range(B)``)."""
        frames = self._check(frames, "frames", None if env_indices is None else len(env_indices))
        ids = list(range(len(frames))) if env_indices is None else [int(i) for i in env_indices]
        return self._chunked(
            frames,
            ids,
            "Predict",
            lambda ids, f, sl: reward_pb2.PredictRequest(
                client_id=self.client_id, env_ids=ids, frames=f
            ),
        )

    def info(self) -> reward_pb2.InfoReply:
        """The server's Info (model, limits, request and model-call counters)."""
        return self._call("Info", reward_pb2.InfoRequest())

    def close(self) -> None:
        """Release this client's environments on the server (best effort) and close the channel."""
        try:
            self._stub.Close(
                reward_pb2.CloseRequest(client_id=self.client_id),
                timeout=1.0,
                metadata=self._metadata,
            )
        except grpc.RpcError:
            pass
        self._channel.close()

    def __enter__(self) -> RemoteProgressModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _check(self, frames, what: str, rows: int | None) -> np.ndarray:
        frames = check_frames(_as_uint8(frames), self.views, self.image_size, what).numpy()
        if rows is not None and rows != len(frames):
            raise ModelInputError(f"{len(frames)} frame sets but {rows} env indices")
        return frames

    def _context(self, c: TaskContext) -> reward_pb2.TaskContext:
        msg = reward_pb2.TaskContext()
        if c.text is not None:
            msg.text = c.text
        for name in ("start_frames", "goal_frames"):
            f = getattr(c, name)
            if f is not None:
                f = check_frames(
                    _as_uint8(f)[None], self.views, self.image_size, f"context {name}"
                )[0].numpy()
                getattr(msg, name).CopyFrom(_frames_msg(f))
        return msg

    def _chunked(self, frames: np.ndarray, ids: list[int], method: str, build) -> ProgressOutput:
        """One call per chunk of rows that fits the message limit (usually a single call)."""
        row_bytes = int(np.prod(frames.shape[1:]))
        # a reset also carries each row's context frames (up to two more frame sets per row)
        per_row = row_bytes * (3 if method == "Reset" else 1)
        rows = max(1, (self.max_message_bytes - _OVERHEAD) // per_row)
        outs = []
        for k in range(0, len(ids), rows):
            sl = slice(k, k + rows)
            reply = self._call(method, build(ids[sl], _frames_msg(frames[sl]), sl))
            self.last_reply = reply
            outs.append(reply)

        def cat(name: str) -> torch.Tensor:
            return torch.tensor([x for r in outs for x in getattr(r, name)], dtype=torch.float32)

        return ProgressOutput(
            progress=cat("progress"), success=cat("success"), confidence=cat("confidence")
        )

    def _call(
        self, method: str, request, timeout: float | None = None, wait_for_ready: bool = False
    ):
        try:
            return getattr(self._stub, method)(
                request,
                timeout=timeout or self.timeout_s,
                metadata=self._metadata,
                wait_for_ready=wait_for_ready,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _error(self, e: grpc.RpcError) -> Exception:
        code, details = e.code(), (e.details() or "").splitlines()[0] if e.details() else ""
        where = f"reward server {self.url}"
        if code is grpc.StatusCode.UNAVAILABLE:
            why = "connection refused" if "refused" in details.lower() else details or "unavailable"
            return RewardServerError(
                f"{where} is unreachable ({why}): start it (python -m robo.serving.server "
                f"--model grm:DIR --port {self.address.rsplit(':', 1)[1]}) or check the URL",
                code,
            )
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return RewardServerError(
                f"{where} refused the token: set {TOKEN_ENV} to the server's token", code
            )
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            return ModelInputError(f"{where}: {details}")
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return RewardServerError(f"{where} refused the request ({details})", code)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return RewardServerError(
                f"{where} gave no answer in time ({details or f'{self.timeout_s} s'}): "
                "raise timeout_s or lower the load",
                code,
            )
        return RewardServerError(f"{where} failed: {code.name} {details}".rstrip(), code)
