"""``python -m training.cv``: out-of-fold metrics and the final model's metadata."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from retina import checkpoint
from tests.training import synth
from training.cv import main as cv_main
from training.data.splits import grouped_folds, inner_val
from training.data.tables import read_table


@pytest.mark.slow
def test_cv_scores_every_image_once_and_final_model_carries_cv_metrics(tmp_path):
    data = synth.make_labels_csv(tmp_path / "d", per_class=9, patients_per_class=3)
    out = tmp_path / "cv"
    sets = ["threads=1", "progress=false", "n_bootstrap=30", "batch_size=8", f"data.cache_dir={tmp_path / 'c'}"]
    args = ["--config", "oct_simplecnn", "--data", str(data), "--out", str(out), "--epochs", "1", "--folds", "3"]
    assert cv_main(args + [a for s in sets for a in ("--set", s)] + ["--final"]) == 0
    for f in ("metrics.json", "report.md", "confusion_matrix.png", "roc.png", "predictions.csv"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 36 and m["n_patients"] == 12 and m["split"] == "out-of-fold"
    assert len(m["folds"]) == 3 and sum(f["n"] for f in m["folds"]) == 36
    lo, hi = m["balanced_accuracy_ci95"]
    assert lo <= m["balanced_accuracy"] <= hi
    with open(out / "predictions.csv") as fh:
        paths = [r["path"] for r in csv.DictReader(fh)]
    assert len(paths) == len(set(paths)) == 36  # every image predicted exactly once
    _, meta = checkpoint.load(out / "final" / "best.pt")
    assert meta.data["evaluation"] == "3-fold patient-grouped CV"
    assert meta.metrics["cv"]["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
    assert meta.data["splits"]["test"]["images"] == 0
    assert meta.data["splits"]["train"]["images"] + meta.data["splits"]["val"]["images"] == 36


def test_inner_val_is_patient_disjoint(tmp_path):
    table = read_table(synth.make_labels_csv(tmp_path / "d", per_class=9, patients_per_class=3))
    for tr_pool, held in grouped_folds(table, 3, seed=0):
        assert not set(table.groups[tr_pool]) & set(table.groups[held])
        tr, va = inner_val(table, tr_pool, 0.2, seed=1)
        assert len(va) and not set(table.groups[tr]) & set(table.groups[va])
        assert np.array_equal(np.sort(np.concatenate([tr, va])), np.sort(tr_pool))
