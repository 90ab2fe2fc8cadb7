"""Small runtime helpers: request-id context, logging setup, running work in a thread pool."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The name of the API key the current request came with (``core/auth.py``); the audit row records it.
client_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("client", default=None)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the current request's X-Request-ID, ``-`` outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


_FORMAT = "%(asctime)s %(levelname)s %(name)s [req %(request_id)s] %(message)s"


def configure_logging(level: str) -> None:
    """Level for the ``backend`` and ``retina`` loggers, and a stderr handler when nobody set one.

    Uvicorn configures only its own loggers, so without this our startup report (which
    models loaded, which were refused and why) would be invisible at INFO. When the root
    logger already has handlers (an operator's config, pytest) records go there instead.
    """
    for name in ("backend", "retina"):
        log = logging.getLogger(name)
        log.setLevel(level)
        if not log.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter(_FORMAT))
            handler.addFilter(RequestIdFilter())
            log.addHandler(handler)


async def run_in(pool: Executor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``await fn(*args)`` in ``pool``, carrying the request-id context into the thread."""
    ctx = contextvars.copy_context()
    call = functools.partial(ctx.run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)
