"""API fixtures: apps built with ``create_app(Settings(...))`` over checkpoints written by the real save().

* ``api_models_dir``: every registered model (random weights, BN statistics set so outputs depend
  on the input: see ``helpers.save_lively_checkpoint``) plus an
  extra, unregistered ``oct-small.pt`` (SimpleCNN, 64 px, calibrated T=2, a NaN metric) that
  the service must serve from its own metadata; it keeps ScoreCAM and the strict app cheap.
* ``client``: the default app over that dir, shared by the session (``with TestClient`` so the
  lifespan loads the models).
* ``make_client``: builds other apps (strict limits, broken dirs) as context managers.

Images are the shipped ``samples/`` (``oct_images``, ``oct_image``, ``fundus_image`` in tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retina.registry import MODELS
from tests.backend.helpers import (
    SMALL_ID,
    app_client,
    base_settings,
    save_lively_checkpoint,
    save_small_model,
    write_png_bomb,
)


@pytest.fixture(scope="session")
def api_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every registered model (random weights, input-sensitive) plus the extra small model."""
    d = tmp_path_factory.mktemp("api_models")
    for spec in MODELS.values():
        save_lively_checkpoint(spec, d / spec.checkpoint)
    save_small_model(d / f"{SMALL_ID}.pt")
    return d


@pytest.fixture(scope="session")
def small_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the extra SimpleCNN: the registered checkpoints are missing (cheap app for limit tests)."""
    d = tmp_path_factory.mktemp("small_only")
    save_small_model(d / f"{SMALL_ID}.pt")
    return d


@pytest.fixture(scope="session")
def client(api_models_dir: Path) -> Iterator[TestClient]:
    with app_client(base_settings(api_models_dir)) as c:
        yield c


@pytest.fixture
def make_client() -> Callable[..., AbstractContextManager[TestClient]]:
    """``with make_client(models_dir, **settings) as c:`` another app."""

    def make(models_dir: Path, **overrides: Any) -> AbstractContextManager[TestClient]:
        return app_client(base_settings(models_dir, **overrides))

    return make


# ----------------------------------------------------------------------------- images


@pytest.fixture(scope="session")
def png_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")


@pytest.fixture(scope="session")
def png_bytes_small(oct_image: Path) -> bytes:
    """A small valid grayscale PNG of a real OCT scan (under the strict app's 50 kB limit; passes the gate)."""
    import io

    from PIL import Image

    img = Image.open(oct_image).convert("L")
    img.thumbnail((160, 160))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    assert len(buf.getvalue()) < 50_000
    return buf.getvalue()


# ----------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server for the session (tests/postgres.py); skips when it is not installed."""
    from tests.postgres import postgres_cluster

    try:
        with postgres_cluster() as url:
            yield url
    except FileNotFoundError as e:
        pytest.skip(f"{e}: install Debian's postgresql (scripts/test.sh does when run as root)")


@pytest.fixture
def postgres_url(postgres_server: str, request: pytest.FixtureRequest) -> str:
    """A new, empty database on that server for this test (SQLAlchemy URL, psycopg driver)."""
    from tests.postgres import fresh_database

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    return fresh_database(postgres_server, name)
