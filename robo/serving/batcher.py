"""Dynamic batching of reward requests onto one model, on one worker thread.

Request handlers (gRPC's thread pool) :meth:`Batcher.submit` a :class:`Request` and wait
on its future. One worker thread owns the model: it takes the oldest request, waits until
either ``max_batch`` rows are queued or the oldest request has waited ``max_wait_ms``, then
gathers compatible requests in arrival order into one ``predict`` (or ``reset``) call and
hands every request its own rows of the result.

* When the worker is busy, requests pile up and the next batch leaves at once: under load
  batches grow by themselves, at low load a request waits at most ``max_wait_ms``.
* A batch holds one kind of call and each model environment at most once. A request that
  does not fit (other kind, an environment already in the batch, or an environment of a
  request skipped before it) waits for a later batch, so calls on one environment run in
  arrival order. Functions queued with :meth:`Batcher.call` are barriers: nothing queued
  after them overtakes them.
* The queue is bounded (``max_queue`` requests): beyond it :meth:`submit` raises
  :class:`Busy` (the server answers RESOURCE_EXHAUSTED).
* Requests whose deadline passed or whose caller gave up (future cancelled) are dropped
  before they reach the model.
* If a batched call raises, each of its requests is retried alone, so one bad request
  fails alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import torch

from models.base import ProgressOutput, TaskContext


class Kind(StrEnum):
    predict = "predict"
    reset = "reset"
    call = "call"  # run a function on the worker thread, in order with the model calls


class Busy(RuntimeError):
    """The request queue is full."""


class Expired(TimeoutError):
    """The request's deadline passed before the model reached it."""


@dataclass
class Result:
    """One request's rows of a batched call."""

    progress: np.ndarray
    success: np.ndarray
    confidence: np.ndarray
    batch_rows: int


@dataclass
class Request:
    """One client call: model environment indices, their frames and (reset) contexts.

    ``fn`` is used by :attr:`Kind.call` requests (run on the worker thread; its return
    value is the result).
    """

    kind: Kind
    indices: list[int]
    frames: np.ndarray | None = None
    contexts: list[TaskContext] | None = None
    deadline: float = float("inf")  # time.monotonic() by which the result is needed
    fn: Callable[[], object] | None = None
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return len(self.indices)


@dataclass
class Stats:
    requests: int = 0  # model requests run (predict and reset)
    model_calls: int = 0  # batched model calls made
    rows: int = 0  # environment rows through the model
    dropped: int = 0  # expired or cancelled before they ran
    max_batch_rows: int = 0


class Batcher:
    """Collects requests and runs them as batched calls of ``model`` on one worker thread.

    Args:
        model: a :class:`models.base.ProgressModel`.
        max_batch: most environment rows in one model call (a bigger request runs alone).
        max_wait_ms: how long the oldest request may wait for others to join its batch.
        max_queue: most requests waiting; beyond it :meth:`submit` raises :class:`Busy`.
        on_start: called on the worker thread before serving (e.g. compile warm-up).
    """

    def __init__(
        self,
        model,
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        max_queue: int = 256,
        on_start: Callable[[], object] | None = None,
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1e3
        self.max_queue = max_queue
        self.stats = Stats()
        self._queue: deque[Request] = deque()
        self._cond = threading.Condition()
        self._running = True
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._on_start = on_start
        self._thread = threading.Thread(target=self._loop, name="reward-batcher", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    # ------------------------------------------------------------------ callers
    def submit(self, req: Request) -> Future:
        """Queue ``req``; returns its future (a :class:`Result`, or the error)."""
        with self._cond:
            if not self._running:
                raise Busy("the reward server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise Busy(f"{len(self._queue)} requests are queued (limit {self.max_queue})")
            self._queue.append(req)
            self._cond.notify()
        return req.future

    def call(self, fn: Callable[[], object], timeout: float | None = None):
        """Run ``fn`` on the worker thread, in order with queued model calls; return its result."""
        return self.submit(Request(Kind.call, [], fn=fn)).result(timeout)

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; requests still queued fail with :class:`Busy`."""
        with self._cond:
            self._running = False
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for r in left:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(Busy("the reward server shut down"))
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        try:
            if self._on_start is not None:
                self._on_start()
        except BaseException as e:  # noqa: BLE001 - reported to the constructor
            self._start_error = e
            self._running = False
        self._started.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[Request] | None:
        with self._cond:
            while True:
                while self._running and not self._queue:
                    self._cond.wait()
                if not self._running:
                    return None
                head = self._queue[0]
                wait = head.arrived + self.max_wait - time.monotonic()
                if (
                    wait <= 0
                    or head.kind is Kind.call
                    or sum(r.rows for r in self._queue) >= self.max_batch
                ):
                    return self._take()
                self._cond.wait(wait)

    def _take(self) -> list[Request]:
        """Pop the head and the compatible requests behind it (caller holds the lock)."""
        head = self._queue.popleft()
        batch, rows, used = [head], head.rows, set(head.indices)
        if head.kind is Kind.call:
            return batch
        blocked: set[int] = set()
        keep: deque[Request] = deque()
        barrier = False  # nothing overtakes a queued function call
        for r in self._queue:
            barrier |= r.kind is Kind.call
            ok = (
                not barrier
                and r.kind is head.kind
                and rows + r.rows <= self.max_batch
                and used.isdisjoint(r.indices)
                and blocked.isdisjoint(r.indices)
            )
            if ok:
                batch.append(r)
                rows += r.rows
                used.update(r.indices)
            else:
                keep.append(r)
                blocked.update(r.indices)
        self._queue = keep
        return batch

    def _run(self, batch: list[Request]) -> None:
        now = time.monotonic()
        live = []
        for r in batch:
            if not r.future.set_running_or_notify_cancel():  # the caller gave up
                self.stats.dropped += 1
            elif r.kind is not Kind.call and now > r.deadline:
                self.stats.dropped += 1
                r.future.set_exception(
                    Expired(f"waited {1e3 * (now - r.arrived):.0f} ms in the queue")
                )
            else:
                live.append(r)
        if not live:
            return
        if live[0].kind is Kind.call:
            _settle(live[0], live[0].fn)
            return
        try:
            results = self._model_call(live)
        except Exception:  # noqa: BLE001 - isolate the failing request(s)
            if len(live) == 1:
                _settle(live[0], lambda: self._model_call(live)[0])
                return
            for r in live:
                _settle(r, lambda r=r: self._model_call([r])[0])
            return
        for r, res in zip(live, results, strict=True):
            r.future.set_result(res)

    def _model_call(self, reqs: Sequence[Request]) -> list[Result]:
        indices = [i for r in reqs for i in r.indices]
        frames = np.concatenate([r.frames for r in reqs]) if len(reqs) > 1 else reqs[0].frames
        if reqs[0].kind is Kind.reset:
            contexts = [c for r in reqs for c in r.contexts]
            out = self.model.reset(indices, contexts, frames)
        else:
            out = self.model.predict(frames, indices)
        n = len(indices)
        self.stats.requests += len(reqs)
        self.stats.model_calls += 1
        self.stats.rows += n
        self.stats.max_batch_rows = max(self.stats.max_batch_rows, n)
        if out is None:  # a model whose reset returns nothing: progress 0 at the start
            out = ProgressOutput(torch.zeros(n), torch.zeros(n), torch.ones(n))
        cols = [
            np.asarray(t.detach().cpu(), np.float32).reshape(n)
            for t in (out.progress, out.success, out.confidence)
        ]
        results, k = [], 0
        for r in reqs:
            results.append(Result(*(c[k : k + r.rows] for c in cols), batch_rows=n))
            k += r.rows
        return results


def _settle(req: Request, fn: Callable[[], object]) -> None:
    try:
        req.future.set_result(fn())
    except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
        req.future.set_exception(e)
