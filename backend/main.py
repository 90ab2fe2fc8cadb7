"""ASGI entry point: ``uvicorn backend.main:app`` from the repository root.

Two things must happen before ``backend.app.main`` is imported:

* the process-level defaults, before it imports torch and tqdm, because both read them only
  once, when they load: libgomp (torch's OpenMP) ``OMP_WAIT_POLICY``, tqdm ``TQDM_DISABLE``;
* with ``--workers N`` (``WEB_CONCURRENCY``), pointing prometheus_client at the server's shared
  metrics folder, so ``/metrics`` adds up every worker (``backend/app/core/multiprocess.py``):
  prometheus_client reads its mode when it is imported.
"""

from backend.app.core import multiprocess
from backend.app.core.config import apply_process_defaults, get_settings

apply_process_defaults(get_settings())
multiprocess.configure()

from backend.app.main import app  # noqa: E402 - after the defaults and the metrics mode above

__all__ = ["app"]
