"""Serving benchmark (not a test): the real service under concurrent load, next to the offline model.

    python benchmarks/serve_benchmark.py [--models-dir models/] [--seconds 4] [--workers 1]
        [--env RETINA_ENGINE=torch] [--no-baseline] [--no-stages]

1. Offline throughput per model, in this process, before the server starts: decode +
   ``eval_transform`` (prepare + tail) + torch forward, one thread decoding, torch with every
   core, batch sizes 1, 8 and 32; the best is the reference.
2. Starts ``uvicorn backend.main:app`` on a free loopback port with ``RETINA_MODELS_DIR``,
   waits for /ready, then drives ``/predict`` and ``/gradcam`` with concurrent httpx clients
   (concurrency 1, 8, 16; each cell bounded by ``--seconds`` and ``--max-requests``) using
   real images from ``../shared/data`` (oct-dev for OCT models, fundus-dev for fundus).
3. Then, in the same run, serves the same checkpoints with the plain FastAPI baseline
   (``benchmarks/plain_server.py``: ``def predict``, PIL decode, ``eval_transform``, one torch
   forward per request, no gate) and drives its /predict the same way.
4. Prints one table per model (p50/p95 latency, req/s, % of offline), the ratio to the plain
   server at each concurrency (targets at c=8: fundus >= 2.5x, OCT >= 1.5x) and where the time
   goes per image (decode, gate, prepare, forward on torch and on the served engine).

When the models dir lacks the registered checkpoints (before training shipped them), the
registered models are saved with RANDOM weights to a temp dir and the output says so:
speed does not depend on the weights' values. The load average before and after is
printed, because other processes on the machine skew every number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Same OpenMP policy as the service (Settings.omp_wait_policy, applied by backend/main.py), so the
# offline loop is not slowed by spinning threads on a busy machine either. Must precede the torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from retina import checkpoint, registry  # noqa: E402
from retina.models import build_model  # noqa: E402
from retina.paths import DEFAULT_MODELS_DIR, data_dir  # noqa: E402
from retina.preprocessing import decode_image, eval_transform  # noqa: E402

log = logging.getLogger("serve_benchmark")

CONCURRENCY = (1, 8, 16)
OFFLINE_BATCHES = (1, 8, 32)


@dataclass
class Cell:
    endpoint: str
    concurrency: int
    n: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    server_cpu: float = float("nan")  # cores busy in the server process(es) during the cell
    client_cpu: float = float("nan")  # cores busy in this (client) process during the cell

    @property
    def rps(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0


# ----------------------------------------------------------------------------- setup


def ensure_models(models_dir: Path) -> tuple[Path, bool]:
    """``(dir, random)``: the given dir if it holds every registered checkpoint, else random ones."""
    if all((models_dir / s.checkpoint).is_file() for s in registry.MODELS.values()):
        return models_dir, False
    tmp = Path(tempfile.mkdtemp(prefix="retina-bench-models-"))
    for spec in registry.MODELS.values():
        torch.manual_seed(0)
        args = {"in_channels": spec.preprocess.channels, "num_classes": len(spec.class_names)}
        checkpoint.save(
            tmp / spec.checkpoint,
            build_model(spec.arch, **args),
            arch=spec.arch,
            model_args=args,
            task=spec.task,
            class_names=list(spec.class_names),
            preprocess=spec.preprocess,
            version="0.0.0-random",
        )
    return tmp, True


def images_for(task: str, root: Path, limit: int = 32) -> list[bytes]:
    sub = {"oct": "oct-dev/train/*/*.jpeg", "fundus": "fundus-dev/train/*.jpeg"}[task]
    files = sorted(root.glob(sub))[:limit]
    if not files:
        raise SystemExit(f"no {task} images under {root} (set RETINA_DATA_DIR)")
    return [f.read_bytes() for f in files]


def offline_throughput(ckpt: Path, images: list[bytes], seconds: float) -> dict[int, float]:
    """Images/s for decode + eval_transform + forward at each batch size (one decode thread).

    Each batch size is measured with torch using 1 thread and every core; the better counts,
    so the reference is the strongest simple offline loop, not a strawman.
    """
    model, meta = checkpoint.load(ckpt)
    transform = eval_transform(meta.preprocess)
    out: dict[int, float] = {}
    cores = os.cpu_count() or 1
    with torch.inference_mode():
        model(torch.stack([transform(decode_image(images[0]))] * 2))  # warm-up
        for bs in OFFLINE_BATCHES:
            for threads in sorted({1, cores}):
                torch.set_num_threads(threads)
                done, start, i = 0, time.perf_counter(), 0
                while time.perf_counter() - start < seconds or done == 0:
                    xs = [transform(decode_image(images[(i + k) % len(images)])) for k in range(bs)]
                    i += bs
                    logits = model(torch.stack(xs))
                    torch.softmax(logits / meta.temperature, dim=1)
                    done += bs
                out[bs] = max(out.get(bs, 0.0), done / (time.perf_counter() - start))
    torch.set_num_threads(cores)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    models_dir: Path, port: int, workers: int, extra_env: dict[str, str], app: str = "backend.main:app"
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RETINA_MODELS_DIR": str(models_dir),
        "RETINA_DEVICE": "cpu",
        "RETINA_LOG_LEVEL": "WARNING",
        "RETINA_INSECURE_NO_AUTH": "true",  # a loopback-only benchmark server: the explicit opt-out
        # A throwaway audit log (the real one's cost is part of what is measured).
        "RETINA_AUDIT_DB": f"sqlite:///{tempfile.mkdtemp(prefix='retina-bench-')}/audit.sqlite",
        # The app splits the cores between workers (torch and decode threads) from this.
        "WEB_CONCURRENCY": str(workers),
        **extra_env,
    }
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=REPO, env=env)


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(f"{base}/ready", timeout=2)
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server not ready after {timeout} s: {httpx.get(f'{base}/ready').text}")


# ----------------------------------------------------------------------------- load


def multipart(data: bytes, name: str = "scan.jpeg") -> tuple[bytes, str]:
    """Pre-encoded multipart body, so the client spends its CPU on sending, not encoding."""
    boundary = "retinabenchboundary7MA4YWxk"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def drive(
    base: str, path: str, bodies: list[tuple[bytes, str]], concurrency: int, seconds: float, max_requests: int
) -> Cell:
    latencies: list[float] = []
    errors = 0
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        # Warm the connections (and the server's first-call paths) outside the measurement.
        await asyncio.gather(
            *(
                client.post(path, content=bodies[i % len(bodies)][0], headers={"content-type": bodies[0][1]})
                for i in range(concurrency)
            )
        )
        start = time.perf_counter()
        stop_at = start + seconds

        async def worker(k: int) -> None:
            nonlocal errors, issued
            i = k
            while time.perf_counter() < stop_at and issued < max_requests:
                issued += 1
                body, ctype = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                r = await client.post(path, content=body, headers={"content-type": ctype})
                dt = time.perf_counter() - t0
                if r.status_code == 200:
                    latencies.append(dt)
                else:
                    errors += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    if not latencies:
        return Cell(path, concurrency, 0, errors, elapsed, float("nan"), float("nan"))
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) > 1 else [latencies[0]] * 19
    return Cell(path, concurrency, len(latencies), errors, elapsed, statistics.median(latencies) * 1e3, q[18] * 1e3)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and its children (uvicorn workers), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


@contextlib.contextmanager
def running_server(
    models_dir: Path, workers: int, extra_env: dict[str, str], app: str = "backend.main:app"
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start ``app`` on a free port, wait for /ready, yield ``(base_url, process)``, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(models_dir, port, workers, extra_env, app=app)
    try:
        wait_ready(base, proc)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def measure(
    base: str,
    proc: subprocess.Popen[bytes],
    model_id: str,
    task: str,
    endpoints: list[str],
    concurrencies: list[int],
    args: argparse.Namespace,
) -> list[Cell]:
    """One cell per (endpoint, concurrency) against a running server, with its CPU use."""
    bodies = [multipart(d) for d in images_for(task, args.data_dir)]
    cells = []
    for endpoint in endpoints:
        for c in concurrencies:
            cpu0, own0, t0 = cpu_seconds(proc.pid), time.process_time(), time.perf_counter()
            cell = asyncio.run(drive(base, f"/{endpoint}?model={model_id}", bodies, c, args.seconds, args.max_requests))
            wall = time.perf_counter() - t0
            cell.server_cpu = (cpu_seconds(proc.pid) - cpu0) / wall
            cell.client_cpu = (time.process_time() - own0) / wall
            log.info(
                "  %s %s c=%d: %d ok, %d errors, %.1f req/s, p50 %.1f ms",
                model_id,
                endpoint,
                c,
                cell.n,
                cell.errors,
                cell.rps,
                cell.p50_ms,
            )
            cells.append(cell)
    return cells


def _median_ms(fn: Any, items: list[Any], repeat: int = 2) -> float:
    times = []
    for _ in range(repeat):
        for item in items:
            t0 = time.perf_counter()
            fn(item)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def stage_table(
    models_dir: Path, served: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Per-image medians (ms, one thread) of each serving stage, with the engines the server used."""
    from retina.engine import load_engine
    from retina.gate import GATE_FILE, ImageGate
    from retina.preprocessing import pil_to_uint8_tensor, prepare, tail

    torch.set_num_threads(1)
    gate_path = models_dir / GATE_FILE if (models_dir / GATE_FILE).is_file() else DEFAULT_MODELS_DIR / GATE_FILE
    gate = ImageGate.load(gate_path)
    gate_engine = next((i.get("engine") or {} for i in served if i.get("engine")), {}).get("requested", "torch")
    gate.use_engine(gate_engine, gate_path)
    out: dict[str, dict[str, float]] = {}
    for info in served:
        if not info.get("loaded", True):
            continue
        path = models_dir / f"{info['id']}.pt"
        model, meta = checkpoint.load(path)
        datas = images_for(info["task"], args.data_dir, limit=16)
        imgs = [decode_image(d) for d in datas]
        spec = meta.preprocess
        prepared = [pil_to_uint8_tensor(prepare(im, spec)) for im in imgs]
        xs = [tail(spec)(u8.unsqueeze(0)) for u8 in prepared]
        row = {
            "decode": _median_ms(decode_image, datas),
            "gate": _median_ms(gate.assess, imgs),
            "prepare": _median_ms(lambda im, spec=spec: prepare(im, spec), imgs),
        }
        name = (info.get("engine") or {}).get("name", "torch")
        for label, engine_name in (("forward torch", "torch"), (f"forward {name}", name)):
            engine, _ = load_engine(engine_name, copy.deepcopy(model), meta, path, threads=1)
            engine(xs[0])
            row[label] = _median_ms(engine, xs[:8])
        out[info["id"]] = row
    torch.set_num_threads(os.cpu_count() or 1)
    return out


def report_baseline(
    results: dict[str, list[Cell]], baseline: dict[str, list[Cell]], served: list[dict[str, Any]]
) -> None:
    log.info("")
    log.info("## /predict: RetinaScope vs the plain FastAPI baseline (benchmarks/plain_server.py), same run")
    log.info("| model | engine | conc | RetinaScope req/s | plain req/s | ratio | RetinaScope p50 ms | plain p50 ms |")
    log.info("|---|---|---:|---:|---:|---:|---:|---:|")
    targets = {"fundus": 2.5, "oct": 1.5}
    checks = []
    for info in served:
        mid = info["id"]
        ours = {c.concurrency: c for c in results.get(mid, []) if c.endpoint.startswith("/predict")}
        plain = {c.concurrency: c for c in baseline.get(mid, [])}
        engine = (info.get("engine") or {}).get("name", "torch")
        for conc in sorted(ours):
            if conc not in plain:
                continue
            a, b = ours[conc], plain[conc]
            ratio = a.rps / b.rps if b.rps else float("nan")
            log.info(
                "| %s | %s | %d | %.1f | %.1f | %.2fx | %.1f | %.1f |",
                mid,
                engine,
                conc,
                a.rps,
                b.rps,
                ratio,
                a.p50_ms,
                b.p50_ms,
            )
            if conc == 8 and info.get("default") and info["task"] in targets:
                t = targets[info["task"]]
                checks.append(f"{mid} c=8: {ratio:.2f}x the plain server (target >= {t}x)")
    for line in checks:
        log.info("- %s", line)


def report_stages(stages: dict[str, dict[str, float]]) -> None:
    log.info("")
    log.info("## Where the time goes: per-image medians in ms, one thread, in-process")
    cols = sorted(
        {k for row in stages.values() for k in row},
        key=lambda k: (
            ("decode", "gate", "prepare").index(k) if k in ("decode", "gate", "prepare") else 3 + (k != "forward torch")
        ),
    )
    log.info("| model | " + " | ".join(cols) + " |")
    log.info("|---|" + "---:|" * len(cols))
    for mid, row in stages.items():
        log.info("| %s | %s |", mid, " | ".join(f"{row[c]:.1f}" if c in row else "-" for c in cols))


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    ap.add_argument("--data-dir", type=Path, default=data_dir())
    ap.add_argument("--seconds", type=float, default=4.0, help="measurement time per cell")
    ap.add_argument("--max-requests", type=int, default=3000, help="cap per cell")
    ap.add_argument("--offline-seconds", type=float, default=2.0, help="per batch size")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--env", action="append", default=[], help="extra RETINA_X=Y for the server (repeatable)")
    ap.add_argument("--endpoints", default="predict,gradcam")
    ap.add_argument("--models", default="", help="comma-separated model ids to measure (default: every served model)")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also serve the checkpoints with benchmarks/plain_server.py and print the ratio",
    )
    ap.add_argument(
        "--stages", action=argparse.BooleanOptionalAction, default=True, help="print the per-stage cost table"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    models_dir, random_weights = ensure_models(args.models_dir)
    if random_weights:
        log.warning(
            "!! %s lacks the registered checkpoints: benchmarking RANDOM-WEIGHT copies of the registered "
            "models from %s (same architectures and preprocessing; speed, not accuracy)",
            args.models_dir,
            models_dir,
        )
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    log.info("machine: %d cores, load average before: %s", os.cpu_count() or 0, loadavg())

    # Offline first, while nothing else of ours runs.
    from retina.gate import GATE_FILE  # the gate is no /predict model

    only = {m.strip() for m in args.models.split(",") if m.strip()}
    targets = [
        (p.stem, p) for p in sorted(models_dir.glob("*.pt")) if p.name != GATE_FILE and (not only or p.stem in only)
    ]
    if missing := only - {model_id for model_id, _ in targets}:
        ap.error(f"--models: no checkpoint in {models_dir} for {', '.join(sorted(missing))}")
    offline: dict[str, dict[int, float]] = {}
    for model_id, path in targets:
        meta = checkpoint.meta_from_dict(checkpoint.read(path))
        offline[model_id] = offline_throughput(path, images_for(meta.task, args.data_dir), args.offline_seconds)
        log.info("offline %s: %s", model_id, ", ".join(f"bs{b}={v:.1f}/s" for b, v in offline[model_id].items()))

    served: list[dict[str, Any]] = []
    results: dict[str, list[Cell]] = {}
    with running_server(models_dir, args.workers, extra_env) as (base, proc):
        served = [m for m in httpx.get(f"{base}/models", timeout=10).json() if not only or m["id"] in only]
        for info in served:
            if info.get("loaded", True):
                results[info["id"]] = measure(base, proc, info["id"], info["task"], endpoints, concurrencies, args)
    baseline: dict[str, list[Cell]] = {}
    if args.baseline:
        # The plain server gets the same cores, images and concurrencies, one model at a time.
        with running_server(models_dir, 1, {}, app="benchmarks.plain_server:app") as (base, proc):
            for info in served:
                if info["id"] in results:
                    baseline[info["id"]] = measure(
                        base, proc, info["id"], info["task"], ["predict"], concurrencies, args
                    )
    stages = stage_table(models_dir, served, args) if args.stages else {}
    report(results, served, offline, random_weights, args)
    if baseline:
        report_baseline(results, baseline, served)
    if stages:
        report_stages(stages)
    log.info("load average after: %s", loadavg())
    return 0


def report(
    results: dict[str, list[Cell]],
    served: list[dict[str, Any]],
    offline: dict[str, dict[int, float]],
    random_weights: bool,
    args: argparse.Namespace,
) -> None:
    defaults = {m["task"]: m["id"] for m in served if m.get("default")}
    log.info("")
    log.info(
        "## Serving benchmark (uvicorn workers=%d, %s weights, %.0f s per cell)",
        args.workers,
        "RANDOM" if random_weights else "shipped",
        args.seconds,
    )
    for info in served:
        mid = info["id"]
        if mid not in results:
            continue
        best_bs, best = max(offline[mid].items(), key=lambda kv: kv[1])
        log.info("")
        log.info(
            "### %s (%s, %s, %d px)%s: offline %.1f img/s (best batch %d; %s)",
            mid,
            info["task"],
            info["arch"],
            info["input_size"],
            " [default]" if info.get("default") else "",
            best,
            best_bs,
            ", ".join(f"bs{b} {v:.1f}" for b, v in offline[mid].items()),
        )
        log.info("| endpoint | conc | ok | err | p50 ms | p95 ms | req/s | % offline | server CPU | client CPU |")
        log.info("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in results[mid]:
            log.info(
                "| %s | %d | %d | %d | %.1f | %.1f | %.1f | %.0f%% | %.2f | %.2f |",
                c.endpoint.split("?")[0],
                c.concurrency,
                c.n,
                c.errors,
                c.p50_ms,
                c.p95_ms,
                c.rps,
                100 * c.rps / best,
                c.server_cpu,
                c.client_cpu,
            )
        by = {(c.endpoint.split("?")[0], c.concurrency): c for c in results[mid]}
        checks = []
        p8 = by.get(("/predict", 8))
        if p8 and mid == defaults.get("fundus"):
            checks.append(f"/predict c=8 {100 * p8.rps / best:.0f}% of offline (target >= 70%)")
        if p8 and mid == defaults.get("oct"):
            checks.append(f"/predict c=8 {p8.rps:.0f} req/s (target >= 300)")
        for c in sorted({k[1] for k in by}):
            g, p = by.get(("/gradcam", c)), by.get(("/predict", c))
            if g and p and p.p50_ms > 0:
                checks.append(f"c={c}: gradcam p50 / predict p50 = {g.p50_ms / p.p50_ms:.2f} (target <= 3)")
        for line in checks:
            log.info("- %s", line)


if __name__ == "__main__":
    raise SystemExit(main())
