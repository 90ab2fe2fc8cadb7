"""The FastAPI application: ``create_app(settings)`` builds it, ``backend.app.main.app`` is the default one."""
