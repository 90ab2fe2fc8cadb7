"""Int8 calibration of a shipped checkpoint for ONNX Runtime, and its validation metrics re-measured.

    python -m training.ship.quantize --checkpoint models/fundus-resnet18.pt \\
        --data ../shared/data/fundus-train,../shared/data/fundus-idrid [--images 256]

1. Recomputes the checkpoint's own patient-disjoint split (as ``python -m training.evaluate`` does,
   :func:`training.evaluate.rows.resolve_rows`) and draws ``--images`` images of its TRAIN split
   (stratified by class, fixed seed): the activation ranges never see a validation or test patient.
2. Exports the checkpoint to ONNX, calibrates int8 QDQ quantisation on them (ONNX Runtime,
   MinMax, per-channel weights; ``retina.engine.quantize_int8``).
3. Scores the VAL split with torch (fp32) and with each int8 engine (``onnxruntime-int8`` and,
   when OpenVINO is installed, ``openvino-int8``, which runs the same file) and compares macro AUC,
   balanced accuracy, for DR grading referable-DR AUC, and the sensitivity and specificity at
   every served operating point (the referral levels the service would answer); the top-class
   and referral agreement too.
4. Writes ``models/<id>.int8.json``: the checkpoint's SHA-256 (the engine refuses a file made
   for another checkpoint), the ranges, torch's val metrics and each int8 engine's, with the
   library versions and the engine's probabilities on a fixed probe batch (re-checked at load, so
   other int8 kernels, on another CPU or library version, are not served on these figures). ``RETINA_ENGINE=auto``
   serves an int8 engine only when every compared metric is within ``--tolerance`` (0.005) for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from retina import checkpoint
from retina.engine import (
    OnnxRuntimeEngine,
    OpenVinoEngine,
    calibration_path,
    engine_versions,
    export_onnx,
    file_sha256,
    probe_probabilities,
    quantize_int8,
)
from retina.labels import DR_GRADES
from retina.referral import referral_for
from training.cli import setup_logging
from training.config import DataConfig
from training.data.loaders import TensorBatches
from training.data.pixels import prepare_all
from training.data.tables import DatasetError, read_tables
from training.evaluate.metrics import compute_metrics
from training.evaluate.predict import predict_probs, set_threads, to_model_input
from training.evaluate.rows import resolve_rows

logger = logging.getLogger("training.ship.quantize")


class _Reader:
    """ONNX Runtime ``CalibrationDataReader``: prepared ``uint8 (N, C, S, S)`` -> model inputs, batches of 16."""

    def __init__(self, images: torch.Tensor, spec: Any) -> None:
        self.batches = iter(images.split(16))
        self.spec = spec

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        return {"input": to_model_input(batch, self.spec, torch.device("cpu")).numpy()}


def stratified_pick(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """About ``n`` indices into ``labels``, every class in proportion (at least one each), sorted."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, round(n * len(members) / len(labels)))
        picks.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(picks))


def summary_metrics(probs: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """Point estimates compared between engines: macro AUC, balanced accuracy, referable-DR AUC."""
    m = compute_metrics(probs, labels, class_names, n_bootstrap=0)
    out = {"macro_auc": float(m["roc_auc"]["macro"]), "balanced_accuracy": float(m["balanced_accuracy"])}
    if "referable" in m:
        out["referable_auc"] = float(m["referable"]["roc_auc"])
    return out


_NO_OVERRIDES = SimpleNamespace(
    referral_oct_urgent=None, referral_oct_routine=None, referral_fundus_refer=None, referral_fundus_urgent=None
)
# Referral levels that count as "referred" at each operating point, and the classes that should be.
_REFERRED = {
    ("oct", "urgent"): ({"urgent"}, ("CNV", "DME")),
    ("oct", "routine"): ({"urgent", "routine"}, ("CNV", "DME", "DRUSEN")),
    ("fundus", "refer"): ({"urgent", "refer"}, DR_GRADES[2:]),
    ("fundus", "urgent"): ({"urgent"}, DR_GRADES[4:]),
}


def operating_point_metrics(probs: np.ndarray, labels: np.ndarray, meta: Any) -> dict[str, float]:
    """Sensitivity and specificity at each of the checkpoint's served operating points, and the referral levels.

    The levels come from ``retina.referral.referral_for``, the function the service answers with, at the
    checkpoint's own thresholds; ``{point}_sensitivity`` / ``{point}_specificity`` per point.
    """
    names = list(meta.class_names)
    levels = [referral_for(meta.task, names, p, _NO_OVERRIDES, meta) for p in probs]
    out: dict[str, float] = {}
    for (task, point), (referred, positive) in _REFERRED.items():
        if task != meta.task or not all(lv is not None for lv in levels):
            continue
        y = np.isin(np.asarray(names)[labels], positive)
        r = np.array([lv["level"] in referred for lv in levels])  # type: ignore[index]
        if y.any():
            out[f"{point}_sensitivity"] = float((r & y).sum() / y.sum())
        if (~y).any():
            out[f"{point}_specificity"] = float((~r & ~y).sum() / (~y).sum())
    return out


def referral_levels(probs: np.ndarray, meta: Any) -> list[str | None]:
    names = list(meta.class_names)
    return [(referral_for(meta.task, names, p, _NO_OVERRIDES, meta) or {}).get("level") for p in probs]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.ship.quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="the checkpoint's training data (its split is recomputed)")
    p.add_argument("--images", type=int, default=256, help="training-split images to calibrate on")
    p.add_argument("--out", default=None, help="default: <checkpoint stem>.int8.json beside it")
    p.add_argument(
        "--fp32-layers",
        choices=("none", "first", "last", "ends"),
        default="none",
        help="layers left unquantised (choose on the val agreement this prints, never on a test set)",
    )
    p.add_argument("--tolerance", type=float, default=0.005, help="largest accepted metric change")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="prepared-image cache (default: the training config's)")
    return p


def _saved_torch_scores(path: Path, sha: str, labels: np.ndarray) -> np.ndarray | None:
    """Torch's val probabilities ``(N, K)`` from an earlier run on this very checkpoint and split, else None.

    Torch's scores do not depend on the int8 choices, so a rerun (other ``--fp32-layers``) reuses them;
    another model on the same split has other scores, hence the checkpoint's SHA-256.
    """
    if not path.is_file():
        return None
    previous = np.load(path)
    same = "checkpoint_sha256" in previous and str(previous["checkpoint_sha256"]) == sha
    return previous["torch_fp32"] if same and np.array_equal(previous["labels"], labels) else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = set_threads(args.threads)
    ckpt = Path(args.checkpoint)
    model, meta = checkpoint.load(ckpt)
    d = DataConfig.from_saved((meta.config or {}).get("data"))
    full = read_tables(
        args.data, d.format or "auto", label_scheme=meta.label_scheme or d.label_scheme, patients=d.patients
    )
    table, train_idx, _, info = resolve_rows(meta, full, "train")
    if not info.get("fingerprint_matches_training"):
        raise DatasetError(f"{args.data} is not this checkpoint's training data: its train split cannot be recomputed")
    _, val_idx, _, _ = resolve_rows(meta, full, "val")
    spec = meta.preprocess
    cache = args.cache_dir if args.cache_dir is not None else d.cache_dir
    images = prepare_all(table, spec, cache_dir=Path(cache) if cache else None)
    calib = train_idx[stratified_pick(table.labels[train_idx], args.images)]
    logger.info("calibrating on %d train-split images; validating on %d val-split images", len(calib), len(val_idx))

    with tempfile.TemporaryDirectory(prefix="retina-quantize-") as tmp:
        fp32, q = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_onnx(model, meta, fp32)
        ranges = quantize_int8(fp32, q, None, _Reader(images[torch.as_tensor(calib)], spec), keep_fp32=args.fp32_layers)
        val_x, val_y = images[torch.as_tensor(val_idx)], table.labels[val_idx]
        cpu, t = torch.device("cpu"), meta.temperature
        out = Path(args.out) if args.out else calibration_path(ckpt)
        scores = out.with_suffix(".val-probs.npz")
        sha = file_sha256(ckpt)
        p_torch = _saved_torch_scores(scores, sha, val_y)
        if p_torch is None:
            p_torch, _ = predict_probs(model, TensorBatches(val_x, val_y, 32), cpu, spec, temperature=t, progress=True)
        probs, probes = {}, {}
        for name, engine in int8_engines(q, threads):
            probs[name], _ = predict_probs(
                engine, TensorBatches(val_x, val_y, 32), cpu, spec, temperature=t, progress=True
            )
            probes[name] = probe_probabilities(engine, meta).tolist()
    # The scores themselves, for anyone re-checking the comparison (not read by the service).
    np.savez_compressed(
        scores,
        checkpoint_sha256=np.asarray(sha),
        torch_fp32=p_torch,
        labels=val_y,
        **{k.replace("-", "_"): v for k, v in probs.items()},
    )

    names = tuple(meta.class_names)
    m_torch = {**summary_metrics(p_torch, val_y, names), **operating_point_metrics(p_torch, val_y, meta)}
    measured = {name: compare(p_torch, m_torch, p, val_y, meta, args.tolerance) for name, p in probs.items()}
    for name, m in measured.items():
        m["probe_probabilities"], m["software"] = probes[name], engine_versions()
    doc = {
        "checkpoint": ckpt.name,
        "checkpoint_sha256": file_sha256(ckpt),
        "engines": list(probs),
        "method": "static QDQ, MinMax activation ranges (uint8), per-channel int8 weights",
        "calibration_images": int(len(calib)),
        "fp32_layers": args.fp32_layers,
        "calibration_split": "train (the checkpoint's own patient-disjoint split, recomputed)",
        "data": str(args.data),
        "ranges": ranges,
        "validation": {
            "split": "val",
            "n": int(len(val_idx)),
            "torch_fp32": m_torch,
            "tolerance": args.tolerance,
            "engines": measured,
        },
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for name, m in measured.items():
        ok = m["within_tolerance"]
        verdict = "within" if ok else "OUTSIDE tolerance"
        (logger.info if ok else logger.error)("%s: %s (%s)", name, m["summary"], verdict)
    logger.info("-> %s", out)
    return doc


def int8_engines(q: Path, threads: int) -> list[tuple[str, Any]]:
    """``(name, engine)`` for every int8 engine that can run the QDQ file ``q`` here."""
    engines: list[tuple[str, Any]] = [("onnxruntime-int8", OnnxRuntimeEngine(q, threads, "onnxruntime-int8"))]
    try:
        engines.insert(0, ("openvino-int8", OpenVinoEngine(q, threads, "openvino-int8")))
    except ImportError:
        logger.warning("OpenVINO is not installed: openvino-int8 is not measured (nor served)")
    except Exception as e:  # noqa: BLE001 - a compile failure must not cost the ONNX Runtime measurement
        logger.error("OpenVINO could not compile the int8 file (%s): openvino-int8 is not measured (nor served)", e)
    return engines


def compare(
    p_torch: np.ndarray, m_torch: dict[str, float], p: np.ndarray, labels: np.ndarray, meta: Any, tolerance: float
) -> dict[str, Any]:
    """One int8 engine's val figures against torch fp32's: ``{int8, delta, agreements, within_tolerance, summary}``.

    ``p_torch`` / ``p``: probabilities ``(N, K)`` of the same val images.
    """
    m = {**summary_metrics(p, labels, tuple(meta.class_names)), **operating_point_metrics(p, labels, meta)}
    delta = {k: m[k] - m_torch[k] for k in m_torch}
    agree = float((p_torch.argmax(1) == p.argmax(1)).mean())
    levels = zip(referral_levels(p_torch, meta), referral_levels(p, meta), strict=True)
    same = float(np.mean([a == b for a, b in levels]))
    summary = (
        f"val split n={len(labels)}: "
        + ", ".join(f"{k} {m_torch[k]:.4f} -> {m[k]:.4f}" for k in m_torch)
        + f"; top class agrees on {agree:.1%}, referral level on {same:.1%}"
    )
    return {
        "int8": m,
        "delta": delta,
        "top_class_agreement": agree,
        "referral_agreement": same,
        "max_probability_difference": float(np.abs(p_torch - p).max()),
        "within_tolerance": all(abs(v) <= tolerance for v in delta.values()),
        "summary": summary,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        doc = run(args)
    except (DatasetError, checkpoint.CheckpointError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 2
    return 0 if any(m["within_tolerance"] for m in doc["validation"]["engines"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
