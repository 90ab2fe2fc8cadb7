"""Fit a site profile: one clinic's temperature and fundus operating points from its own graded photos.

    python -m training.site_profile --data DIR --name NAME --out models/sites \\
        [--checkpoint models/fundus-resnet18.pt] [--target-sensitivity 0.87]

(the command is the thin ``training/site_profile.py``; this module is the library it calls.)

``DIR`` is the site's graded photos in the EyePACS layout (``train/*.jpeg`` + ``trainLabels.csv``
with ``image,level``; 100-300 photos is the intended size). Every photo is scored by the
checkpoint as the service scores it (the checkpoint's preprocessing spec: ``prepare`` then
``tail``, the two halves of ``eval_transform``), keeping the logits. Then, on the site's photos:

1. a softmax temperature by 5-class NLL (``training.evaluate.calibration.fit_temperature``); the model's own
   temperature is kept when the site's does not lower the NLL;
2. the refer point: the largest ``t`` with sensitivity for grade >= 2 of ``P(grade >= 2) >= t`` at
   or above the target (``training.evaluate.thresholds.threshold_for_sensitivity``);
3. the urgent point: the same on ``P(grade 4)`` for grade 4, when the site has at least
   :data:`MIN_PROLIFERATIVE` grade-4 photos; otherwise the model's own urgent point is kept (and
   the profile says so). The service's rule is unchanged: urgent needs both points.

Sensitivity and specificity at each point come with 95 % bootstrap intervals that resample
patients (``<patient>_left`` / ``_right`` are one patient), so both eyes move together.

Refusals (exit 2, no file written), because a profile fitted on too little would decide referrals
with thresholds that are mostly noise:

* fewer than :data:`MIN_REFERABLE` referable (grade >= 2) or :data:`MIN_NON_REFERABLE` other photos;
* a sensitivity 95 % interval at the refer point wider than :data:`MAX_CI_WIDTH` (0.30: with
  20 referable photos at 87 % sensitivity the binomial interval is already ~0.29 wide; wider
  means the target sensitivity cannot be told from 70 %).

Writes ``OUT/NAME.json`` (``retina.site_profile.SiteProfile``, the schema the service reads).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retina import __version__, checkpoint
from retina.checkpoint import CheckpointMeta
from retina.labels import DR_GRADES
from retina.preprocessing import tail
from retina.referral import operating_points
from retina.runtime import resolve_device
from retina.site_profile import (
    Rates,
    SitePoint,
    SiteProfile,
    applies_to,
    model_fingerprint,
    torch_version,
    write_profile,
)
from training.data.pixels import prepare_all
from training.data.tables import ImageTable, read_table
from training.evaluate.calibration import ece, fit_temperature, nll, softmax
from training.evaluate.thresholds import threshold_for_sensitivity

logger = logging.getLogger("training.site_profile")

MIN_REFERABLE = 20
MIN_NON_REFERABLE = 20
MIN_PROLIFERATIVE = 10
MAX_CI_WIDTH = 0.30
DEFAULT_CHECKPOINT = Path("models/fundus-resnet18.pt")
DEFAULT_TARGET = 0.87  # IDx-DR's pivotal-trial sensitivity, as the shipped refer point


class ProfileRefused(ValueError):
    """The site's photos cannot support a profile; the message says why and what would."""


@dataclass(frozen=True)
class ScoredSet:
    """A dataset scored by one model: ``logits (N, 5)`` float64 at temperature 1, grades, patient ids, paths."""

    logits: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    paths: list[str]

    def subset(self, idx: np.ndarray) -> ScoredSet:
        return ScoredSet(self.logits[idx], self.labels[idx], self.groups[idx], [self.paths[i] for i in idx])


@dataclass(frozen=True)
class ServedCheckpoint:
    """The checkpoint as the service loads it, and the identity a profile records."""

    model: torch.nn.Module
    meta: CheckpointMeta
    model_id: str
    fingerprint: str
    device: torch.device


def load_checkpoint(path: Path, device: str = "cpu") -> ServedCheckpoint:
    """Load a fundus DR-grade checkpoint; ``ValueError`` for any other kind (profiles are fundus-only)."""
    dev = resolve_device(device)
    model, meta = checkpoint.load(path, device=dev)
    if not applies_to(meta.task, meta.class_names):
        raise ValueError(
            f"{path}: a {meta.task} model with classes {meta.class_names}; site profiles are for "
            f"fundus DR-grade models ({', '.join(DR_GRADES)})"
        )
    return ServedCheckpoint(model, meta, Path(path).stem, model_fingerprint(model), dev)


@torch.inference_mode()
def score_table(
    ck: ServedCheckpoint, table: ImageTable, *, batch_size: int = 32, cache_dir: Path | None = None
) -> ScoredSet:
    """Logits of every photo of ``table``, as the service computes them before its softmax.

    ``cache_dir``: the logits are kept in ``cache_dir/logits-<data>-<model>.npy`` (keyed by the
    table's fingerprint and the weights' fingerprint), so a second fit or check costs no forward pass.
    """
    key = hashlib.sha256(f"{table.fingerprint()}|{ck.fingerprint}|{ck.meta.preprocess.to_dict()}".encode())
    cache = Path(cache_dir) / f"logits-{key.hexdigest()[:20]}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        logits = np.load(cache)
        logger.info("logits from cache %s", cache)
    else:
        spec = ck.meta.preprocess
        u8 = prepare_all(table, spec)  # retina.preprocessing.prepare of every photo, as the service's intake
        to_input = tail(spec)
        out = []
        for start in tqdm(range(0, len(u8), batch_size), desc="score", unit="batch", mininterval=5):
            x = to_input(u8[start : start + batch_size].to(ck.device)).contiguous(memory_format=torch.channels_last)
            out.append(ck.model(x).double().cpu().numpy())
        logits = np.concatenate(out) if out else np.zeros((0, len(DR_GRADES)))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, logits)
    return ScoredSet(logits, np.asarray(table.labels), np.asarray(table.groups).astype(str), list(table.paths))


def rates(
    score: np.ndarray, positive: np.ndarray, t: float, groups: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> Rates:
    """Sensitivity / specificity of ``score >= t`` with patient-resampled (cluster bootstrap) 95 % intervals.

    Each resample draws the patients with replacement, as ``training.evaluate.metrics.bootstrap_ci`` does; drawn as
    multiplicities ``(n_boot, patients)`` and per-patient counts, so 1,000 resamples of 1,000 patients take
    milliseconds (the check reruns this for every point and seed).
    """
    pred = np.asarray(score) >= t
    positive = np.asarray(positive, dtype=bool)
    _, unit = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    k = int(unit.max()) + 1 if len(unit) else 0
    counts = {
        name: np.bincount(unit, weights=mask.astype(np.float64), minlength=k)
        for name, mask in (("tp", pred & positive), ("pos", positive), ("tn", ~pred & ~positive), ("neg", ~positive))
    }
    sens = counts["tp"].sum() / counts["pos"].sum() if positive.any() else float("nan")
    spec = counts["tn"].sum() / counts["neg"].sum() if (~positive).any() else float("nan")
    w = None
    if k:
        picks = np.random.default_rng(seed).integers(0, k, (n_boot, k))  # patients drawn, one row per resample
        flat = (picks + k * np.arange(n_boot)[:, None]).ravel()
        w = np.bincount(flat, minlength=n_boot * k).reshape(n_boot, k).astype(np.float64)

    def ci(num: str, den: str) -> tuple[float, float]:
        if w is None:
            return (0.0, 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = (w @ counts[num]) / (w @ counts[den])
        values = values[np.isfinite(values)]
        if not len(values):
            return (0.0, 1.0)
        lo, hi = np.percentile(values, [2.5, 97.5])
        return (float(lo), float(hi))

    return Rates(
        sensitivity=float(sens) if np.isfinite(sens) else 0.0,
        sensitivity_ci95=ci("tp", "pos"),
        specificity=float(spec) if np.isfinite(spec) else 0.0,
        specificity_ci95=ci("tn", "neg"),
        n=int(len(pred)),
        n_positive=int(positive.sum()),
    )


def fit_site_temperature(scored: ScoredSet, model_temperature: float) -> tuple[float, dict[str, float]]:
    """The site's temperature (5-class NLL), or the model's when the site's does not lower the NLL."""
    fitted = fit_temperature(scored.logits, scored.labels)["temperature_fitted"]
    before = nll(scored.logits, scored.labels, model_temperature)
    after = nll(scored.logits, scored.labels, fitted)
    t = fitted if after < before - 1e-9 else model_temperature
    return t, {
        "model_temperature": model_temperature,
        "nll_model_temperature": before,
        "nll_site_temperature": nll(scored.logits, scored.labels, t),
        "ece_model_temperature": ece(softmax(scored.logits, model_temperature), scored.labels),
        "ece_site_temperature": ece(softmax(scored.logits, t), scored.labels),
    }


def fit_profile(
    ck: ServedCheckpoint,
    scored: ScoredSet,
    *,
    name: str,
    target: float = DEFAULT_TARGET,
    data: str = "",
    n_boot: int = 1000,
) -> SiteProfile:
    """A :class:`SiteProfile` from the site's scored photos; :class:`ProfileRefused` when they cannot support one."""
    referable = scored.labels >= 2
    proliferative = scored.labels == 4
    n_ref, n_other = int(referable.sum()), int((~referable).sum())
    if n_ref < MIN_REFERABLE or n_other < MIN_NON_REFERABLE:
        raise ProfileRefused(
            f"{len(scored.labels)} photos with {n_ref} referable (grade >= 2) and {n_other} others: a profile needs "
            f"at least {MIN_REFERABLE} referable and {MIN_NON_REFERABLE} other graded photos from this site"
        )
    t_site, calibration = fit_site_temperature(scored, ck.meta.temperature)
    probs = softmax(scored.logits, t_site)
    p_ref, p4 = probs[:, 2:].sum(axis=1), probs[:, 4]
    t_refer = threshold_for_sensitivity(p_ref, referable, target)
    refer_fit = rates(p_ref, referable, t_refer, scored.groups, n_boot)
    width = refer_fit.sensitivity_ci95[1] - refer_fit.sensitivity_ci95[0]
    if width > MAX_CI_WIDTH:
        raise ProfileRefused(
            f"the refer point's sensitivity 95% interval is {width:.2f} wide ({refer_fit.sensitivity_ci95[0]:.2f}"
            f"-{refer_fit.sensitivity_ci95[1]:.2f}, {n_ref} referable photos), over {MAX_CI_WIDTH:.2f}: "
            "grade more referable photos from this site"
        )
    refer = SitePoint(
        threshold=max(t_refer, 1e-6), score="P(grade >= 2)", fitted=True, source="fitted at this site", fit=refer_fit
    )
    n4 = int(proliferative.sum())
    if n4 >= MIN_PROLIFERATIVE:
        t_urgent = threshold_for_sensitivity(p4, proliferative, target)
        urgent_fit = rates(p4, proliferative, t_urgent, scored.groups, n_boot)
        urgent = SitePoint(
            threshold=max(t_urgent, 1e-6),
            score="P(grade 4)",
            fitted=True,
            source="fitted at this site",
            fit=urgent_fit,
        )
    else:
        # Too few proliferative photos to place a threshold: keep the model's point (0.5 without one).
        point = operating_points(ck.meta).get("urgent")
        t_urgent = float(point["threshold"]) if point else 0.5
        urgent = SitePoint(
            threshold=t_urgent,
            score="P(grade 4)",
            fitted=False,
            source=f"the model's own urgent point (only {n4} grade-4 photos here, fewer than {MIN_PROLIFERATIVE})",
            fit=rates(p4, proliferative, t_urgent, scored.groups, n_boot) if n4 else None,
        )
    return SiteProfile(
        name=name,
        model={
            "model_id": ck.model_id,
            "version": ck.meta.version,
            "arch": ck.meta.arch,
            "fingerprint": ck.fingerprint,
        },
        temperature=t_site,
        calibration=calibration,
        target_sensitivity=target,
        refer=refer,
        urgent=urgent,
        n_images=len(scored.labels),
        n_referable=n_ref,
        n_proliferative=n4,
        n_patients=len(np.unique(scored.groups)),
        data=data,
        created=datetime.now(UTC),
        software={"retina": __version__, "torch": torch_version()},
    )


def read_site(data: Path) -> ImageTable:
    """The site's photos (EyePACS layout), DR grades 0-4."""
    return read_table(data, "eyepacs", label_scheme="grade", task="fundus")


def fit_site(
    data: Path,
    name: str,
    out: Path,
    *,
    checkpoint_path: Path = DEFAULT_CHECKPOINT,
    target: float = DEFAULT_TARGET,
    device: str = "cpu",
    batch_size: int = 32,
    cache_dir: Path | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Score the site's photos, fit a profile and write ``out/<name>.json``; returns its path and content.

    Raises :class:`ProfileRefused` (nothing written) when the photos cannot support a profile.
    """
    ck = load_checkpoint(checkpoint_path, device)
    table = read_site(data)
    scored = score_table(ck, table, batch_size=batch_size, cache_dir=cache_dir)
    profile = fit_profile(ck, scored, name=name, target=target, data=str(data), n_boot=n_boot)
    path = write_profile(profile, out)
    r = profile.refer.fit
    assert r is not None
    logger.info(
        "%s: T=%.3f, refer >= %.4f (sensitivity %.3f %s, specificity %.3f %s), urgent >= %.4f (%s) -> %s",
        profile.name,
        profile.temperature,
        profile.refer.threshold,
        r.sensitivity,
        [round(v, 3) for v in r.sensitivity_ci95],
        r.specificity,
        [round(v, 3) for v in r.specificity_ci95],
        profile.urgent.threshold,
        profile.urgent.source,
        path,
    )
    return {"path": str(path), "profile": profile.model_dump(mode="json")}
