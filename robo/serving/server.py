"""The reward server: one process holds a progress model and serves many clients over gRPC.

    python -m robo.serving.server --model grm:runs/grm/model --port 50051 --token-file token.txt

Every RPC needs the metadata ``authorization: Bearer <token>`` (UNAUTHENTICATED otherwise).
Requests are validated (INVALID_ARGUMENT with a one-line message), queued in a bounded
queue (RESOURCE_EXHAUSTED when full), batched across clients by
:class:`robo.serving.batcher.Batcher` and answered within the caller's deadline, capped
by ``request_timeout_s`` (DEADLINE_EXCEEDED). Messages above ``max_message_mb`` are
refused by gRPC itself (RESOURCE_EXHAUSTED).

Environment ids are namespaced per client id: the server maps ``(client_id, env_id)`` to
its own model index when the environment is reset. A predict for a pair it has never
reset (for instance after a server restart) fails with FAILED_PRECONDITION: reset it.
``Close`` (or ``client_ttl_s`` without requests) releases a client's environments; their
model indices are reused by later resets.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from concurrent import futures
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import StrEnum

import grpc
import numpy as np

from models.base import ModelInputError, TaskContext
from robo.errors import RoboError
from robo.serving import reward_pb2, reward_pb2_grpc
from robo.serving.batcher import Batcher, Busy, Expired, Kind, Request

log = logging.getLogger("robo.serving")
TOKEN_ENV = "ROBO_REWARD_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_CLIENT_ID = 128


class Device(StrEnum):
    auto = "auto"  # cuda when available
    cpu = "cpu"
    cuda = "cuda"


class DType(StrEnum):
    auto = "auto"  # bf16 autocast on CUDA (fp16 where bf16 is unsupported), fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


@dataclass
class ServeConfig:
    """How the reward server runs (``python -m robo.serving.server --help``)."""

    # reward source spec: grm:<dir> (vlm:/perceptual: are served on their own device).
    model: str = ""
    # address to bind; loopback by default. Other hosts get the token in plain text: use a tunnel.
    host: str = "127.0.0.1"
    # port to bind (0: any free port, printed at start).
    port: int = 50051
    # file holding the bearer token (default: the ROBO_REWARD_TOKEN environment variable).
    token_file: str = ""
    # serve without a token (loopback only).
    no_auth: bool = False
    # inference device: auto (cuda when available), cpu or cuda.
    device: Device = Device.auto
    # GRM fast path: autocast dtype (auto: bf16 on CUDA, fp32 on CPU).
    dtype: DType = DType.auto
    # torch.compile the GRM for padded fixed batch shapes (CUDA graphs on CUDA); warms up at start.
    compile: bool = False
    # most environment rows in one batched model call.
    max_batch: int = 64
    # how long the oldest queued request waits for others to join its batch.
    max_wait_ms: float = 2.0
    # most requests queued; beyond it clients get RESOURCE_EXHAUSTED.
    max_queue: int = 256
    # largest request or reply, in MiB.
    max_message_mb: float = 32.0
    # longest a request may take (queue + model) when the client sets no shorter deadline.
    request_timeout_s: float = 10.0
    # gRPC handler threads (also the most RPCs in flight; more get RESOURCE_EXHAUSTED).
    workers: int = 64
    # a client without requests for this long has its environments released.
    client_ttl_s: float = 600.0
    # most environments held at once, over all clients.
    max_envs: int = 65536
    # torch CPU threads (0: torch's default).
    threads: int = 0

    def __post_init__(self) -> None:
        self.device, self.dtype = Device(self.device), DType(self.dtype)
        for name in ("max_batch", "max_queue", "workers", "max_envs"):
            if getattr(self, name) < 1:
                raise RoboError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.port <= 65535:
            raise RoboError(f"port={self.port} must lie in 0..65535")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0 or self.max_message_mb <= 0:
            raise RoboError("max_wait_ms must be >= 0, request_timeout_s and max_message_mb > 0")
        if self.client_ttl_s <= self.request_timeout_s:
            raise RoboError(
                f"client_ttl_s={self.client_ttl_s} must exceed request_timeout_s={self.request_timeout_s}"
            )
        if self.no_auth and self.host not in LOOPBACK:
            raise RoboError(f"--no_auth is for loopback only; give a token to serve on {self.host}")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 2**20)


def resolve_token(cfg: ServeConfig) -> str | None:
    """The server's token from ``token_file`` or ``$ROBO_REWARD_TOKEN``; ``None`` with ``no_auth``."""
    if cfg.token_file:
        try:
            token = open(cfg.token_file).read().strip()
        except OSError as e:
            raise RoboError(
                f"cannot read token file {cfg.token_file} ({e.strerror}): write the token there"
            ) from None
        if not token:
            raise RoboError(f"token file {cfg.token_file} is empty: write the token there")
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    if cfg.no_auth:
        return None
    raise RoboError(
        f"the reward server needs a token: give --token_file FILE or set {TOKEN_ENV} (or --no_auth true on loopback)"
    )


# ---------------------------------------------------------------------- validation
class _Invalid(ValueError):
    """A request the server refuses with INVALID_ARGUMENT."""


def decode_frames(
    msg: reward_pb2.Frames,
    what: str,
    views: tuple[str, ...],
    image_size: tuple[int, int],
    batched: bool,
) -> np.ndarray:
    """Raw bytes + shape -> a uint8 array ``(B, V, H, W, 3)`` (or ``(V, H, W, 3)``)."""
    shape = tuple(int(s) for s in msg.shape)
    want = "(B, V, H, W, 3)" if batched else "(V, H, W, 3)"
    if msg.dtype != "uint8":
        raise _Invalid(f"{what}: dtype {msg.dtype or '(unset)'!r}, the server takes uint8 images")
    if len(shape) != (5 if batched else 4) or shape[-1] != 3:
        raise _Invalid(f"{what}: shape {shape}, expected {want}")
    if shape[-4] != len(views):
        raise _Invalid(
            f"{what}: {shape[-4]} views, the model expects {len(views)} ({', '.join(views)})"
        )
    if tuple(shape[-3:-1]) != tuple(image_size):
        raise _Invalid(
            f"{what}: {shape[-3]}x{shape[-2]} px, the model expects {image_size[0]}x{image_size[1]}"
        )
    if len(msg.data) != math.prod(shape):
        raise _Invalid(f"{what}: {len(msg.data)} bytes, shape {shape} needs {math.prod(shape)}")
    return (
        np.frombuffer(msg.data, np.uint8).reshape(shape).copy()
    )  # writable: torch.from_numpy wants it


def _env_ids(ids, rows: int) -> list[int]:
    ids = [int(i) for i in ids]
    if not ids:
        raise _Invalid("no env ids in the request")
    if len(ids) != rows:
        raise _Invalid(f"{len(ids)} env ids for {rows} frame sets")
    if len(set(ids)) != len(ids):
        raise _Invalid("an env id appears twice in one request")
    return ids


def _client_id(cid: str) -> str:
    if not cid or len(cid) > MAX_CLIENT_ID:
        raise _Invalid(f"client_id must be 1..{MAX_CLIENT_ID} characters")
    return cid


# ---------------------------------------------------------------------- environments
class _Full(RuntimeError):
    pass


class _NotReset(LookupError):
    pass


class EnvTable:
    """``(client_id, env_id)`` -> model environment index, with recycling of released indices."""

    def __init__(self, max_envs: int):
        self.max_envs = max_envs
        self._map: dict[tuple[str, int], int] = {}
        self._free: list[int] = []
        self._next = 0
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._map)

    def assign(self, client: str, env_ids: list[int]) -> list[int]:
        """Model indices for a reset (existing ones kept, new ones allocated)."""
        with self._lock:
            self._seen[client] = time.monotonic()
            new = [e for e in env_ids if (client, e) not in self._map]
            if len(self._map) + len(new) > self.max_envs:
                raise _Full(
                    f"the server holds {len(self._map)} environments (limit {self.max_envs})"
                )
            for e in new:
                self._map[(client, e)] = self._free.pop() if self._free else self._alloc()
            return [self._map[(client, e)] for e in env_ids]

    def _alloc(self) -> int:
        self._next += 1
        return self._next - 1

    def lookup(self, client: str, env_ids: list[int]) -> list[int]:
        with self._lock:
            self._seen[client] = time.monotonic()
            missing = [e for e in env_ids if (client, e) not in self._map]
            if missing:
                raise _NotReset(
                    f"env ids {missing} of this client were never reset on this server "
                    "(did it restart?): call reset with their task context"
                )
            return [self._map[(client, e)] for e in env_ids]

    def unmap(self, client: str) -> list[int]:
        """Forget a client's environments now; return their indices (recycle them with :meth:`recycle`)."""
        with self._lock:
            self._seen.pop(client, None)
            keys = [k for k in self._map if k[0] == client]
            return [self._map.pop(k) for k in keys]

    def idle(self, ttl: float) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [c for c, t in self._seen.items() if now - t > ttl]

    def recycle(self, indices: list[int]) -> int:
        with self._lock:
            self._free.extend(indices)
        return len(indices)


# ---------------------------------------------------------------------- service
class _TokenAuth(grpc.ServerInterceptor):
    """Rejects every RPC whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing or wrong token: send 'authorization: Bearer <token>' (clients read ${TOKEN_ENV})",
            )

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        got = dict(handler_call_details.invocation_metadata).get("authorization", "")
        got = got.encode() if isinstance(got, str) else got
        if hmac.compare_digest(got, self._expected):
            return continuation(handler_call_details)
        return self._deny


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """The RPCs; the model runs only on the batcher's worker thread."""

    def __init__(self, model, cfg: ServeConfig, model_name: str, batcher: Batcher):
        self.model, self.cfg, self.model_name, self.batcher = model, cfg, model_name, batcher
        self.views, self.image_size = tuple(model.views), tuple(model.image_size)
        self.envs = EnvTable(cfg.max_envs)
        self.server_id = uuid.uuid4().hex
        self._last_sweep = time.monotonic()

    def Info(self, request, context):
        s = self.batcher.stats
        return reward_pb2.InfoReply(
            views=list(self.views),
            height=self.image_size[0],
            width=self.image_size[1],
            model=self.model_name,
            max_batch=self.cfg.max_batch,
            max_message_bytes=self.cfg.max_message_bytes,
            server_id=self.server_id,
            requests=s.requests,
            model_calls=s.model_calls,
        )

    def Reset(self, request, context):
        t0 = time.perf_counter()
        try:
            client = _client_id(request.client_id)
            frames = decode_frames(
                request.frames, "first frames", self.views, self.image_size, batched=True
            )
            ids = _env_ids(request.env_ids, frames.shape[0])
            if len(request.contexts) != len(ids):
                raise _Invalid(f"{len(request.contexts)} contexts for {len(ids)} env ids")
            contexts = [self._context(c) for c in request.contexts]
            indices = self.envs.assign(client, ids)
        except _Invalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except _Full as e:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e}: close idle clients or raise --max_envs"
            )
        return self._serve(Request(Kind.reset, indices, frames, contexts), context, t0)

    def Predict(self, request, context):
        t0 = time.perf_counter()
        try:
            client = _client_id(request.client_id)
            frames = decode_frames(
                request.frames, "frames", self.views, self.image_size, batched=True
            )
            indices = self.envs.lookup(client, _env_ids(request.env_ids, frames.shape[0]))
        except _Invalid as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except _NotReset as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return self._serve(Request(Kind.predict, indices, frames), context, t0)

    def Close(self, request, context):
        indices = self.envs.unmap(request.client_id)
        released = self._release(indices, timeout=self.cfg.request_timeout_s)
        return reward_pb2.CloseReply(released=released)

    # ------------------------------------------------------------------ helpers
    def _context(self, c: reward_pb2.TaskContext) -> TaskContext:
        def frames(field: str):
            if not c.HasField(field):
                return None
            return decode_frames(
                getattr(c, field), f"context {field}", self.views, self.image_size, batched=False
            )

        return TaskContext(
            text=c.text if c.HasField("text") else None,
            start_frames=frames("start_frames"),
            goal_frames=frames("goal_frames"),
        )

    def _release(self, indices: list[int], timeout: float | None = None) -> int:
        """Recycle model indices on the worker thread, after every request queued before."""
        if not indices:
            return 0
        try:
            return self.batcher.call(lambda: self.envs.recycle(indices), timeout)
        except (
            Busy,
            FutureTimeout,
        ):  # a timed-out call still runs later; a refused one leaks these indices
            return 0

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < min(60.0, self.cfg.client_ttl_s / 4):
            return
        self._last_sweep = now
        for client in self.envs.idle(self.cfg.client_ttl_s):
            indices = self.envs.unmap(client)
            log.info("released %d environments of idle client %s", len(indices), client)
            threading.Thread(target=self._release, args=(indices,), daemon=True).start()

    def _serve(self, req: Request, context, t0: float) -> reward_pb2.ProgressReply:
        self._sweep()
        remaining = context.time_remaining()
        budget = (
            self.cfg.request_timeout_s
            if remaining is None
            else min(remaining, self.cfg.request_timeout_s)
        )
        req.deadline = time.monotonic() + budget
        try:
            fut = self.batcher.submit(req)
        except Busy as e:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"reward server busy: {e}; lower the request rate or add a server",
            )
        context.add_callback(fut.cancel)  # the client went away: drop the request if it has not run
        code, msg = None, ""
        try:
            res = fut.result(timeout=max(0.0, req.deadline - time.monotonic()))
        except (FutureTimeout, Expired):
            fut.cancel()
            code, msg = (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                (
                    f"no result within {1e3 * budget:.0f} ms (queue + model): the server is overloaded or the deadline too short"
                ),
            )
        except CancelledError:
            code, msg = grpc.StatusCode.CANCELLED, "request cancelled"
        except ModelInputError as e:
            code, msg = grpc.StatusCode.INVALID_ARGUMENT, str(e).splitlines()[0]
        except Busy as e:
            code, msg = grpc.StatusCode.UNAVAILABLE, str(e)
        except Exception as e:  # noqa: BLE001 - reported to the client, logged here
            log.exception("model call failed")
            code, msg = (
                grpc.StatusCode.INTERNAL,
                f"model error {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            )
        if code is not None:
            context.abort(code, msg)
        return reward_pb2.ProgressReply(
            progress=res.progress.tolist(),
            success=res.success.tolist(),
            confidence=res.confidence.tolist(),
            batch_rows=res.batch_rows,
            server_ms=1e3 * (time.perf_counter() - t0),
        )


# ---------------------------------------------------------------------- server
def load_model(spec: str, device: str = "auto", dtype: str = "auto", compile: bool = False):
    """Build the served model: GRMs on ``device`` through the fast path, others via the registry."""
    import torch

    device = str(getattr(device, "value", device))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RoboError("--device cuda but CUDA is not available here: use --device cpu")
    kind, _, arg = spec.partition(":")
    if kind == "grpc":
        raise RoboError(
            "a reward server serves a local model: give grm:<dir>, not a grpc:// address"
        )
    if kind != "grm":
        from robo.reward.registry import load_progress_model

        return load_progress_model(spec)
    from models.grm.fast import make_fast
    from models.grm.inference import GRMProgressModel
    from models.grm.model import GRM

    try:
        return make_fast(
            GRMProgressModel(GRM.from_pretrained(arg), device=device),
            dtype=str(getattr(dtype, "value", dtype)),
            compile=compile,
        )
    except ModelInputError as e:
        raise RoboError(str(e)) from None


class RewardServer:
    """A running reward server around ``model`` (see module docstring).

    Args:
        model: a :class:`models.base.ProgressModel`.
        cfg: serving settings (``cfg.model`` is only used as the reported model name).
        token: bearer token clients must send; ``None`` serves without authentication.
        model_name: name reported by Info (default ``cfg.model`` or the class name).
        on_start: run on the model's worker thread before serving (compile warm-up).
    """

    def __init__(
        self,
        model,
        cfg: ServeConfig | None = None,
        token: str | None = None,
        model_name: str | None = None,
        on_start=None,
    ):
        self.cfg = cfg = cfg or ServeConfig()
        self.batcher = Batcher(
            model, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue, on_start=on_start
        )
        self.servicer = RewardServicer(
            model, cfg, model_name or cfg.model or type(model).__name__, self.batcher
        )
        opts = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]  # a second server on the same port must fail, not share it
        self._server = grpc.server(
            futures.ThreadPoolExecutor(cfg.workers, thread_name_prefix="reward-rpc"),
            interceptors=[_TokenAuth(token)] if token else [],
            options=opts,
            maximum_concurrent_rpcs=cfg.workers,
        )
        reward_pb2_grpc.add_RewardServiceServicer_to_server(self.servicer, self._server)
        host = f"[{cfg.host}]" if ":" in cfg.host and not cfg.host.startswith("[") else cfg.host
        try:
            self.port = self._server.add_insecure_port(f"{host}:{cfg.port}")
        except RuntimeError:
            self.port = 0
        if not self.port:
            self.batcher.close()
            raise RoboError(
                f"cannot listen on {cfg.host}:{cfg.port} (port in use?): pick another --port"
            )
        if cfg.host not in LOOPBACK:
            log.warning("serving on %s without TLS: the token travels in plain text", cfg.host)
        self.address = f"{cfg.host}:{self.port}"
        self._started = False

    def start(self) -> RewardServer:
        """Start serving (a no-op when already started)."""
        if not self._started:
            self._server.start()
            self._started = True
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        self._server.stop(grace).wait()
        self.batcher.close()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(0)


def build_server(cfg: ServeConfig) -> RewardServer:
    """Load ``cfg.model`` and bind (not yet started); compile warm-up runs on the model thread."""
    if not cfg.model:
        raise RoboError("--model is required: e.g. --model grm:runs/grm/model")
    token = resolve_token(cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    model = load_model(cfg.model, cfg.device, cfg.dtype, cfg.compile)
    on_start = None
    if cfg.compile and hasattr(model, "perspectives"):
        from models.grm.fast import warmup

        on_start = lambda: warmup(model, cfg.max_batch)  # noqa: E731 - compile on the serving thread
    return RewardServer(model, cfg, token, on_start=on_start)


def serve_forever(cfg: ServeConfig) -> None:
    """Run the server until SIGINT/SIGTERM (the ``robo reward serve`` body)."""
    server = build_server(cfg).start()
    device = getattr(getattr(server.servicer.model, "device", None), "type", "cpu")
    settings = getattr(getattr(server.servicer.model, "model", None), "settings", None)
    print(
        f"reward server listening on {server.address} (model {cfg.model}, {device}"
        f"{', ' + settings.dtype if settings else ''}{', compiled' if cfg.compile else ''}, max_batch {cfg.max_batch}, "
        f"max_wait {cfg.max_wait_ms} ms)",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2.0)


def _underscore_flags(argv: list[str]) -> list[str]:
    """Accept ``--token-file`` as well as draccus' ``--token_file``."""
    out = []
    for a in argv:
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + val
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    import draccus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _underscore_flags(sys.argv[1:] if argv is None else argv)
    try:
        cfg = draccus.parse(config_class=ServeConfig, args=args)
        serve_forever(cfg)
    except (ValueError, draccus.utils.ParsingError, draccus.utils.DecodingError) as e:
        if os.environ.get("ROBO_DEBUG"):
            raise
        root = e
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        print(
            f"error: {str(root).splitlines()[0] if str(root) else type(root).__name__}",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
