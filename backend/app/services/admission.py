"""Admission control: how much decode memory and how many uploads one worker takes on at once.

Two limits, both answered with 503 ``overloaded`` and ``Retry-After`` (a client should come back,
not give up), so a flood of uploads slows clients down instead of getting the process OOM-killed:

* a count of upload requests in flight (``RETINA_MAX_IN_FLIGHT``), checked by
  ``core/admission.AdmissionMiddleware`` before the body is read, which also bounds every queue
  behind it (decode pool, micro-batcher, audit writer);
* a memory budget (``RETINA_MEMORY_BUDGET_MB``): before an upload is decoded, the pipeline reserves
  its upload bytes plus the decode's estimated peak (``retina.memory``), and releases them once the
  job that decodes, gates and prepares it has returned (only the small model input outlives it).
  A reservation that does not fit is refused at once rather than queued: waiting requests would
  each hold their body, and a queue is what made the flood grow past the container's limit.

One request alone is always admitted when nothing else is in flight, whatever its estimate (its
own limit is ``RETINA_MAX_DECODE_MB``, checked before this), so a budget below the decode limit
cannot make an image unservable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from backend.app.services.errors import ServiceError

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 2


def overloaded(detail: str) -> ServiceError:
    return ServiceError(503, "overloaded", detail, headers={"Retry-After": str(RETRY_AFTER_S)})


class Admission:
    """Counts requests and reserved bytes of one worker process (thread-safe)."""

    def __init__(self, budget_bytes: int, max_in_flight: int) -> None:
        self.budget_bytes = budget_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.reserved = 0
        self.refused = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        """Count one more upload request; False (nothing counted) when ``max_in_flight`` are in already."""
        with self._lock:
            if self.in_flight >= self.max_in_flight:
                self.refused += 1
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @contextmanager
    def reserve(self, nbytes: int, what: str = "upload") -> Iterator[None]:
        """Hold ``nbytes`` of the memory budget for the block; 503 ``overloaded`` when they do not fit."""
        with self._lock:
            if self.reserved and self.reserved + nbytes > self.budget_bytes:
                self.refused += 1
                free = max(0, self.budget_bytes - self.reserved)
                logger.info("admission: %s needs %.0f MB, %.0f MB free; 503", what, nbytes / 1e6, free / 1e6)
                raise overloaded(
                    f"the server is busy: decoding this {what} needs about {nbytes / 1e6:.0f} MB and "
                    f"{free / 1e6:.0f} MB of this worker's budget (RETINA_MEMORY_BUDGET_MB) is free; "
                    f"retry in {RETRY_AFTER_S} s"
                )
            self.reserved += nbytes
        try:
            yield
        finally:
            with self._lock:
                self.reserved -= nbytes
