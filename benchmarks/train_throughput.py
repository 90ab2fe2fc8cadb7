"""Training throughput of every architecture at its configured size (images/s).

    python -m benchmarks.train_throughput [--threads 2] [--min-time 3] [--device cpu] [--amp] [--only simplecnn@28]

Each row times the real training step of ``training.fit.loop.train_one_epoch``: synthetic
uint8 images held in memory (:class:`training.data.loaders.TensorBatches`), the served
``tail(spec)`` normalisation on every batch, forward, backward and optimizer step. Data
loading from disk and ``prepare()`` are excluded (training caches prepared images). The
SimCLR row times one contrastive step per image pair (two views through the encoder and
projection head, NT-Xent), with the view augmentation excluded.

Prints a Markdown table and the projected time of one OCTMNIST-28 epoch (97,477 images)
of ``simplecnn``; the target is at most 60 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pytorch_metric_learning.losses import NTXentLoss
from torch import nn

from retina.models import build_model
from retina.preprocessing import PreprocessSpec, get_preset
from retina.runtime import resolve_device
from training.data.loaders import TensorBatches
from training.evaluate.predict import set_threads, to_model_input
from training.fit.loop import train_one_epoch
from training.fit.model import keep_frozen_bn_eval

logger = logging.getLogger("benchmarks.train_throughput")

OCTMNIST_TRAIN = 97_477


@dataclass(frozen=True)
class Case:
    name: str
    arch: str
    preset: str
    batch: int
    size: int | None = None  # override the preset's size
    args: dict[str, Any] = field(default_factory=dict)
    note: str = ""


CASES = (
    Case("simplecnn@28", "simplecnn", "oct_28", 64, note="oct_simplecnn config"),
    Case("resnet18@128", "resnet18", "oct_128", 32, note="oct_resnet18 config"),
    Case("resnet50@224 frozen", "resnet50", "fundus_224", 32, args={"freeze_backbone": True, "head_hidden": 128}),
    Case("simclr@128", "simclr", "oct_128", 64, note="contrastive step, 2 views per image"),
    Case("mobilenet_v3_large@224", "mobilenet_v3_large", "fundus_224", 32),
    Case("efficientnet_b0@224", "efficientnet_b0", "fundus_224", 32),
    Case("resnet18@224", "resnet18", "fundus_224", 32),
    Case("resnet18@256", "resnet18", "fundus_256", 32),
)


def _spec(case: Case) -> PreprocessSpec:
    spec = get_preset(case.preset)
    return spec.replace(size=case.size) if case.size else spec


def _batches_for(min_time: float, est_per_batch: float, cap: int) -> int:
    return int(max(2, min(cap, min_time / max(est_per_batch, 1e-4))))


def bench_supervised(case: Case, device: torch.device, min_time: float, channels_last: bool, amp: bool) -> float:
    """images/s of ``train_one_epoch`` on synthetic uint8 data (after one warm-up batch)."""
    spec = _spec(case)
    torch.manual_seed(0)
    model = build_model(case.arch, in_channels=spec.channels, num_classes=5, **case.args).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    crit = nn.CrossEntropyLoss()
    model.register_forward_pre_hook(lambda m, _: keep_frozen_bn_eval(m))

    def run(n_batches: int) -> dict[str, float]:
        n = n_batches * case.batch
        x = torch.randint(0, 256, (n, spec.channels, spec.size, spec.size), dtype=torch.uint8)
        y = torch.randint(0, 5, (n,))
        loader = TensorBatches(x, y, case.batch, shuffle=True, drop_last=True)
        return train_one_epoch(
            model, loader, opt, crit, device, spec, amp=amp, channels_last=channels_last, progress=False
        )

    warm = run(2)  # allocator, oneDNN primitive caches, cudnn autotune
    stats = run(_batches_for(min_time, warm["seconds"] / 2, 2000))
    return stats["images_per_s"]


def bench_simclr(case: Case, device: torch.device, min_time: float, channels_last: bool, amp: bool) -> float:
    """Image pairs/s of a SimCLR step (two views -> embed -> NT-Xent -> backward -> step)."""
    spec = _spec(case)
    torch.manual_seed(0)
    model = build_model("simclr", in_channels=spec.channels, num_classes=4).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([*model.backbone.parameters(), *model.projection_head.parameters()], lr=1e-3)
    loss_fn = NTXentLoss(temperature=0.5)
    b = case.batch
    v1 = torch.randint(0, 256, (b, spec.channels, spec.size, spec.size), dtype=torch.uint8)
    v2 = torch.randint(0, 256, (b, spec.channels, spec.size, spec.size), dtype=torch.uint8)
    labels = torch.arange(b, device=device).repeat(2)
    model.train()

    def step() -> None:
        x = to_model_input(torch.cat([v1, v2]), spec, device, channels_last=channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            z = model.embed(x)
        loss = loss_fn(z.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    n = _batches_for(min_time, (time.perf_counter() - t0) / 2, 500)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * b / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores available)")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds to time each case (after warm-up)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--only", action="append", default=[], help="run only these case names (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    channels_last = not args.no_channels_last
    rows = []
    results: dict[str, float] = {}
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        logger.info("timing %s ...", case.name)
        fn = bench_simclr if case.arch == "simclr" else bench_supervised
        ips = fn(case, device, args.min_time, channels_last, args.amp)
        results[case.name] = ips
        spec = _spec(case)
        rows.append(f"| {case.name} | {spec.channels} | {case.batch} | {ips:,.1f} | {case.note} |")
    dev = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {threads} threads"
    lines = [
        "",
        f"Training throughput ({dev}, channels_last={channels_last}, amp={args.amp}; fwd+bwd+step incl. tail)",
        "",
        "| arch@size | channels | batch | images/s | note |",
        "|---|---|---|---|---|",
        *rows,
    ]
    if "simplecnn@28" in results:
        sec = OCTMNIST_TRAIN / results["simplecnn@28"]
        verdict = "meets" if sec <= 60 else "MISSES"
        lines += [
            "",
            f"Projected OCTMNIST-28 epoch ({OCTMNIST_TRAIN:,} images) of simplecnn: {sec:.1f} s ({verdict} <= 60 s)",
        ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
