"""A flood of concurrent large uploads against a real backend: peak resident memory, 503s, latency, errors.

    python -m benchmarks.load_benchmark                       # 12 and 24 concurrent 39 MP RGBA PNGs
    python -m benchmarks.load_benchmark --concurrency 4 12 24 --rounds 2 --memory-budget-mb 1200

Starts ``uvicorn backend.main:app`` (one worker, the shipped models, a throwaway audit log and an
API key) with the service's own settings, sends ``--concurrency`` uploads at once for each level
(``--rounds`` waves), samples the server's resident memory (``/proc/PID/status`` VmRSS, children
included) every 50 ms, and prints one row per level:

    concurrent | peak RSS MB | rest RSS MB | 200 | 422 | 503 | other | p50 s | p99 s | after-flood ok

The upload is the issue-27 probe: a 39 MP RGBA PNG (0.17 MB on the wire, ~890 MB to decode before
the strip conversion). A valid OCT B-scan is sent after each flood: ``after-flood ok`` says it was
answered 200. Refusals by the decode limit (422 ``image_too_large``) are counted apart from 503s.
No timing is asserted anywhere; this prints a table for the README and the issue.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from retina.paths import REPO_ROOT

logger = logging.getLogger("load_benchmark")
KEY = "load-benchmark-key"


def rgba_png(width: int = 7200, height: int = 5400) -> bytes:
    """A flat RGBA PNG: ~0.17 MB compressed, ``width x height`` pixels decoded."""
    buf = io.BytesIO()
    Image.new("RGBA", (width, height), (40, 20, 10, 255)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (uvicorn runs the app in-process with one worker)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Sampler(threading.Thread):
    """Samples RSS every ``interval`` s until stopped; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(self.interval)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak


@dataclass
class Row:
    concurrency: int
    peak_mb: float
    rest_mb: float
    codes: Counter[int]
    errors: Counter[str]
    latencies: list[float]
    after_ok: bool


def start_server(port: int, env_extra: dict[str, str], repo: Path = REPO_ROOT) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINA_")}
    env |= {
        "RETINA_API_KEY": KEY,
        "RETINA_DEVICE": "cpu",
        "RETINA_LOG_LEVEL": "WARNING",
        "RETINA_AUDIT_DB": f"sqlite:///{tempfile.mkdtemp(prefix='retina-load-')}/audit.sqlite",
        **env_extra,
    }
    cmd = [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(base: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{base} not ready after {timeout_s:.0f} s")


def one_upload(base: str, data: bytes, name: str) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        r = httpx.post(
            f"{base}/predict?model=fundus",
            files={"file": (name, data, "application/octet-stream")},
            headers={"X-API-Key": KEY},
            timeout=600,
        )
        code = r.json().get("error", "") if r.status_code != 200 else ""
        return r.status_code, code, time.perf_counter() - start
    except httpx.HTTPError as e:
        return 0, type(e).__name__, time.perf_counter() - start


def flood(base: str, pid: int, data: bytes, valid: bytes, concurrency: int, rounds: int) -> Row:
    rest = rss_mb(pid)
    sampler = Sampler(pid)
    sampler.start()
    results: list[tuple[int, str, float]] = []
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(rounds):
            results += list(pool.map(lambda _i: one_upload(base, data, "big.png"), range(concurrency)))
    peak = sampler.stop()
    after = one_upload(base, valid, "valid.jpeg")
    codes = Counter(status for status, _, _ in results)
    errors = Counter(code for _, code, _ in results if code)
    return Row(concurrency, peak, rest, codes, errors, [t for _, _, t in results], after[0] == 200)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def print_table(rows: list[Row], label: str) -> None:
    print(f"\n{label}")  # noqa: T201 - the benchmark's output is its table
    header = "| concurrent | peak RSS MB | rest RSS MB | 200 | 422 | 503 | other | p50 s | p99 s | errors | after ok |"
    print(header)  # noqa: T201
    print("|---" * (header.count("|") - 1) + "|")  # noqa: T201
    for r in rows:
        other = sum(n for c, n in r.codes.items() if c not in (200, 422, 503))
        errs = ", ".join(f"{k} x{n}" for k, n in sorted(r.errors.items())) or "-"
        print(  # noqa: T201
            f"| {r.concurrency} | {r.peak_mb:.0f} | {r.rest_mb:.0f} | {r.codes[200]} | {r.codes[422]} | "
            f"{r.codes[503]} | {other} | {statistics.median(r.latencies):.1f} | {percentile(r.latencies, 99):.1f} | "
            f"{errs} | {'yes' if r.after_ok else 'NO'} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[12, 24])
    parser.add_argument("--rounds", type=int, default=1, help="waves of --concurrency uploads per level")
    parser.add_argument("--width", type=int, default=7200)
    parser.add_argument("--height", type=int, default=5400)
    parser.add_argument("--env", nargs="*", default=[], help="extra RETINA_*=value settings for the server")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="checkout whose backend is served (a baseline)")
    parser.add_argument("--valid", type=Path, default=REPO_ROOT / "samples" / "fundus", help="a valid image (or dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    data = rgba_png(args.width, args.height)
    valid_path = args.valid if args.valid.is_file() else sorted(args.valid.glob("*.jp*g"))[0]
    valid = valid_path.read_bytes()
    extra = dict(kv.split("=", 1) for kv in args.env)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port, extra, args.repo)
    try:
        wait_ready(base)
        logger.info("ready; upload %.2f MB, %dx%d RGBA; settings %s", len(data) / 1e6, args.width, args.height, extra)
        rows = [flood(base, server.pid, data, valid, c, args.rounds) for c in args.concurrency]
    finally:
        server.terminate()
        server.wait(30)
    settings = extra or "defaults"
    label = f"{args.width}x{args.height} RGBA PNG ({len(data) / 1e6:.2f} MB), {args.repo}, settings {settings}"
    print_table(rows, label)


if __name__ == "__main__":
    main()
