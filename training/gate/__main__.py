"""``python -m training.gate``: fit the image gate (see :mod:`training.gate.cli`)."""

from __future__ import annotations

from training.gate.cli import main

if __name__ == "__main__":
    main()
