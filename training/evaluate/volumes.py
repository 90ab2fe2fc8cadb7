"""Volume-level vs single-B-scan accuracy of the OCT model on held-out patients; chooses the volume rule.

    python -m training.evaluate.volumes --cv-dir runs/oct-resnet18-cv \\
        --data ../shared/data/oct-dev,../shared/data/oct-train --out runs/volume

Which model scores which scan: the shipped ``oct-resnet18`` is the final fit on all 818 scans of
oct-dev + oct-train, so no patient of these sets is unseen by it. Its card's figures are 5-fold
patient-grouped CV; this script uses the same five fold models (``CV_DIR/fold_i/best.pt``): every
B-scan is scored by the fold model that never saw its patient. The folds are recomputed exactly as
``training.cv`` made them (same table, ``grouped_folds`` seed) and checked against the CV's
out-of-fold predictions (``CV_DIR/predictions.csv``).

Volumes: scans grouped by patient AND class (``training.data.volumes.patient_volumes``, at least
``--min-scans``), each written as a real multi-frame DICOM (Ophthalmic Tomography) and read back by
``retina.dicom.open_frames``; every frame goes through the shipped image gate and the served
preprocessing, as ``POST /predict/volume`` does. Patients are split in two, stratified by class:
on ``val`` the aggregation rule is chosen (highest volume balanced accuracy; ties -> the earlier rule
in ``retina.volume.RULES``), on ``test`` volume-level and B-scan-level balanced accuracy are reported
with 95% percentile-bootstrap intervals over patients (1000 resamples), and their paired difference.

Writes ``OUT/report.md``, ``OUT/metrics.json``, ``OUT/frames.csv`` and ``OUT/confusion_matrix.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from retina import checkpoint
from retina.assessment import grade
from retina.decode import load_image
from retina.dicom import open_frames
from retina.gate import GATE_FILE, ImageGate
from retina.paths import DEFAULT_MODELS_DIR
from retina.preprocessing import eval_transform
from retina.referral import operating_points
from retina.volume import RULES, aggregate, frame_status, needed_gradable
from training import config as config_mod
from training.cli import setup_logging
from training.data.bundle import read_config_table, select_rows
from training.data.splits import grouped_folds
from training.data.volumes import common_frames, patient_volumes, volume_dicom
from training.evaluate.metrics import bootstrap_ci, quiet_sklearn, to_plain

logger = logging.getLogger("training.evaluate.volumes")

URGENT = ("CNV", "DME")


@dataclass(frozen=True)
class FixedThresholds:
    """The shipped model's operating points, applied to the fold models' probabilities too."""

    referral_oct_urgent: float | None
    referral_oct_routine: float | None
    referral_fundus_refer: float | None = None
    referral_fundus_urgent: float | None = None


@dataclass
class VolumeScores:
    """One volume: patient, true class index, per-frame status, graded frames' probabilities ``(n, C)``."""

    patient: str
    label: int
    n_frames: int
    statuses: list[str]
    graded: list[int]
    probs: np.ndarray


def fold_of_patient(cv_dir: Path) -> tuple[dict[str, int], int]:
    """Patient id -> the CV fold that held it out, recomputed as ``training.cv`` did; and the fold count."""
    cfg = config_mod.resolve(cv_dir / "fold_0" / "config.yaml")
    table = select_rows(cfg.data, read_config_table(cfg))
    folds = len(sorted(cv_dir.glob("fold_*/best.pt")))
    out: dict[str, int] = {}
    for i, (_, held) in enumerate(grouped_folds(table, folds, seed=cfg.data.seed)):
        for g in set(table.groups[held]):
            out[str(g)] = i
    return out, folds


def read_rows(roots: list[Path]) -> list[tuple[Path, str, str]]:
    """``(absolute path, label, patient_id)`` of every scan in the ``labels.csv`` of each root."""
    rows = []
    for root in roots:
        with (root / "labels.csv").open() as f:
            for r in csv.DictReader(f):
                rows.append((root / r["path"], r["label"], str(r["patient_id"])))
    return rows


def check_folds(cv_dir: Path, models: list[Any], fold: dict[str, int], rows: list[tuple[Path, str, str]]) -> float:
    """Largest |p - p_oof| of 20 scans scored here vs the CV's out-of-fold predictions (should be ~1e-5)."""
    oof = {}
    with (cv_dir / "predictions.csv").open() as f:
        for r in csv.DictReader(f):
            oof[Path(r["path"]).resolve()] = np.array([float(v) for k, v in r.items() if k.startswith("p_")])
    worst = 0.0
    for path, _, patient in rows[:: max(1, len(rows) // 20)][:20]:
        model, meta = models[fold[patient]]
        x = eval_transform(meta.preprocess)(load_image(str(path))).unsqueeze(0)
        with torch.inference_mode():
            p = torch.softmax(model(x)[0].double() / meta.temperature, 0).numpy()
        worst = max(worst, float(np.abs(p - oof[path.resolve()]).max()))
    return worst


def score_volumes(
    vols: list[Any], models: list[Any], fold: dict[str, int], gate: ImageGate, class_names: list[str]
) -> tuple[list[VolumeScores], list[dict[str, Any]]]:
    """Every volume as a multi-frame DICOM through decode -> gate -> the held-out fold model."""
    out, frame_rows = [], []
    for v in tqdm(vols, desc="volumes", unit="vol"):
        model, meta = models[fold[v.patient]]
        frames = common_frames([load_image(str(p)) for p in v.paths])
        dicom = open_frames(volume_dicom(frames, "opt"))
        statuses, graded, xs = [], [], []
        transform = eval_transform(meta.preprocess)
        for i, img in enumerate(dicom):
            status = frame_status(gate.assess(img), "oct")
            statuses.append(status)
            if status == "graded":
                graded.append(i)
                xs.append(transform(img))
        probs = np.zeros((0, len(class_names)))
        if xs:
            with torch.inference_mode():
                probs = torch.softmax(model(torch.stack(xs)).double() / meta.temperature, 1).numpy()
        out.append(VolumeScores(v.patient, class_names.index(v.label), len(frames), statuses, graded, probs))
        for j, i in enumerate(graded):
            frame_rows.append(
                {"patient": v.patient, "label": v.label, "frame": i, "file": v.paths[i].name}
                | {f"p_{c}": float(probs[j, k]) for k, c in enumerate(class_names)}
            )
    return out, frame_rows


def split_patients(vols: list[VolumeScores], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Volume indices ``(val, test)``: two halves, no patient in both, classes stratified."""
    y = np.array([v.label for v in vols])
    g = np.array([v.patient for v in vols])
    val, test = next(StratifiedGroupKFold(2, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, g))
    return np.sort(val), np.sort(test)


def labels_of(
    vols: list[VolumeScores],
    idx: np.ndarray,
    rule: str,
    meta: Any,
    thresholds: FixedThresholds,
    need: tuple[int, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Volume level over volumes ``idx``: (true, predicted served label (-1 = ungradable), urgent referral 0/1)."""
    y, pred, urgent = [], [], []
    for i in idx:
        v = vols[i]
        y.append(v.label)
        if len(v.graded) < needed_gradable(v.n_frames, *need):
            pred.append(-1)
            urgent.append(-1)
            continue
        a = grade("m", meta, aggregate(v.probs, rule), 0.0, thresholds)
        pred.append(a.label_index)
        urgent.append(int((a.referral or {}).get("level") == "urgent"))
    return np.array(y), np.array(pred), np.array(urgent)


def frame_labels(
    vols: list[VolumeScores], idx: np.ndarray, meta: Any, thresholds: FixedThresholds
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """B-scan level over the graded frames of volumes ``idx``: (true, predicted, urgent, patient)."""
    y, pred, urgent, pat = [], [], [], []
    for i in idx:
        v = vols[i]
        for p in v.probs:
            a = grade("m", meta, p, 0.0, thresholds)
            y.append(v.label)
            pred.append(a.label_index)
            urgent.append(int((a.referral or {}).get("level") == "urgent"))
            pat.append(v.patient)
    return np.array(y), np.array(pred), np.array(urgent), np.array(pat)


def _bal(y: np.ndarray, p: np.ndarray) -> float:
    with quiet_sklearn():
        return float(balanced_accuracy_score(y, p))


def sens_spec(y_urgent: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    pos, neg = y_urgent == 1, y_urgent == 0
    return float((pred[pos] == 1).mean()) if pos.any() else float("nan"), float((pred[neg] == 0).mean())


def plot_confusions(cms: dict[str, np.ndarray], class_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cms), figsize=(5.2 * len(cms), 4.6))
    for ax, (title, cm) in zip(np.atleast_1d(axes), cms.items(), strict=True):
        rows = cm.sum(1, keepdims=True)
        ax.imshow(cm / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
        for (r, c), n in np.ndenumerate(cm):
            ax.text(c, r, str(n), ha="center", va="center", color="white" if n > 0.6 * rows[r, 0] else "black")
        ax.set_xticks(range(len(class_names)), class_names)
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cv-dir", type=Path, required=True, help="training.cv output with fold_*/best.pt")
    ap.add_argument("--data", default="../shared/data/oct-dev,../shared/data/oct-train")
    ap.add_argument("--out", type=Path, default=Path("runs/volume"))
    ap.add_argument("--min-scans", type=int, default=2, help="fewest B-scans of one patient and class per volume")
    ap.add_argument("--min-frames", type=int, default=1, help="as RETINA_VOLUME_MIN_GRADABLE_FRAMES")
    ap.add_argument("--min-fraction", type=float, default=0.5, help="as RETINA_VOLUME_MIN_GRADABLE_FRACTION")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    return ap


def _fold_models(args: argparse.Namespace) -> tuple[Any, ...]:
    """The CV fold models (checked to reproduce the CV's out-of-fold probabilities), the shipped model's
    metadata and operating points, the gate and the scans: ``(fold, models, class_names, meta, thresholds,
    gate, rows, drift)``."""
    fold, n_folds = fold_of_patient(args.cv_dir)
    models = [checkpoint.load(args.cv_dir / f"fold_{i}" / "best.pt") for i in range(n_folds)]
    class_names = list(models[0][1].class_names)
    shipped_model, shipped = checkpoint.load(DEFAULT_MODELS_DIR / "oct-resnet18.pt")
    del shipped_model
    ops = operating_points(shipped)
    thresholds = FixedThresholds(ops["urgent"]["threshold"], ops["routine"]["threshold"])
    gate = ImageGate.load(DEFAULT_MODELS_DIR / GATE_FILE)
    rows = read_rows([Path(p) for p in args.data.split(",")])
    missing = {p for _, _, p in rows} - set(fold)
    if missing:
        raise SystemExit(f"{len(missing)} patients are in no CV fold: the data differ from the CV's")
    drift = check_folds(args.cv_dir, models, fold, rows)
    logger.info("fold models reproduce the CV out-of-fold probabilities to %.2g", drift)
    if drift > 1e-3:
        raise SystemExit(f"fold mapping does not reproduce the CV predictions (max |dp| {drift:.3g})")
    # grade() reads task, class names and informativeness from the shipped metadata; thresholds are explicit
    return fold, models, class_names, shipped, thresholds, gate, rows, drift


def _test_figures(
    vols: list[Any], test: np.ndarray, chosen: str, meta: Any, thresholds: Any, need: tuple[int, float], args: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Volume level (``chosen`` rule) vs B-scan level on the test patients, bootstrap over patients.

    Returns the ``test`` block of the metrics and the labels / predictions for the confusion matrices.
    """
    class_names = list(meta.class_names)
    yv, pv, uv = labels_of(vols, test, chosen, meta, thresholds, need)
    n_ungradable = int((pv < 0).sum())
    keep = pv >= 0
    yv, pv, uv = yv[keep], pv[keep], uv[keep]
    pat_v = np.array([vols[i].patient for i in test])[keep]
    yf, pf, uf, pat_f = frame_labels(vols, test, meta, thresholds)
    patients = np.array(sorted(set(pat_v) | set(pat_f)))
    rows_v = {p: np.flatnonzero(pat_v == p) for p in patients}
    rows_f = {p: np.flatnonzero(pat_f == p) for p in patients}

    def both(pidx: np.ndarray) -> tuple[float, float, float]:
        chosen_p = patients[pidx]
        iv = np.concatenate([rows_v[p] for p in chosen_p])
        jf = np.concatenate([rows_f[p] for p in chosen_p])
        a, b = _bal(yv[iv], pv[iv]), _bal(yf[jf], pf[jf])
        return a, b, a - b

    ci_v, ci_f, ci_d = bootstrap_ci(both, len(patients), n_boot=args.n_boot, seed=args.seed)
    urg_true_v = np.isin(yv, [class_names.index(c) for c in URGENT]).astype(int)
    urg_true_f = np.isin(yf, [class_names.index(c) for c in URGENT]).astype(int)
    block = {
        "volumes": int(len(yv)),
        "volumes_ungradable": n_ungradable,
        "bscans": int(len(yf)),
        "patients": int(len(patients)),
        "volume_balanced_accuracy": _bal(yv, pv),
        "volume_balanced_accuracy_ci95": ci_v,
        "bscan_balanced_accuracy": _bal(yf, pf),
        "bscan_balanced_accuracy_ci95": ci_f,
        "difference_ci95": ci_d,
        "volume_urgent_sensitivity_specificity": list(sens_spec(urg_true_v, uv)),
        "bscan_urgent_sensitivity_specificity": list(sens_spec(urg_true_f, uf)),
    }
    return block, {"yv": yv, "pv": pv, "yf": yf, "pf": pf}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    torch.set_num_threads(2)
    fold, models, class_names, meta, thresholds, gate, rows, drift = _fold_models(args)

    vols_meta = patient_volumes(rows, args.min_scans)
    vols, frame_rows = score_volumes(vols_meta, models, fold, gate, class_names)
    val, test = split_patients(vols, args.seed)
    need = (args.min_frames, args.min_fraction)

    def vol_bal(idx: np.ndarray, rule: str) -> float:
        y, p, _ = labels_of(vols, idx, rule, meta, thresholds, need)
        keep = p >= 0
        return _bal(y[keep], p[keep])

    val_scores = {rule: vol_bal(val, rule) for rule in RULES}
    chosen = max(RULES, key=lambda r: (round(val_scores[r], 6), -list(RULES).index(r)))
    logger.info("validation volume balanced accuracy: %s -> %s", val_scores, chosen)
    test_block, lab = _test_figures(vols, test, chosen, meta, thresholds, need, args)
    test_rules = {rule: vol_bal(test, rule) for rule in RULES}

    args.out.mkdir(parents=True, exist_ok=True)
    k = range(len(class_names))
    cms = {
        f"volume level ({chosen}), {len(lab['yv'])} volumes": confusion_matrix(lab["yv"], lab["pv"], labels=k),
        f"single B-scan, {len(lab['yf'])} B-scans": confusion_matrix(lab["yf"], lab["pf"], labels=k),
    }
    plot_confusions(cms, class_names, args.out / "confusion_matrix.png")
    with (args.out / "frames.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(frame_rows[0]))
        w.writeheader()
        w.writerows(frame_rows)
    n_frames = [v.n_frames for v in vols]
    statuses = [s for v in vols for s in v.statuses]
    metrics = {
        "chosen_rule": chosen,
        "val_volume_balanced_accuracy": val_scores,
        "test_volume_balanced_accuracy_by_rule": test_rules,
        "test": test_block,
        "volumes": len(vols),
        "val_volumes": int(len(val)),
        "test_volumes": int(len(test)),
        "frames_per_volume": {"min": min(n_frames), "median": float(np.median(n_frames)), "max": max(n_frames)},
        "frame_status": {s: statuses.count(s) for s in ("graded", "ungradable", "not_oct")},
        "fold_check_max_abs_diff": drift,
        "thresholds": {"urgent": thresholds.referral_oct_urgent, "routine": thresholds.referral_oct_routine},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "metrics.json").write_text(json.dumps(to_plain(metrics), indent=2))
    (args.out / "report.md").write_text(_report(metrics, class_names, cms))
    t = test_block
    logger.info(
        "volume %.3f %s vs B-scan %.3f %s (test)",
        t["volume_balanced_accuracy"],
        t["volume_balanced_accuracy_ci95"],
        t["bscan_balanced_accuracy"],
        t["bscan_balanced_accuracy_ci95"],
    )
    return 0


def _cli(args: dict[str, str]) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in args.items())


def _fmt_ci(ci: list[float | None]) -> str:
    return "n/a" if ci[0] is None or ci[1] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _report(m: dict[str, Any], class_names: list[str], cms: dict[str, np.ndarray]) -> str:
    t = m["test"]
    lines = [
        "# OCT volumes: volume-level vs single-B-scan accuracy on held-out patients",
        "",
        f"Made by `python -m training.evaluate.volumes {_cli(m['args'])}`.",
        "",
        "- Model: the 5 CV fold models of `oct-resnet18` (runs/oct-resnet18-cv/fold_*/best.pt); each B-scan is "
        "scored by the fold model that never saw its patient (the shipped final model was trained on all 818 "
        f"scans, so it has no held-out patients). Fold mapping reproduces the CV's out-of-fold probabilities to "
        f"{m['fold_check_max_abs_diff']:.1g}.",
        f"- Volumes: {m['volumes']} (one per patient and class with >= {m['args']['min_scans']} B-scans; "
        f"{m['frames_per_volume']['min']}-{m['frames_per_volume']['max']} B-scans, median "
        f"{m['frames_per_volume']['median']:g}), each written as a multi-frame Ophthalmic Tomography DICOM and "
        "read back through `retina.dicom.open_frames`, the shipped image gate and the served preprocessing. "
        f"Frames: {m['frame_status']}.",
        f"- Split: patients in two halves (stratified by class): validation {m['val_volumes']} volumes "
        f"(chooses the rule), test {m['test_volumes']} volumes.",
        f"- Labels are the service's (`retina.assessment.grade`: referral at the shipped operating points urgent "
        f"{m['thresholds']['urgent']:.4f}, routine {m['thresholds']['routine']:.4f}, then the consistent label).",
        "",
        "## Aggregation rule (validation part)",
        "",
        "| rule | validation volume balanced accuracy | test (for reference only) |",
        "|---|---|---|",
        *[
            f"| {r}{' **(chosen)**' if r == m['chosen_rule'] else ''} | {v:.3f} | "
            f"{m['test_volume_balanced_accuracy_by_rule'][r]:.3f} |"
            for r, v in m["val_volume_balanced_accuracy"].items()
        ],
        "",
        "## Held-out test patients",
        "",
        "| level | n | balanced accuracy | 95% CI (bootstrap over patients) | urgent referral sens / spec |",
        "|---|---|---|---|---|",
        f"| volume ({m['chosen_rule']}) | {t['volumes']} volumes | {t['volume_balanced_accuracy']:.3f} | "
        f"{_fmt_ci(t['volume_balanced_accuracy_ci95'])} | {t['volume_urgent_sensitivity_specificity'][0]:.3f} / "
        f"{t['volume_urgent_sensitivity_specificity'][1]:.3f} |",
        f"| single B-scan | {t['bscans']} B-scans | {t['bscan_balanced_accuracy']:.3f} | "
        f"{_fmt_ci(t['bscan_balanced_accuracy_ci95'])} | {t['bscan_urgent_sensitivity_specificity'][0]:.3f} / "
        f"{t['bscan_urgent_sensitivity_specificity'][1]:.3f} |",
        "",
        f"Paired difference (volume - B-scan), 95% CI: {_fmt_ci(t['difference_ci95'])}; "
        f"{t['patients']} test patients; {t['volumes_ungradable']} test volumes ungradable (excluded).",
        "",
        "![confusion matrices](confusion_matrix.png)",
        "",
        "## Limits",
        "",
        "- Kermany volumes are 2-13 B-scans chosen by the dataset's curators, not the 25-128 consecutive B-scans of "
        "a clinical macular cube: most of a real volume is normal-looking periphery, which a mean dilutes and a "
        "max/noisy-OR over-reads; re-check the rule on real volumes before relying on it.",
        "- Frames of one volume with different widths were resized to the volume's most common size.",
        "- Fold models are the same recipe as the shipped model, not the shipped file itself.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
