"""RetinaScope FastAPI inference service (see ``backend/README.md``).

Process-level defaults that must be in place before torch (and tqdm) are first imported,
which for ``uvicorn backend.main:app`` is right here. Each is only a default: an operator's
own environment variable wins.

* ``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP threads sleep instead of spin-waiting between
  parallel regions. The service runs decode threads and the event loop next to the forward
  pass on few cores; with spinning, a 2-thread forward on a busy 2-core box costs up to 10x
  the CPU time of the same forward with passive waiting (measured, see README).
* ``TQDM_DISABLE=1``: ScoreCAM reports progress with tqdm bars, which in a server only
  flood stderr. tqdm reads ``TQDM_*`` variables at import time.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TQDM_DISABLE", "1")
