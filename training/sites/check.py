"""Does a site profile hold? Fit one on some of a dataset's patients and measure it on the others.

    python -m training.sites.check --checkpoint models/fundus-resnet18.pt \\
        --data ../shared/data/fundus-odir --n-fit 150 --seed 0 [--heldout] [--rows ids.txt] \\
        [--cache-dir runs/site-check] [--json OUT.json]

The dataset's photos (EyePACS layout) are split by patient: whole patients, in a seeded random
order, go to the fitting part until it holds ``--n-fit`` photos; the rest is the test part. A
profile is fitted on the first exactly as ``python -m training.site_profile`` fits one, then both
the model's default point (its temperature and operating points, as served without a profile)
and the site's are measured on the test part: sensitivity and specificity of the refer decision
(grade >= 2) and of the urgent one (grade 4), with patient-resampled 95 % intervals.

Only photos the model never trained on are honest: ``--heldout`` keeps the rows of this dataset
that fall in the checkpoint's own validation and test splits (recomputed from its saved data
settings, as ``training.evaluate`` does) when the checkpoint was trained on it, and all rows
otherwise; ``--rows`` keeps the image ids listed in a file (one per line). The logits are cached
under ``--cache-dir`` (keyed by the data and the weights), so a rerun costs seconds.

The issue's bar: sensitivity >= 0.85 and specificity >= 0.70 at the site point on the test part.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from retina.referral import ReferralThresholds, threshold_for
from training.cli import setup_logging
from training.config import DataConfig
from training.data.bundle import select_rows
from training.data.splits import split_indices
from training.data.tables import ImageTable, read_tables
from training.evaluate.calibration import softmax
from training.sites.profile import (
    DEFAULT_CHECKPOINT,
    DEFAULT_TARGET,
    ProfileRefused,
    ScoredSet,
    ServedCheckpoint,
    fit_profile,
    load_checkpoint,
    rates,
    read_site,
    score_table,
)

logger = logging.getLogger("training.sites.check")

BAR = {"sensitivity": 0.85, "specificity": 0.70}


def heldout_paths(ck: ServedCheckpoint, data: Path) -> set[str] | None:
    """Paths of ``data``'s photos in the checkpoint's val + test splits; None when it never trained on ``data``."""
    d = DataConfig.from_saved((ck.meta.config or {}).get("data"))
    sources = [p for p in str(d.path or "").split(",") if p.strip()]
    matches = [k for k, p in enumerate(sources) if Path(p).resolve() == data.resolve()]
    if not matches:
        return None
    full = read_tables(d.path, d.format or "auto", label_scheme=d.label_scheme, task="fundus", patients=d.patients)
    if ck.meta.data.get("fingerprint") and full.fingerprint() != ck.meta.data["fingerprint"]:
        raise ValueError(f"the training data {d.path} changed since the checkpoint: its split cannot be recomputed")
    table = select_rows(d, full)
    parts = split_indices(table, val_frac=d.val_frac, test_frac=d.test_frac, seed=d.seed)
    idx = np.concatenate([parts["val"], parts["test"]])
    if table.parts is not None:
        idx = idx[table.parts[idx] == matches[0]]
    return {str(Path(table.paths[i]).resolve()) for i in idx}


def keep_rows(table: ImageTable, keep: set[str] | None, ids: set[str] | None) -> np.ndarray:
    """Row indices of ``table`` whose resolved path is in ``keep`` and whose image id (stem) is in ``ids``."""
    rows = np.arange(len(table))
    if keep is not None:
        rows = np.asarray([i for i in rows if str(Path(table.paths[i]).resolve()) in keep], dtype=np.int64)
    if ids is not None:
        rows = np.asarray([i for i in rows if Path(table.paths[i]).stem in ids], dtype=np.int64)
    return rows


def patient_split(groups: np.ndarray, n_fit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, test)`` row indices: whole patients in a seeded random order until ``fit`` holds ``n_fit`` photos."""
    patients = np.unique(groups)
    np.random.default_rng(seed).shuffle(patients)
    fit_patients: set[str] = set()
    count = 0
    for p in patients:
        if count >= n_fit:
            break
        fit_patients.add(str(p))
        count += int((groups == p).sum())
    in_fit = np.asarray([str(g) in fit_patients for g in groups])
    return np.flatnonzero(in_fit), np.flatnonzero(~in_fit)


def measure(test: ScoredSet, temperature: float, t_refer: float, t_urgent: float, n_boot: int) -> dict[str, Any]:
    """Refer and urgent decisions of ``retina.referral`` at these points on ``test``, with intervals."""
    probs = softmax(test.logits, temperature)
    p_ref, p4 = probs[:, 2:].sum(axis=1), probs[:, 4]
    # Urgent needs both points (retina.referral): its score is p4 where p_ref passes, else 0.
    urgent_score = np.where(p_ref >= t_refer, p4, 0.0)
    return {
        "temperature": temperature,
        "refer_threshold": t_refer,
        "urgent_threshold": t_urgent,
        "refer": rates(p_ref, test.labels >= 2, t_refer, test.groups, n_boot).model_dump(),
        "urgent": rates(urgent_score, test.labels == 4, t_urgent, test.groups, n_boot).model_dump()
        if (test.labels == 4).any()
        else None,
    }


def _cell(r: dict[str, Any] | None, key: str) -> str:
    if r is None:
        return "-"
    lo, hi = r[f"{key}_ci95"]
    return f"{r[key]:.3f} [{lo:.2f}, {hi:.2f}]"


def render(result: dict[str, Any]) -> str:
    """The markdown table of the check."""
    lines = [
        f"data {result['data']}: {result['n_rows']} photos used ({result['rows']}), fit {result['n_fit']} photos "
        f"/ {result['n_fit_patients']} patients, test {result['n_test']} photos / {result['n_test_patients']} "
        f"patients ({result['n_test_referable']} referable, {result['n_test_proliferative']} grade 4)",
        "",
        "| point | T | refer t | refer sens [95% CI] | refer spec [95% CI] | urgent t | urgent sens | urgent spec |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("default", "site"):
        m = result.get(name)
        if m is None:
            lines.append(f"| {name} | refused: {result.get('refused', '')} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {m['temperature']:.3f} | {m['refer_threshold']:.4f} | {_cell(m['refer'], 'sensitivity')} | "
            f"{_cell(m['refer'], 'specificity')} | {m['urgent_threshold']:.4f} | "
            f"{_cell(m['urgent'], 'sensitivity')} | {_cell(m['urgent'], 'specificity')} |"
        )
    if result.get("site"):
        r = result["site"]["refer"]
        ok = r["sensitivity"] >= BAR["sensitivity"] and r["specificity"] >= BAR["specificity"]
        lines += [
            "",
            f"site point meets sensitivity >= {BAR['sensitivity']} and specificity >= "
            f"{BAR['specificity']} on the test part: {'yes' if ok else 'no'}",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    ck = load_checkpoint(args.checkpoint, args.device)
    table = read_site(args.data)
    scored_all = score_table(ck, table, batch_size=args.batch_size, cache_dir=args.cache_dir)
    keep = heldout_paths(ck, args.data) if args.heldout else None
    ids = {line.strip() for line in args.rows.read_text().splitlines() if line.strip()} if args.rows else None
    rows = keep_rows(table, keep, ids)
    scored = scored_all.subset(rows)
    fit_idx, test_idx = patient_split(scored.groups, args.n_fit, args.seed)
    fit, test = scored.subset(fit_idx), scored.subset(test_idx)
    what = (
        "all rows"
        if keep is None and ids is None
        else ("the checkpoint's validation + test rows" if keep is not None else f"ids in {args.rows}")
    )
    result: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "model_version": ck.meta.version,
        "data": str(args.data),
        "rows": what + (" (the checkpoint never trained on this dataset)" if args.heldout and keep is None else ""),
        "n_rows": len(rows),
        "seed": args.seed,
        "n_fit": len(fit_idx),
        "n_fit_patients": len(np.unique(fit.groups)),
        "n_test": len(test_idx),
        "n_test_patients": len(np.unique(test.groups)),
        "n_test_referable": int((test.labels >= 2).sum()),
        "n_test_proliferative": int((test.labels == 4).sum()),
    }
    served = ReferralThresholds()  # no RETINA_REFERRAL_* override: the checkpoint's own points
    result["default"] = measure(
        test,
        ck.meta.temperature,
        threshold_for("referral_fundus_refer", served, ck.meta),
        threshold_for("referral_fundus_urgent", served, ck.meta),
        args.n_bootstrap,
    )
    try:
        profile = fit_profile(ck, fit, name="check", target=args.target_sensitivity, n_boot=args.n_bootstrap)
    except ProfileRefused as e:
        result["site"], result["refused"] = None, str(e)
    else:
        result["profile"] = profile.model_dump(mode="json")
        result["site"] = measure(
            test, profile.temperature, profile.refer.threshold, profile.urgent.threshold, args.n_bootstrap
        )
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.sites.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--data", type=Path, required=True, help="dataset in EyePACS layout")
    p.add_argument("--n-fit", type=int, default=150, help="photos (whole patients) to fit the profile on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", action="store_true", help="only the checkpoint's val + test rows of this dataset")
    p.add_argument("--rows", type=Path, default=None, help="file of image ids (one per line) to keep")
    p.add_argument("--target-sensitivity", type=float, default=DEFAULT_TARGET)
    p.add_argument("--cache-dir", type=Path, default=Path("runs/site-check"), help="scored logits cache")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-bootstrap", type=int, default=1000)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(render(result) + "\n")  # the table is this command's output, not a log line
    return 0 if result.get("site") else 2


if __name__ == "__main__":
    sys.exit(main())
