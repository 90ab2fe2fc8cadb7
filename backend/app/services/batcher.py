"""Per-model micro-batcher: many concurrent requests, one forward pass.

Request handlers (on the event loop) hand a *prepared* ``uint8`` image ``(C, S, S)`` to
:meth:`MicroBatcher.submit` and await the returned future. One dedicated worker thread per
model collects what is queued, stacks it to ``(N, C, S, S)``, applies the preprocessing
tail (``retina.preprocessing.tail``: uint8 -> normalised float, elementwise, so a batch
gives exactly the per-image values) and runs a single forward under
``torch.inference_mode``. Torch therefore never runs on the event loop, and only one
thread per model drives torch's intra-op pool, which keeps a 2-core box from being
oversubscribed by one torch team per request.

When to stop collecting: a batch is closed when it holds ``max_batch`` jobs, or when the
queue is empty and either no request is being decoded right now (``expecting == 0``: no
one to wait for, so a lone request pays no extra latency) or ``wait_s`` has passed.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from backend.app.services.errors import ServiceError
from backend.app.services.metrics import ServiceMetrics
from retina.assessment import forward_probabilities

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """What one request gets back.

    Attributes:
        probabilities: ``(num_classes,)`` float64 softmax(logits / T), sums to 1.
        forward_ms: wall time of the batch's tail + forward + softmax, in ms.
        batch_size: how many requests shared that forward pass.
    """

    probabilities: np.ndarray
    forward_ms: float
    batch_size: int


@dataclass
class _Job:
    x: torch.Tensor  # uint8 (C, S, S)
    future: Future[BatchResult]
    enqueued: float


_STOP = object()
_WAKE = object()  # re-check the expecting count; carries no work


class MicroBatcher:
    """Batches prepared images for one model on a dedicated thread.

    Args:
        name: model id (thread name, metric label).
        model: the forward pass, ``float (N, C, S, S) -> logits (N, K)``: the network in eval mode on
            ``device``, or a ``retina.engine`` engine.
        to_input: batched preprocessing tail, ``uint8 (N, C, S, S) -> float (N, C, S, S)``.
        temperature: softmax temperature from the checkpoint's calibration (1.0 = none).
        device: where ``model`` lives.
        max_batch: most jobs per forward pass.
        wait_s: longest wait for more jobs while some requests are still being decoded.
        metrics: batch-size / latency histograms (optional).
    """

    def __init__(
        self,
        name: str,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        to_input: Callable[[torch.Tensor], torch.Tensor],
        temperature: float,
        device: torch.device,
        max_batch: int = 16,
        wait_s: float = 0.005,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.to_input = to_input
        self.temperature = float(temperature)
        self.device = device
        self.max_batch = max(1, int(max_batch))
        self.wait_s = max(0.0, float(wait_s))
        self.metrics = metrics
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._expecting = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.max_batch_seen = 0

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"batcher-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    # ----------------------------------------------------------------- producers
    @contextmanager
    def expect(self) -> Iterator[Callable[[torch.Tensor], Future[BatchResult]]]:
        """Mark a request as on its way (being read/decoded) so the worker may wait for it.

        Yields the ``submit`` to use for it: it queues the job and stops counting the request
        in one step under the lock, which the worker also holds while it decides whether to
        wait, so it never waits for a job that is already queued nor closes a batch in the
        gap. Leaving the block without submitting (bad image, client gone) wakes a worker
        that may be holding a batch open for it.
        """
        submitted = False

        def submit(x: torch.Tensor) -> Future[BatchResult]:
            nonlocal submitted
            with self._lock:
                future = self.submit(x)
                self._expecting -= 1
                submitted = True
            return future

        with self._lock:
            self._expecting += 1
        try:
            yield submit
        finally:
            if not submitted:
                with self._lock:
                    self._expecting -= 1
                self._queue.put(_WAKE)

    def submit(self, x: torch.Tensor) -> Future[BatchResult]:
        """Queue a prepared ``uint8 (C, S, S)`` image; the future resolves to its :class:`BatchResult`."""
        if self._thread is None:
            raise RuntimeError(f"batcher {self.name} is not running")
        fut: Future[BatchResult] = Future()
        self._queue.put(_Job(x, fut, time.perf_counter()))
        return fut

    # ----------------------------------------------------------------- worker
    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs = [first]
        stop = False
        deadline = time.perf_counter() + self.wait_s
        while len(jobs) < self.max_batch:
            # Decide under the lock that expect()'s submit holds while it queues a job and
            # stops counting it: "nothing queued and nobody expected" is then a fact.
            with self._lock:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
                    if self._expecting <= 0:
                        break
            if item is None:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)  # woken by a job or a _WAKE
                except queue.Empty:
                    break
            if item is _STOP:
                stop = True
                break
            if item is _WAKE:
                continue
            jobs.append(item)  # type: ignore[arg-type]
        return jobs, stop

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if item is _WAKE:
                continue
            jobs, stop = self._collect(item)  # type: ignore[arg-type]
            # Drop jobs whose caller went away (client disconnected, future cancelled).
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if jobs:
                self._forward(jobs)
            if stop:
                return

    def _forward(self, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                u8 = torch.stack([j.x for j in jobs]).to(self.device, non_blocking=True)
                probs = forward_probabilities(self.model, self.to_input, u8, self.temperature)
        except Exception as exc:  # every waiter must hear about it, not hang
            logger.exception("forward pass of %s failed for a batch of %d", self.name, len(jobs))
            for j in jobs:
                j.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - start
        n = len(jobs)
        self.batches += 1
        self.max_batch_seen = max(self.max_batch_seen, n)
        if self.metrics is not None:
            self.metrics.batch_size.labels(self.name).observe(n)
            self.metrics.inference_seconds.labels(self.name).observe(elapsed)
            for j in jobs:
                self.metrics.queue_wait_seconds.labels(self.name).observe(max(0.0, start - j.enqueued))
        for i, j in enumerate(jobs):
            j.future.set_result(BatchResult(probs[i], elapsed * 1000.0, n))


async def wait_forward(future: Future[BatchResult], timeout_s: float) -> BatchResult:
    """A micro-batcher result, or 503 ``inference_timeout`` after ``timeout_s`` (a stuck forward pass)."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
    except TimeoutError:
        raise ServiceError(
            503,
            "inference_timeout",
            f"no forward pass within {timeout_s:g} s (RETINA_INFERENCE_TIMEOUT_S)",
            headers={"Retry-After": "5"},
        ) from None
