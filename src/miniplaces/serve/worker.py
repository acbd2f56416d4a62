"""One thread owns the models: requests queue their work and wait, so the HTTP threads stay free.

PyTorch models are not safe to run from several threads at once (saliency and attacks flip
`requires_grad` and train/eval modes while they run), and a CPU has no spare cores to gain
from it; a single worker runs jobs one after the other. The queue is bounded: when it is
full the server answers "busy" instead of piling up work nobody will wait for.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import torch

from miniplaces.serve.images import ServeError

T = TypeVar("T")
MAX_PENDING = 8
JOB_TIMEOUT_S = 120.0


class InferenceWorker:
    """A daemon thread running submitted callables in order; `close()` stops it."""

    def __init__(self, max_pending: int = MAX_PENDING, threads: int | None = None) -> None:
        self._jobs: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None] = queue.Queue(
            maxsize=max_pending)
        self._threads = threads
        self._thread = threading.Thread(target=self._loop, name="miniplaces-serve-worker", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # handed to the waiting request, which reports it
                future.set_exception(err)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `fn(*args)`; a `ServeError` (503) when the queue is full."""
        future: Future[T] = Future()
        try:
            self._jobs.put_nowait((fn, args, future))
        except queue.Full:
            raise ServeError("the model is busy with other requests; try again in a moment", 503) from None
        return future

    def run(self, fn: Callable[..., T], *args: Any, timeout: float = JOB_TIMEOUT_S) -> T:
        """`fn(*args)` on the worker thread; waits for the result."""
        return self.submit(fn, *args).result(timeout=timeout)

    def close(self) -> None:
        """Let queued jobs finish, then stop the thread."""
        self._jobs.put(None)
        self._thread.join(timeout=JOB_TIMEOUT_S)
