"""Fit the image gate: the CNN (grouped cross-validation, then one model on everything), thresholds and limits.

Thresholds: each modality's acceptance threshold is the smallest probability that keeps
out-of-fold false acceptance of photographs at or under :data:`TARGET_FA` while refusing the
fewest real retinal images of held-out patients; the fundus-field rule's probability floor is
the lowest that lets no further photograph in. Quality limits are the 0.5 % quantile of the real
images' measures, with slack. :func:`run` ties it together with the learned quality grade
(:mod:`training.gate.grade`) and the report (:mod:`training.gate.report`).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from retina.gate import GATE_CLASSES, GATE_SPEC, MODALITIES, ImageGate
from retina.models import build_model
from retina.quality import FIELD_RULE, QUALITY_DIRECTION, QUALITY_MEASURES
from training.gate.augment import augment_batch
from training.gate.data import FIELD_KEYS, Views

logger = logging.getLogger("training.gate")

MODEL_ARGS: dict[str, Any] = {"in_channels": 3, "num_classes": 3, "width": 16, "dropout": 0.2, "stem_stride": 2}
VERSION = "2.2.0"
TARGET_FA = 0.01  # largest accepted share of non-retinal photographs (issue: at most 1 %)
# Quality limits: the 0.5 % quantile of the real images, loosened by this factor (OCT gets more
# slack: its scanners and exports differ more than the fundus cameras here).
QUALITY: dict[str, tuple[float, float]] = {"oct": (0.005, 0.7), "fundus": (0.005, 0.85)}  # (quantile, slack)
OTHER = GATE_CLASSES.index("other")
FLOORS: tuple[float, ...] = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # field-rule floors tried, lowest first


@dataclass(frozen=True)
class FitConfig:
    """The recipe of one gate fit (saved with the run)."""

    # 5 folds x 15 epochs x 8,000 views (v2.1): ~35 min on two shared CPU cores, most of it the six
    # fits; v2.0's 3 x 5 x 3,200 left the CNN under-fitted (46 publisher-normalised EyePACS crops
    # and 40 % of dark lesion-heavy copies refused out of fold).
    folds: int = 5
    epochs: int = 15
    per_epoch: int = 8000  # views drawn per epoch, classes evenly
    seed: int = 0
    limit: int | None = None  # at most this many images per set (smoke runs)


# ----------------------------------------------------------------------------- model
def train_model(
    x: torch.Tensor,
    y: np.ndarray,
    *,
    epochs: int = 12,
    per_epoch: int = 4000,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Fit ``gatenet`` on views ``x uint8 (N, 3, S, S)`` and labels ``y (N,)``; classes drawn evenly each epoch."""
    torch.manual_seed(seed)
    model = build_model("gatenet", **MODEL_ARGS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(per_epoch / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    counts = np.bincount(y, minlength=len(GATE_CLASSES)).astype(np.float64)
    w = torch.as_tensor(1.0 / counts[y])
    norm = v2.Normalize(mean=list(GATE_SPEC.mean), std=list(GATE_SPEC.std))
    g = torch.Generator().manual_seed(seed)
    yt = torch.as_tensor(y)
    for epoch in range(epochs):
        model.train()
        idx = torch.multinomial(w, per_epoch, replacement=True, generator=g)
        total, n = 0.0, 0
        bar = tqdm(
            idx.split(64), desc=f"gate epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=False
        )
        for b in bar:
            xb = augment_batch(x[b], g)
            loss = nn.functional.cross_entropy(model(norm(xb)), yt[b], label_smoothing=0.02)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + float(loss.detach()) * len(b), n + len(b)
        logger.info("gate epoch %d/%d: loss %.4f", epoch + 1, epochs, total / max(n, 1))
    return model.eval()


def predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Softmax ``(N, 3)`` of ``model`` on views ``x uint8 (N, 3, S, S)``."""
    gate = ImageGate(model, GATE_SPEC, dict.fromkeys(MODALITIES, 0.5), {})
    return np.concatenate([gate.probabilities(c) for c in x.split(512)])


def accepted(probs: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """``(N,)`` str: the modality each probability row is accepted as, or ``other``."""
    oct_i, fun_i = GATE_CLASSES.index("oct"), GATE_CLASSES.index("fundus")
    best = np.where(probs[:, oct_i] >= probs[:, fun_i], "oct", "fundus")
    p_best = np.maximum(probs[:, oct_i], probs[:, fun_i])
    thr = np.where(best == "oct", thresholds["oct"], thresholds["fundus"])
    return np.where(p_best >= thr, best, "other")


def choose_thresholds(
    probs: np.ndarray, v: Views, fit_mask: np.ndarray, shipped: np.ndarray | None = None, floor: float | None = None
) -> tuple[dict[str, float], int, int]:
    """Acceptance thresholds with out-of-fold photo false acceptance <= :data:`TARGET_FA` for both modalities together.

    The budget of accepted photographs (1 % of them) is shared between OCT and fundus: every
    split of it is tried, each modality's threshold set just above its allowed number of most
    retina-like photos, and the split that refuses the fewest real retinal images (out of
    fold) is kept. No threshold may exceed 0.98 x the lowest-scored real dev image (``oct-dev``
    out of fold, ``fundus-dev`` by the fold models, and both by the ``shipped`` model's scores
    when given): those must pass; a fundus-dev photo the field rule accepts sets no cap. If no
    split satisfies both, the dev constraint wins and the report shows the false acceptance above target.
    With a field-rule ``floor`` the photographs the rule lets in count against the same budget.
    Returns the thresholds, real images refused and photographs accepted (out of fold).
    """
    neg = fit_mask & (v.y == OTHER) & np.isin(v.source, ["imagenet", "samples"]) & (v.kind == "real")
    budget = int(math.floor(TARGET_FA * int(neg.sum())))
    caps, neg_sorted = {}, {}
    for m in MODALITIES:
        i = GATE_CLASSES.index(m)
        pos = np.isin(v.source, ["oct-dev", "fundus-dev"]) & (v.y == i) & (v.kind == "real")
        if m == "fundus":  # a dev photo with a fundus field is accepted by the field rule, whatever its P(fundus)
            pos &= ~field_rule(v.field)
        caps[m] = 0.9
        if pos.any():  # every dev photo may have a fundus field: then none caps the threshold
            low = min(probs[pos, i].min(), shipped[pos, i].min()) if shipped is not None else probs[pos, i].min()
            caps[m] = float(min(0.98 * low, 0.9))
        neg_sorted[m] = np.sort(probs[neg, i])[::-1]
    real = fit_mask & (v.y != OTHER) & (v.kind == "real")
    want = np.asarray(GATE_CLASSES)[v.y[real]]
    best: tuple[int, int, dict[str, float]] | None = None
    # A photograph the grey rule or the screen refuses uses none of the budget, so a modality may
    # rank more photographs above its threshold than the budget holds: try up to that many more.
    refused = (v.field[:, FIELD_KEYS.index("grey")] > 0.5) | (v.field[:, FIELD_KEYS.index("screened")] > 0.5)
    extra = int((neg & refused).sum())
    top = budget + extra
    for k_oct, k_fundus in ((a, b) for a in range(top + 1) for b in range(top + 1 - a)):
        allowed = {"oct": k_oct, "fundus": k_fundus}
        thr = {}
        for m in MODALITIES:
            ns = neg_sorted[m]
            thr[m] = float(min(1.0, ns[allowed[m]] + 1e-4)) if len(ns) > allowed[m] else 1e-3
        if any(thr[m] > caps[m] for m in MODALITIES):
            continue
        fa = int((verdicts(probs[neg], v.field[neg], thr, floor) != "other").sum())
        fr = int((verdicts(probs[real], v.field[real], thr, floor) != want).sum())
        if fa <= budget and (best is None or (fr, fa) < (best[0], best[1])):
            best = (fr, fa, thr)
    if best is None:
        out = {m: max(1e-3, caps[m]) for m in MODALITIES}
        fa = int((verdicts(probs[neg], v.field[neg], out, floor) != "other").sum())
        fr = int((verdicts(probs[real], v.field[real], out, floor) != want).sum())
        best = (fr + len(want), fa, out)  # ranked after every split that meets the budget
        logger.warning("no threshold pair meets <= %.1f%% FA with every dev image accepted: %s", 100 * TARGET_FA, out)
    logger.info("floor %s, thresholds %s: %d of %d photos accepted, %d real images refused (out of fold)", floor,
                best[2], best[1], int(neg.sum()), best[0])  # fmt: skip
    return {m: float(best[2][m]) for m in MODALITIES}, best[0], best[1]


def choose_policy(
    probs: np.ndarray, v: Views, fit_mask: np.ndarray, shipped: np.ndarray
) -> tuple[dict[str, float], float | None]:
    """Thresholds and field-rule floor together: the pair that refuses the fewest real images within the budget.

    Floors tried: none (no rule), :data:`FLOORS`, 0.3 and 0.4; for each, :func:`choose_thresholds`
    with the rule's photographs counted against the same 1 % budget. Among equals the highest
    floor wins: the rule is loose about hard copies of photographs (in a black disc, vignetted),
    and a higher floor lets fewer of them in.
    """
    tried = [(choose_thresholds(probs, v, fit_mask, shipped, f), f) for f in (None, *FLOORS, 0.3, 0.4, 0.5)]
    (thr, fr, fa), floor = min(tried, key=lambda t: (t[0][1], t[0][2], -(t[1] or 0.0)))
    logger.info("chosen: floor %s, thresholds %s (%d real refused, %d photos accepted)", floor, thr, fr, fa)
    return thr, floor


def quality_limits(v: Views, mask: np.ndarray) -> dict[str, dict[str, float]]:
    """Per modality and measure, the real images' 0.5 % quantile loosened by :data:`QUALITY` slack.

    Raw EyePACS photos, publisher-normalised crops and IDRiD photos are fitted separately and
    the most lenient limit kept: all three looks are gradable.
    """
    limits: dict[str, dict[str, float]] = {}
    for m in MODALITIES:
        rows = list(np.flatnonzero(mask & (v.y == GATE_CLASSES.index(m)) & (v.kind == "real")))
        looks: dict[str, list[int]] = defaultdict(list)
        for i in rows:
            looks[str(v.quality[i]["look"])].append(i)
        quantile, slack = QUALITY[m]
        limits[m] = {}
        for name in QUALITY_MEASURES[m]:
            per = []
            for idx in looks.values():
                vals = np.asarray([v.quality[i][name] for i in idx])
                if QUALITY_DIRECTION[name] == "min":
                    per.append(float(np.quantile(vals, quantile) * slack))
                else:
                    q = float(np.quantile(vals, 1 - quantile))
                    per.append(float(min(1.0, q + (1 - q) * (1 - slack))))
            limits[m][name] = min(per) if QUALITY_DIRECTION[name] == "min" else max(per)
        # As for the acceptance thresholds: no real dev image may be called ungradable, so a
        # limit a dev image fails is loosened just past it (0.5 %: blurred copies of dev photos
        # sit as close as 1 % above a hazy real one in sharpness; the report lists the limits).
        dev = np.flatnonzero(
            np.isin(v.source, ["oct-dev", "fundus-dev"]) & (v.y == GATE_CLASSES.index(m)) & (v.kind == "real")
        )
        for name in QUALITY_MEASURES[m]:
            vals = np.asarray([v.quality[i][name] for i in dev])
            if not len(vals):
                continue
            if QUALITY_DIRECTION[name] == "min" and vals.min() < limits[m][name]:
                logger.info(
                    "%s %s: limit %.4g loosened to %.4g for a dev image", m, name, limits[m][name], 0.995 * vals.min()
                )
                limits[m][name] = float(0.995 * vals.min())
            elif QUALITY_DIRECTION[name] == "max" and vals.max() > limits[m][name]:
                new = float(min(1.0, vals.max() + 0.005 * (1 - vals.max())))
                logger.info("%s %s: limit %.4g loosened to %.4g for a dev image", m, name, limits[m][name], new)
                limits[m][name] = new
    return limits


def cross_validate(v: Views, fit_mask: np.ndarray, folds: int, epochs: int, seed: int, per_epoch: int) -> np.ndarray:
    """Out-of-fold probabilities ``(N, 3)`` for every row in ``fit_mask`` (NaN elsewhere)."""
    idx = np.flatnonzero(fit_mask)
    oof = np.full((len(v.y), len(GATE_CLASSES)), np.nan)
    # Stratify on the real images' class and fold whole groups: a patient's scans, an ImageNet
    # class's photo with every variant of it, a generated image with its variants.
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    outside = np.flatnonzero(~fit_mask)  # never fitted (fundus-dev): the mean over the fold models
    if len(outside):
        oof[outside] = 0.0
    for k, (tr, te) in enumerate(cv.split(idx, v.y[idx], v.group[idx])):
        logger.info("gate CV fold %d/%d: %d train, %d held-out views", k + 1, folds, len(tr), len(te))
        model = train_model(v.x[idx[tr]], v.y[idx[tr]], epochs=epochs, per_epoch=per_epoch, seed=seed + k)
        oof[idx[te]] = predict(model, v.x[idx[te]])
        if len(outside):
            oof[outside] += predict(model, v.x[outside]) / folds
    return oof


def field_rule(ev: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: :data:`retina.quality.FIELD_RULE` on evidence rows ``(N, K)`` (:data:`FIELD_KEYS` order)."""
    ok = np.ones(len(ev), dtype=bool)
    for k, (d, lim) in FIELD_RULE.items():
        col = ev[:, FIELD_KEYS.index(k)]
        ok &= col >= lim if d == "min" else col <= lim
    return ok


def verdicts(probs: np.ndarray, ev: np.ndarray, thresholds: dict[str, float], floor: float | None) -> np.ndarray:
    """``(N,)`` str as the served gate (:meth:`retina.gate.ImageGate.assess_many`) decides, from ``ev (N, K)``.

    Screened out before the CNN (tiny, blank, noise) -> ``other``; else :func:`accepted`; a grey
    image is no colour fundus photo (an OCT scan when ``P(oct)`` reaches its threshold, else
    ``other``: the grey rule, so a grey photograph the CNN likes costs no false acceptance here
    either); then a doubted colour image with a fundus field is ``fundus``.
    """
    grey = ev[:, FIELD_KEYS.index("grey")] > 0.5
    out = accepted(probs, thresholds)
    grey_fundus = (out == "fundus") & grey
    is_oct = probs[:, GATE_CLASSES.index("oct")] >= thresholds["oct"]
    out = np.where(grey_fundus, np.where(is_oct, "oct", "other"), out)
    screened = ev[:, FIELD_KEYS.index("screened")] > 0.5
    if floor is not None:
        rescue = (out == "other") & ~grey & (probs[:, GATE_CLASSES.index("fundus")] >= floor) & field_rule(ev)
        out = np.where(rescue, "fundus", out)
    return np.where(screened, "other", out)


def _fundus_dev(gate: ImageGate, root: Path) -> dict[str, Any]:
    """The shipped gate on every fundus-dev photo (never fitted): not retinal, ungradable, quality grades."""
    from retina.preprocessing import load_image
    from training.gate.data import retinal_files

    files = [p for s, _, _, p in retinal_files(root) if s == "fundus-dev"]
    rs = [gate.assess(load_image(str(p))) for p in files]
    n = len(rs)
    bad = sum(r.modality == "other" for r in rs)
    ungr = sum(r.modality == "fundus" and not r.gradable for r in rs)
    return {
        "not_retinal": {"n": n, "count": bad, "rate": bad / n if n else None},
        "ungradable": {"n": n, "count": ungr, "rate": ungr / n if n else None},
        "grades": dict(Counter(str(r.quality_grade) for r in rs)),
        "refused": [p.name for p, r in zip(files, rs, strict=True) if r.modality != "fundus"],
    }


def _fit_final(
    v: Views, fit_mask: np.ndarray, cfg: FitConfig, labels: dict, model: nn.Module | None, root: Path | None = None
) -> tuple[ImageGate, dict[str, Any]]:
    """The shipped model on everything but fundus-dev (``model`` when reused), its limits and the learned grade."""
    from training.gate.grade import fit_grade

    if model is None:
        model = train_model(v.x[fit_mask], v.y[fit_mask], epochs=cfg.epochs, per_epoch=cfg.per_epoch, seed=cfg.seed)
    limits = quality_limits(v, fit_mask)
    grader, rule, grade_res = fit_grade(v, labels, limits["fundus"], seed=cfg.seed, root=root)
    gate = ImageGate(model, GATE_SPEC, dict.fromkeys(MODALITIES, 0.5), limits, grader=grader, gradable_rule=rule)
    return gate, {"quality_limits": limits, "grade": grade_res}


def run(
    root: Path, out: Path, report_dir: Path, cfg: FitConfig, cache_dir: Path | None = None, reuse: bool = False
) -> dict[str, Any]:
    """Cross-validate, choose thresholds and the field floor, fit and save the gate, and write the report.

    ``reuse``: no CNN training; the out-of-fold scores in ``report_dir/oof.npz`` and the CNN of the
    gate at ``out`` (from an earlier run on the same views) get the thresholds, limits, grade and report anew.
    """
    from training.gate import report
    from training.gate.data import cached_views, labels

    report_dir.mkdir(parents=True, exist_ok=True)
    v = cached_views(root, cache_dir, seed=cfg.seed, limit=cfg.limit)
    lab = labels(root)
    fit_mask = v.source != "fundus-dev"
    model = None
    if reuse:
        z = np.load(report_dir / "oof.npz", allow_pickle=False)
        if not (np.array_equal(z["name"], v.name) and np.array_equal(z["kind"], v.kind)):
            raise SystemExit(f"{report_dir / 'oof.npz'} was scored on other views: run without --reuse")
        oof, model = z["oof"], ImageGate.load(out).model
    else:
        oof = cross_validate(v, fit_mask, cfg.folds, cfg.epochs, cfg.seed, cfg.per_epoch)
        np.savez(report_dir / "oof.npz", oof=oof, y=v.y, source=v.source, kind=v.kind, name=v.name, group=v.group)
    gate, extra = _fit_final(v, fit_mask, cfg, lab, model, root)
    thresholds, floor = choose_policy(np.nan_to_num(oof), v, fit_mask, shipped=predict(gate.model, v.x))
    out_cv = verdicts(np.nan_to_num(oof), v.field, thresholds, floor)
    res: dict[str, Any] = {"version": VERSION, "config": cfg.__dict__ | {"reused_cnn": reuse}, "folds": cfg.folds}
    res |= {"thresholds": thresholds, "field_floor": floor}
    res["refusals"] = report.refusals(v, out_cv, lab)
    fitted_real = fit_mask & (v.y != OTHER) & (v.kind == "real")
    res["not_retinal_all"] = report._rate(fitted_real, out_cv == "other")
    res["false_acceptance"] = report.false_acceptance(v, out_cv, fit_mask)
    res |= extra
    gate.thresholds, gate.field_floor, gate.version = thresholds, floor, VERSION
    gate.fitted_on = {
        "sets": dict(Counter(str(s) for s in v.source[fit_mask & (v.kind == "real")])),
        "views": int(fit_mask.sum()),
        "data_root": str(root),
        "thresholds": f"<= {TARGET_FA:.0%} out-of-fold false acceptance of photographs",
        "quality_limits": {m: f"{q} quantile x {k} per look" for m, (q, k) in QUALITY.items()},
        "quality_grade": f"EyeQ grades, rule {gate.gradable_rule}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    metrics = {
        "cv_false_acceptance_photos": res["false_acceptance"]["photos"],
        "cv_not_retinal_real": res["not_retinal_all"],
        "quality_grade_held_out": res["grade"]["three_class"],
    }
    gate.save(out, MODEL_ARGS, metrics=metrics)
    gate = ImageGate.load(out)
    logger.info("wrote %s (thresholds %s, floor %s)", out, thresholds, floor)
    res["fundus_dev"] = _fundus_dev(gate, root)
    res |= report.degraded_check(gate, root)
    res["cost"] = report.cost(ImageGate.load(out), root, out)
    report.contact_sheet(root, v, res["refusals"]["refused"], out_cv, np.nan_to_num(oof), report_dir / "refused.png")
    (report_dir / "report.json").write_text(json.dumps(res, indent=1, default=str))
    report.write_markdown(res, report_dir / "report.md")
    return res
