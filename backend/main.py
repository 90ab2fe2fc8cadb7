"""ASGI entry point: ``uvicorn backend.main:app`` from the repository root.

With ``--workers N`` (``WEB_CONCURRENCY``) each worker first points prometheus_client at its
server's shared metrics folder, so ``/metrics`` adds up every worker
(``backend/app/core/multiprocess.py``); that has to happen before prometheus_client is imported.
"""

from backend.app.core import multiprocess

multiprocess.configure()

from backend.app.main import app  # noqa: E402 - after configure(): prometheus_client reads its mode at import

__all__ = ["app"]
