"""A service published beyond this machine refuses to start without an API key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.app.core.config import Settings


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "10.0.0.5"])
def test_public_bind_without_a_key_is_refused(bind: str) -> None:
    with pytest.raises(ValidationError, match="set RETINA_API_KEY"):
        Settings(bind_address=bind, api_key="")


@pytest.mark.parametrize("bind", [None, "127.0.0.1", "localhost", "::1"])
def test_loopback_needs_no_key(bind: str | None) -> None:
    assert Settings(bind_address=bind, api_key="").api_key is None


def test_public_bind_with_a_key_starts() -> None:
    s = Settings(bind_address="0.0.0.0", api_key="k")
    assert s.api_key is not None and s.api_key.get_secret_value() == "k"
