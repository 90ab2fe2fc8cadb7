"""Old name of :mod:`training.fit_gate` (the image-gate fitter), kept so ``python -m training.gate`` still runs.

The fitter was renamed so that it no longer shares a name with the served gate, ``retina/gate.py``.
Import from ``training.fit_gate``; this module only forwards the command line.
"""

from __future__ import annotations

from training.fit_gate import main

if __name__ == "__main__":
    main()
