"""Temperature scaling (Guo et al. 2017) and expected calibration error.

One scalar ``T > 0`` divides the logits; it is fitted on the *validation* logits by
minimising the negative log-likelihood with L-BFGS, so the argmax (and accuracy) never
changes, only how confident the probabilities are. Serving applies the stored ``T``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``: ``(N, K)`` -> probabilities ``(N, K)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels (N,)`` under ``softmax(logits (N, K) / T)``."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    return float(nn.functional.cross_entropy(z, torch.as_tensor(np.asarray(labels), dtype=torch.long)))


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-1 prediction, ``n_bins`` equal-width bins.

    ``probs`` ``(N, K)`` rows summing to 1, ``labels`` ``(N,)``; returns a value in ``[0, 1]``:
    the bin-size-weighted mean of ``|accuracy - mean confidence|``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # Right-closed bins (0, 1/15], ..., so a confidence of exactly 1 lands in the last bin.
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 100) -> dict[str, Any]:
    """Fit ``T`` on ``logits (N, K)`` / ``labels (N,)``; keep ``T = 1`` unless NLL improves.

    Returns the plain-typed dict stored in checkpoints: ``temperature``, ``nll_before``,
    ``nll_after``, ``ece_val_before``, ``ece_val_after``, ``n`` and ``method``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    before = nll(logits, labels)
    out: dict[str, Any] = {"method": "temperature", "fitted_on": "val", "n": int(len(labels))}
    t_fit = 1.0
    if len(labels) >= 2:
        z = torch.as_tensor(logits)
        y = torch.as_tensor(labels)
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
        opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(z / log_t.exp(), y)
            loss.backward()
            return loss

        opt.step(closure)
        t_fit = float(log_t.detach().exp())
        if not np.isfinite(t_fit):
            t_fit = 1.0
        t_fit = float(np.clip(t_fit, 0.05, 20.0))
    after = nll(logits, labels, t_fit)
    # A temperature that does not lower validation NLL is noise from a tiny val set: keep T = 1.
    temperature = t_fit if after < before - 1e-9 else 1.0
    out.update(
        temperature=temperature,
        temperature_fitted=t_fit,
        nll_before=before,
        nll_after=nll(logits, labels, temperature),
        ece_val_before=ece(softmax(logits), labels),
        ece_val_after=ece(softmax(logits, temperature), labels),
    )
    logger.info(
        "temperature scaling: T=%.3f (fitted %.3f), val NLL %.4f -> %.4f, ECE %.4f -> %.4f",
        temperature,
        t_fit,
        out["nll_before"],
        out["nll_after"],
        out["ece_val_before"],
        out["ece_val_after"],
    )
    return out


def crossfit_temperature(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Temperature from out-of-fold predictions, with an honest after-calibration ECE.

    For models evaluated by cross-validation, the pooled out-of-fold logits ``(N, K)`` are a
    far bigger validation set than one inner split (46 vs 7 OCT scans here). ``T`` is fitted
    on all of them; the ECE "after" is cross-fitted: each patient group's predictions are
    scaled by a ``T`` fitted without that group, so no prediction calibrates itself.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups)
    out = fit_temperature(logits, labels)
    crossfit = np.empty_like(logits)
    for g in np.unique(groups):
        held = groups == g
        t = fit_temperature(logits[~held], labels[~held])["temperature"]
        crossfit[held] = softmax(logits[held], t)
    out.update(
        fitted_on="cross-validation out-of-fold predictions",
        ece_crossfit_after=ece(crossfit, labels),
        nll_crossfit_after=float(-np.log(np.clip(crossfit[np.arange(len(labels)), labels], 1e-12, 1)).mean()),
        groups=int(len(np.unique(groups))),
    )
    return out
