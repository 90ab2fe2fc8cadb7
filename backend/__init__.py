"""RetinaScope FastAPI inference service (see ``backend/README.md``).

Importing it changes nothing in the process: the environment defaults the server wants
before torch loads (``OMP_WAIT_POLICY``, ``TQDM_DISABLE``) are settings
(``Settings.omp_wait_policy``, ``Settings.progress_bars``), applied by the ASGI entry point
``backend/main.py`` with :func:`backend.app.core.config.apply_process_defaults`.
"""
