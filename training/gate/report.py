"""What the fitted gate does, out of fold and on held-out images: tables, the cost, a contact sheet, ``report.md``.

Refusals ("not a retinal image") per dataset, per variant kind, per DR grade and per ODIR
finding; false acceptance per negative kind; the quality grade against EyeQ; the shipped gate
on dev images, degraded and as other cameras give them; the cost per image on one thread; and a
picture of every real retinal image still refused out of fold.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from retina.gate import GATE_CLASSES, ImageGate
from retina.preprocessing import load_image
from training.gate import augment
from training.gate.data import RETINAL_SETS, Views, retinal_files

OTHER = GATE_CLASSES.index("other")


def _rate(mask: np.ndarray, hit: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    k = int((mask & hit).sum())
    return {"n": n, "count": k, "rate": k / n if n else None}


def refusals(v: Views, out: np.ndarray, labels: dict[tuple[str, str], dict[str, str]]) -> dict[str, Any]:
    """Real retinal images answered "not retinal" (``other``) or the wrong modality, by set, kind, grade, finding."""
    want = np.asarray(GATE_CLASSES)[v.y]
    refused = (v.y != OTHER) & (out == "other")
    wrong = (v.y != OTHER) & (out != "other") & (out != want)
    res: dict[str, Any] = {"by_set": {}, "by_kind": {}, "by_grade": {}, "by_odir_finding": {}}
    real = v.kind == "real"
    for s in RETINAL_SETS:
        m = real & (v.source == s)
        if m.any():
            res["by_set"][s] = {"not_retinal": _rate(m, refused), "wrong_modality": _rate(m, wrong)}
        for k in sorted(set(v.kind[(v.source == s) & ~real])):
            res["by_kind"][f"{s} | {k}"] = _rate((v.source == s) & (v.kind == k), refused)
    grade = np.asarray(
        [labels.get((str(s), str(n)), {}).get("level", "") for s, n in zip(v.source, v.name, strict=True)]
    )
    for g in ("0", "1", "2", "3", "4"):
        for s in ("fundus-train", "fundus-idrid", "fundus-odir", "fundus-dev"):
            m = real & (v.source == s) & (grade == g)
            if m.any():
                res["by_grade"][f"grade {g} | {s}"] = _rate(m, refused)
        res["by_grade"][f"grade {g} | all sets"] = _rate(real & (grade == g), refused)
    finding = [labels.get((str(s), str(n)), {}).get("keywords", "") for s, n in zip(v.source, v.name, strict=True)]
    per: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(real & (v.source == "fundus-odir")):
        for k in {w.strip() for w in finding[i].split(";") if w.strip()}:
            per[k].append(i)
    for k, idx in sorted(per.items(), key=lambda kv: -len(kv[1])):
        m = np.zeros(len(v.y), bool)
        m[idx] = True
        res["by_odir_finding"][k] = _rate(m, refused)
    res["refused"] = [int(i) for i in np.flatnonzero(real & refused)]
    return res


def false_acceptance(v: Views, out: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Negatives accepted as retinal, per source and kind, and the photographs (ImageNet + samples) together."""
    acc = out != "other"
    res: dict[str, Any] = {"by_kind": {}}
    for src in sorted(set(v.source[mask & (v.y == OTHER)])):
        for kind in sorted(set(v.kind[v.source == src])):
            res["by_kind"][f"{src} | {kind}"] = _rate(mask & (v.source == src) & (v.kind == kind), acc)
    photos = mask & np.isin(v.source, ["imagenet", "samples"]) & (v.kind == "real")
    res["photos"] = _rate(photos, acc)
    res["accepted_photos"] = [f"{v.source[i]}/{v.name[i]} -> {out[i]}" for i in np.flatnonzero(photos & acc)]
    return res


def contact_sheet(root: Path, v: Views, rows: list[int], out: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """A PNG of the real retinal images in ``rows`` (still refused), 160-px tiles with set, name and P(modality)."""
    tiles = rows[:80]
    cols, tw, th = 8, 160, 150
    sheet = Image.new("RGB", (cols * tw, max(1, (len(tiles) + cols - 1) // cols) * th), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    where = {(s, p.name): p for s, _, _, p in retinal_files(root)}
    for j, i in enumerate(tiles):
        img = load_image(str(where[(str(v.source[i]), str(v.name[i]))])).convert("RGB")
        img.thumbnail((tw - 4, th - 26))
        x, y = (j % cols) * tw, (j // cols) * th
        sheet.paste(img, (x + 2, y + 2))
        p = probs[i, int(v.y[i])]
        draw.text((x + 2, y + th - 24), f"{v.source[i]}", fill=(0, 0, 0))
        draw.text((x + 2, y + th - 13), f"{v.name[i][:16]} P={p:.2f}", fill=(150, 0, 0))
    sheet.save(path)


def degraded_check(gate: ImageGate, root: Path) -> dict[str, Any]:
    """Real dev images as they are, degraded, and as other cameras would give them: the shipped gate's verdicts.

    Returns ``{table: {"<modality>: <variant>": {verdict: count}}}``; each dev image is decoded once
    for both tables. A ValueError when ``root`` holds no dev images.
    """
    tables: dict[str, Callable[[Image.Image, str], dict[str, Image.Image]]] = {
        "dev_and_degraded": lambda img, m: {"as is": img, **augment.degraded(img, m)},
        "dev_other_cameras": augment.camera_variants,
    }
    out: dict[str, dict[str, Counter[str]]] = {t: defaultdict(Counter) for t in tables}
    for s, m, _, p in retinal_files(root):
        if s not in ("oct-dev", "fundus-dev"):
            continue
        img = load_image(str(p))
        for table, make in tables.items():
            variants = make(img, m)
            for kind, r in zip(variants, gate.assess_many(list(variants.values())), strict=True):
                verdict = (
                    "gradable"
                    if r.modality == m and r.gradable
                    else ("ungradable" if r.modality == m else f"as {r.modality}")
                )
                out[table][f"{m}: {kind}"][verdict] += 1
    if not out["dev_and_degraded"]:
        raise ValueError(f"no oct-dev or fundus-dev images under {root}")
    return {t: {k: dict(c) for k, c in rows.items()} for t, rows in out.items()}


def cost(gate: ImageGate, root: Path, path: Path, n: int = 60) -> dict[str, dict[str, float]]:
    """ms per image of ``assess`` on one thread (decoded images: decoding is not the gate's), per set.

    On the engine the service runs the gate on (``auto``: ONNX Runtime fp32 where it passes parity).
    Median and 90th percentile of ``n`` images, the best of two passes (the machine is shared).
    """
    engine = gate.use_engine("auto", path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    res = {}
    files = retinal_files(root)
    for s in ("oct-dev", "fundus-dev", "fundus-idrid", "fundus-odir"):
        imgs = [load_image(str(p)) for ss, _, _, p in files if ss == s][:n]
        if not imgs:
            continue
        gate.assess(imgs[0])
        best: list[float] | None = None
        for _ in range(2):
            times = []
            for img in imgs:
                t = time.perf_counter()
                gate.assess(img)
                times.append((time.perf_counter() - t) * 1000)
            best = times if best is None or np.median(times) < np.median(best) else best
        res[s] = {"median_ms": float(np.median(best)), "p90_ms": float(np.percentile(best, 90)), "n": len(imgs)}
        res[s]["engine"] = engine  # type: ignore[assignment]
    torch.set_num_threads(threads)
    return res


def _fmt(r: dict[str, Any]) -> str:
    return f"{r['count']} / {r['n']}" + (f" ({100 * r['rate']:.2f} %)" if r["rate"] is not None else "")


def _table(head: tuple[str, str], rows: dict[str, Any], fmt: Callable[[Any], str] = _fmt) -> list[str]:
    body = [f"| {k.replace(' | ', ', ')} | {fmt(r)} |" for k, r in rows.items()]
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *body, ""]


def _refusal_lines(res: dict[str, Any]) -> list[str]:
    ref = res["refusals"]
    lines = [f"## Real retinal images refused as not retinal ({res['folds']}-fold CV grouped by patient)", ""]
    lines += ["| set | not retinal | wrong modality |", "|---|---|---|"]
    lines += [f"| {s} | {_fmt(r['not_retinal'])} | {_fmt(r['wrong_modality'])} |" for s, r in ref["by_set"].items()]
    lines += ["", f"**All real retinal images (fitted sets): {_fmt(res['not_retinal_all'])} not retinal**", ""]
    lines += ["### By DR grade", "", *_table(("grade, set", "not retinal"), ref["by_grade"])]
    lines += ["### By ODIR finding (an eye counts under each of its findings)", ""]
    lines += _table(("finding", "not retinal"), ref["by_odir_finding"])
    lines += ["### Poor-capture copies of real retinas (positives; same folds)", ""]
    lines += _table(("set, copy", "not retinal"), ref["by_kind"])
    fd = res["fundus_dev"]
    lines += [f"fundus-dev (never fitted; shipped gate): not retinal {_fmt(fd['not_retinal'])}, "
              f"ungradable {_fmt(fd['ungradable'])}; grades {fd['grades']}", ""]  # fmt: skip
    return lines


def _grade_lines(g: dict[str, Any]) -> list[str]:
    t = g["three_class"]
    lines = ["## Learned quality grade vs EyeQ (held-out patients)", ""]
    lines += [
        f"{g['n_graded']} EyeQ-graded EyePACS photos; fitted on {g['n_train']}, measured on {g['n_held_out']} "
        f"({g['held_out_patients']} patients never fitted; EyeQ grades {g['eyeq_counts_held_out']}).",
        "",
        f"**3-class accuracy {100 * t['accuracy']:.1f} %, Cohen's kappa quadratic {t['kappa_quadratic']:.3f}, "
        f"plain {t['kappa']:.3f}** (EyeQ's anchor, MCF-Net: 91.75 % accuracy on 28,792 images; this set is "
        "~1,400 photos and a 23-feature linear model).",
        "",
        f"Confusion (rows EyeQ Good/Usable/Reject, columns predicted): {t[next(k for k in t if k.startswith('conf'))]}",
        "",
        f"Ungradable vs EyeQ Reject on the same photos (P(Reject) >= {g['reject_at']} for the grade):",
        "",
        "| rule | accuracy | kappa | sensitivity | specificity |",
        "|---|---|---|---|---|",
    ]
    for rule, b in g["ungradable_vs_eyeq_reject"].items():
        sens, spec = (b[k] for k in b if k.startswith(("sens", "spec")))
        lines.append(f"| {rule} | {b['accuracy']:.3f} | {b['kappa']:.3f} | {sens:.3f} | {spec:.3f} |")
    lines += ["", f"Shipped gradable rule for fundus photos: **{g['gradable_rule']}** (best kappa above).", ""]
    clinics = g.get("clinic_ungradable_held_out") or {}
    if clinics:
        cols = [k for k in next(iter(clinics.values())) if k != "n"]
        lines += [
            "### Other clinics' graded photos called ungradable (held-out patients)",
            "",
            f"{g['n_clinic_graded']} IDRiD and ODIR photos that their graders graded for DR (none with a cataract, "
            "media-opacity or lens-dust remark) are gradable by that fact; the grade is fitted on three quarters "
            'of their patients as "not Reject". Share called ungradable on the other quarter:',
            "",
            "| set | photos | " + " | ".join(cols) + " |",
            "|---|---|" + "---|" * len(cols),
            *(
                f"| {s} | {r['n']} | " + " | ".join(f"{100 * r[c]:.1f} %" for c in cols) + " |"
                for s, r in clinics.items()
            ),
            "",
        ]
    return lines


def _check_lines(res: dict[str, Any]) -> list[str]:
    lines = ["## Shipped gate on dev images and degraded copies", "", "| image | verdicts |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in res["dev_and_degraded"].items()]
    lines += ["", "## Shipped gate on dev images as other cameras and exports give them (all should pass)", ""]
    lines += ["| image | verdicts |", "|---|---|", *(f"| {k} | {v} |" for k, v in res["dev_other_cameras"].items())]
    lines += ["", "## Cost per image (assess on a decoded image, 1 thread, best of 2 passes)", ""]
    lines += ["| set | median ms | p90 ms | n | engine |", "|---|---|---|---|---|"]
    for s, c in res["cost"].items():
        lines.append(f"| {s} | {c['median_ms']:.2f} | {c['p90_ms']:.2f} | {c['n']} | {c['engine']} |")
    return lines


def write_markdown(res: dict[str, Any], path: Path) -> None:
    """``report.md``: every table of ``res`` (:func:`training.gate.fit.run`'s result)."""
    fa = res["false_acceptance"]
    lines = ["# Image gate: measured", "", f"Version {res['version']}; recipe {res['config']}.", ""]
    lines += [f"Acceptance thresholds (probability): {res['thresholds']}; fundus-field rule floor "
              f"P(fundus) >= {res['field_floor']}.", ""]  # fmt: skip
    lines += _refusal_lines(res)
    lines += [f"## False acceptance, {res['folds']}-fold CV grouped by ImageNet class / image", ""]
    lines += [f"**Photographs (ImageNet sample + library samples): {_fmt(fa['photos'])}**", ""]
    lines += _table(("negatives", "accepted as retinal"), fa["by_kind"])
    lines += ["Accepted photographs: " + (", ".join(fa["accepted_photos"]) or "none"), ""]
    lines += _grade_lines(res["grade"])
    lines += _check_lines(res)
    lines += ["", f"Quality limits: {res['quality_limits']}", ""]
    lines += ["Still refused out of fold: `refused.png` beside this report.", ""]
    path.write_text("\n".join(lines) + "\n")
