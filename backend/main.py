"""ASGI entry point: ``uvicorn backend.main:app`` from the repository root.

The process-level defaults are applied here, before ``backend.app.main`` imports torch and
tqdm, because both read them only once, when they load: libgomp (torch's OpenMP)
``OMP_WAIT_POLICY``, tqdm ``TQDM_DISABLE``.
"""

from backend.app.core.config import apply_process_defaults, get_settings

apply_process_defaults(get_settings())

from backend.app.main import app  # noqa: E402 - must come after the defaults above

__all__ = ["app"]
