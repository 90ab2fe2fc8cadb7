"""``python -m training.fit_gate``: fit the image gate (the README's command; the code is :mod:`training.gate`).

python -m training.fit_gate --data ../shared/data --out models/image-gate.pt --report-dir runs/gate
"""

from __future__ import annotations

from training.gate.cli import main

if __name__ == "__main__":
    main()
