"""Package a trained checkpoint as a shipped model with its model card.

    python -m training.ship.card --checkpoint runs/fundus-resnet18/best.pt --key fundus-resnet18 \\
        --eval "test=Held-out test split (patient-disjoint)=runs/fundus-resnet18/eval_test" \\
        --eval "external=fundus-dev: 79 raw camera photos, 46 other patients=runs/fundus-resnet18/eval_dev" \\
        --command "python -m training.train ..." --out-dir models

Writes ``OUT/<key>.pt`` (the same weights, with the card in the checkpoint's ``card``
metadata and ``version`` set, so ``/models`` serves the same facts), ``OUT/<key>.md`` (the
card) and ``OUT/cards/<key>/*.png`` (confusion matrices and ROC curves of each evaluation).
Every number in the card is read from the ``metrics.json`` files that ``python -m training.evaluate``
or ``python -m training.cv`` wrote; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from retina import checkpoint
from retina.figures import figure_text
from retina.formatting import fmt_ci, fmt_number
from retina.models import build_model, count_parameters
from training.cli import setup_logging

logger = logging.getLogger("training.ship.card")

INTENDED_USE = (
    "Research and education: exploring model behaviour on retinal images, benchmarking, and as a starting point "
    "for models trained on larger data. Not a medical device, not validated for clinical use; its outputs are not "
    "a diagnosis and must not drive patient care."
)


def _ci(m: dict[str, Any], key: str) -> str:
    """``0.921 [0.900, 0.940]``: the one figure format (retina.figures), shared with /models, the UI and the PDF."""
    return figure_text(m.get(key), m.get(f"{key}_ci95"))


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of one evaluation stored in the checkpoint's ``card["evaluations"]``: the figures that
    /models, the UI and the PDF show (read through ``retina.figures.model_figures``)."""
    out = {
        "n": m.get("n"),
        "n_patients": m.get("n_patients"),
        "accuracy": m.get("accuracy"),
        "accuracy_ci95": m.get("accuracy_ci95"),
        "balanced_accuracy": m.get("balanced_accuracy"),
        "balanced_accuracy_ci95": m.get("balanced_accuracy_ci95"),
        "macro_f1": m.get("macro_f1"),
        "ece": m.get("ece"),
    }
    ref = m.get("referable")
    if ref:
        out["referable_roc_auc"] = ref.get("roc_auc")
        out["referable_roc_auc_ci95"] = ref.get("roc_auc_ci95")
        out["referable_sensitivity_at_90_specificity"] = ref.get("sensitivity_at_90_specificity")
    if m.get("any_dr"):
        out["any_dr_roc_auc"] = m["any_dr"].get("roc_auc")
    return out


def _metrics_section(title: str, m: dict[str, Any], images: list[str]) -> list[str]:
    lines = [f"### {title}", ""]
    lines += [
        f"- images {m.get('n')}, patients {m.get('n_patients')}; bootstrap 95% intervals over patients "
        f"({m.get('bootstrap', {}).get('resamples', 'n/a')} resamples)",
        f"- accuracy {_ci(m, 'accuracy')}",
        f"- balanced accuracy {_ci(m, 'balanced_accuracy')}",
        f"- macro F1 {_ci(m, 'macro_f1')}, weighted F1 {fmt_number(m.get('weighted_f1'))}",
        f"- expected calibration error (15 bins) {fmt_number(m.get('ece'))}",
    ]
    ref = m.get("referable")
    if ref:
        lines.append(
            f"- **referable DR (grade >= 2) ROC AUC {_ci(ref, 'roc_auc')}**; sensitivity at 90% "
            f"specificity {fmt_number(ref.get('sensitivity_at_90_specificity'))} "
            f"({ref.get('n_positive')} referable / {ref.get('n_negative')} not)"
        )
    if m.get("any_dr"):
        lines.append(f"- any DR (grade >= 1) ROC AUC {fmt_number(m['any_dr'].get('roc_auc'))}")
    per = m.get("per_class") or {}
    if per:
        lines += ["", "| class | support | sensitivity | specificity | precision | F1 |", "|---|---|---|---|---|---|"]
        for c, v in per.items():
            lines.append(
                f"| {c} | {v.get('support')} | {fmt_number(v.get('sensitivity'))} | "
                f"{fmt_number(v.get('specificity'))} | "
                f"{fmt_number(v.get('precision'))} | {fmt_number(v.get('f1'))} |"
            )
    lines.append("")
    lines += [f"![{Path(i).stem}]({i})" for i in images]
    raw = (m.get("subsets") or {}).get("raw")
    if raw:
        lines += ["", *_metrics_section(f"{title}: raw camera photos only", raw, [])]
    return lines + [""]


def _calibration_line(cal: dict[str, Any]) -> str:
    """One line on the softmax temperature and the ECE before/after it."""
    if cal.get("method", "none") == "none":
        return "- no temperature was fitted (T = 1): see limits"
    where = cal.get("fitted_on", "val")
    where = "the validation split" if where == "val" else where
    line = (
        f"- softmax temperature {fmt_number(cal.get('temperature', 1.0))} (temperature scaling), fitted on {where} "
        f"(n = {cal.get('n')}); ECE {fmt_number(cal.get('ece_val_before'))} -> {fmt_number(cal.get('ece_val_after'))}, "
        f"NLL {fmt_number(cal.get('nll_before'))} -> {fmt_number(cal.get('nll_after'))}"
    )
    if "ece_crossfit_after" in cal:
        line += (
            f"; cross-fitted (each patient scaled by a T fitted without them): ECE "
            f"{fmt_number(cal.get('ece_val_before'))} -> {fmt_number(cal['ece_crossfit_after'])}"
        )
    return line


def _operating_points_section(points: dict[str, Any]) -> list[str]:
    """The served referral thresholds with their sensitivity / specificity where fitted and on check sets."""
    if not points:
        return []
    lines = ["## Referral operating points (served thresholds)", ""]
    lines += ["| point | threshold | fitted on | set | sensitivity (95% CI) | specificity (95% CI) | n (positives) |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for name, p in points.items():
        rows = [("fit", p.get("fit") or {})] + list((p.get("checks") or {}).items())
        for set_name, r in rows:
            sens = fmt_ci(r.get("sensitivity"), r.get("sensitivity_ci95"), style="dash")
            spec = fmt_ci(r.get("specificity"), r.get("specificity_ci95"), style="dash")
            lines.append(
                f"| {name}: {p.get('score')} >= t | {p['threshold']:.4f} | {p.get('fitted_on')} | {set_name} | "
                f"{sens} | {spec} | {r.get('n')} ({r.get('n_positive')}) |"
            )
    lines += [
        "",
        "Thresholds were chosen on the fitting set only (target sensitivity "
        + ", ".join(f"{k} {v.get('target_sensitivity')}" for k, v in points.items())
        + "); `RETINA_REFERRAL_*` settings override them.",
        "",
    ]
    return lines


def build_card(
    key: str,
    ckpt: dict[str, Any],
    evals: list[tuple[str, str, dict[str, Any], list[str]]],
    commands: list[str],
    limits: list[str],
    size_mb: float,
    n_params: int,
) -> tuple[str, dict[str, Any]]:
    """Markdown card and its plain-typed summary for the checkpoint's ``card`` field."""
    data = ckpt.get("data", {})
    spec = ckpt["preprocess"]
    cal = ckpt.get("calibration", {})
    splits = data.get("splits") or data.get("split") or {}
    lines = [
        f"# Model card: `{key}` v{ckpt.get('version')}",
        "",
        f"> {INTENDED_USE}",
        "",
        "## Model",
        f"- task `{ckpt['task']}`, architecture `{ckpt['arch']}` ({n_params / 1e6:.2f} M parameters, trained from "
        "scratch: no ImageNet weights were available), file "
        f"{size_mb:.1f} MB ({ckpt.get('dtype', 'float32')} storage; every figure below was measured on this very "
        "file in float32; the service may serve an int8 engine only where its val figures, re-measured in "
        "models/<id>.int8.json, held within 0.005: /models names the engine)",
        f"- input {spec['size']}x{spec['size']} px, {spec['channels']} channel(s); preprocessing `{spec['square']}`"
        + (", Graham local-contrast normalisation, circle mask" if spec.get("local_contrast") else "")
        + " (the exact spec is stored in the checkpoint and used by training and serving alike)",
        f"- outputs: {', '.join(ckpt['class_names'])}"
        + (
            "; the service also derives P(referable DR) = P(grade >= 2) and P(any DR) = P(grade >= 1)"
            if ckpt["task"] == "fundus"
            else ""
        ),
        f"- created {ckpt.get('created')}, software {ckpt.get('software')}",
        "",
        "## Training data",
        # The dataset's folder name, not the training machine's absolute path.
        f"- source `{data.get('source')}` folder `{Path(str(data.get('root'))).name}` ({data.get('n_images')} images, "
        f"{data.get('n_patients')} patients, classes {data.get('class_counts')}; data fingerprint "
        f"`{str(data.get('fingerprint'))[:16]}`)",
    ]
    if data.get("evaluation"):
        lines.append(f"- evaluation protocol: {data['evaluation']}")
    if isinstance(splits, dict) and splits:
        lines += ["", "| split (by patient) | images | patients | classes |", "|---|---|---|---|"]
        for s, v in splits.items():
            if isinstance(v, dict) and "images" in v:
                classes = ", ".join(f"{c} {n}" for c, n in (v.get("classes") or {}).items()) or "-"
                lines.append(f"| {s} | {v['images']} | {v.get('patients')} | {classes} |")
    lines += ["", "## How it was made (exact commands)", "", "```bash", *commands, "```", "", "## Results", ""]
    for _name, title, m, imgs in evals:
        lines += _metrics_section(title, m, imgs)
    lines += _operating_points_section((ckpt.get("extra") or {}).get("operating_points") or {})
    lines += [
        "## Calibration",
        _calibration_line(cal),
        "",
        "## Intended use",
        INTENDED_USE,
        "",
        "## Known limits",
        *[f"- {x}" for x in limits],
        "",
    ]
    summary = {
        "intended_use": INTENDED_USE,
        "limits": limits,
        "commands": commands,
        "evaluations": {name: {"title": title, **headline(m)} for name, title, m, _ in evals},
        "markdown": f"{key}.md",
    }
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.ship.card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--key", required=True, help="model id; the file becomes OUT/<key>.pt")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--eval", action="append", default=[], help="NAME=TITLE=DIR (DIR holds metrics.json and PNGs)")
    p.add_argument("--command", action="append", default=[], help="a command that reproduces the model")
    p.add_argument("--limit", action="append", default=[], help="a known limit, one sentence")
    p.add_argument("--out-dir", type=Path, default=Path("models"))
    p.add_argument("--int8", action="store_true", help="store conv/linear weights as int8 (per-channel scales)")
    args = p.parse_args(argv)
    setup_logging()

    ckpt = checkpoint.read(args.checkpoint)
    ckpt["version"] = args.version
    if args.int8:
        # Shrink the shipped file: int8 conv/linear weights + fp16 for the rest (float32 at load).
        q, scales = checkpoint.quantize_int8(checkpoint.dequantize_state(ckpt))
        ckpt["state_dict"] = {k: (v.half() if v.is_floating_point() else v) for k, v in q.items()}
        ckpt["int8_scales"], ckpt["dtype"] = scales, "int8-weights"
    img_dir = args.out_dir / "cards" / args.key
    img_dir.mkdir(parents=True, exist_ok=True)
    evals = []
    for spec in args.eval:
        name, title, d = spec.split("=", 2)
        d = Path(d)
        m = json.loads((d / "metrics.json").read_text())
        imgs = []
        for png in ("confusion_matrix.png", "roc.png"):
            if (d / png).is_file():
                dst = img_dir / f"{name}_{png}"
                shutil.copyfile(d / png, dst)
                imgs.append(str(dst.relative_to(args.out_dir)))
        evals.append((name, title, m, imgs))
    out_pt = args.out_dir / f"{args.key}.pt"
    # Write once to learn the size, then again with the card (the card does not change the size materially).
    torch.save(ckpt, out_pt)
    n_params = count_parameters(build_model(ckpt["arch"], **ckpt["model_args"]))
    md, summary = build_card(args.key, ckpt, evals, args.command, args.limit, out_pt.stat().st_size / 1e6, n_params)
    ckpt["card"] = summary
    torch.save(ckpt, out_pt)
    checkpoint.load(out_pt)  # refuse to ship a file that does not load
    (args.out_dir / f"{args.key}.md").write_text(md)
    logger.info("wrote %s (%.1f MB) and %s", out_pt, out_pt.stat().st_size / 1e6, args.out_dir / f"{args.key}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
