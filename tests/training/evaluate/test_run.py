"""``python -m training.evaluate``: files, keys, split selection, fundus extras."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from retina import checkpoint
from tests.training import synth
from tests.training.evaluate.test_metrics import KEYS as METRIC_KEYS
from training.data.tables import read_table
from training.evaluate.__main__ import main as evaluate_main
from training.evaluate.rows import RAW_LONG_SIDE
from training.train import main as train_main

FILES = ("metrics.json", "report.md", "confusion_matrix.png", "roc.png", "predictions.csv")
# evaluate writes every key compute_metrics returns, plus the split it evaluated
KEYS = METRIC_KEYS | {"split"}
SETS = ["threads=1", "progress=false", "n_bootstrap=20", "batch_size=8", "preprocess.size=28"]


def _train(tmp: Path, data: Path, *extra: str) -> Path:
    out = tmp / "run"
    sets = [*SETS, f"data.cache_dir={tmp / 'cache'}", *extra]
    args = ["--config", "oct_simplecnn", "--data", str(data), "--out", str(out), "--epochs", "1"]
    assert train_main(args + [a for s in sets for a in ("--set", s)]) == 0
    return out / "best.pt"


@pytest.fixture(scope="module")
def oct_model(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("eval_oct")
    data = synth.make_labels_csv(tmp / "data", per_class=10, patients_per_class=5)
    return _train(tmp, data), data


@pytest.fixture(scope="module")
def fundus_model(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("eval_fundus")
    data = synth.make_eyepacs(tmp / "data")
    return _train(tmp, data, "task=fundus", "preprocess.preset=fundus_128"), data


def _evaluate(ckpt: Path, data: Path, out: Path, *extra: str) -> dict:
    args = ["--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--n-bootstrap", "50", "--threads", "1"]
    assert evaluate_main(args + list(extra)) == 0
    for f in FILES:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_evaluate_writes_every_file_and_key_on_the_training_test_split(oct_model, tmp_path):
    ckpt, data = oct_model
    m = _evaluate(ckpt, data, tmp_path / "e")
    assert KEYS <= set(m)
    _, meta = checkpoint.load(ckpt)
    assert m["split"] == "test" and m["fingerprint_matches_training"] is True
    assert m["n"] == meta.data["splits"]["test"]["images"]
    assert m["n_patients"] == meta.data["splits"]["test"]["patients"]
    # Same model, same rows, same temperature: the numbers training stored for its test split.
    assert m["accuracy"] == pytest.approx(meta.metrics["test"]["accuracy"])
    assert m["roc_auc"]["macro"] == pytest.approx(meta.metrics["test"]["roc_auc"]["macro"])
    assert set(m["per_class"]) == set(meta.class_names)
    lo, hi = m["accuracy_ci95"]
    assert lo <= m["accuracy"] <= hi
    report = (tmp_path / "e" / "report.md").read_text()
    assert "confusion_matrix.png" in report and "roc.png" in report and "balanced accuracy" in report
    with open(tmp_path / "e" / "predictions.csv") as fh:
        assert len(list(csv.DictReader(fh))) == m["n"]


@pytest.mark.slow
def test_split_choice_and_a_different_dataset(oct_model, tmp_path):
    ckpt, data = oct_model
    _, meta = checkpoint.load(ckpt)
    val = _evaluate(ckpt, data, tmp_path / "v", "--split", "val")
    assert val["split"] == "val" and val["n"] == meta.data["splits"]["val"]["images"]
    other = synth.make_labels_csv(tmp_path / "other", per_class=5, patients_per_class=5, seed=7)
    m = _evaluate(ckpt, other, tmp_path / "o")
    assert m["split"] == "all" and m["fingerprint_matches_training"] is False
    assert m["n"] == 20 and m["n_patients"] == 20


@pytest.mark.slow
def test_fundus_grades_get_referable_any_dr_and_raw_subset(fundus_model, tmp_path):
    ckpt, data = fundus_model
    m = _evaluate(ckpt, data, tmp_path / "f", "--split", "all", "--subset", "raw")
    for key in ("roc_auc", "roc_auc_ci95", "sensitivity_at_90_specificity", "threshold"):
        assert key in m["referable"], key
    assert "roc_auc" in m["any_dr"]
    table = read_table(data)
    n_raw = int((table.sizes.max(axis=1) > RAW_LONG_SIDE).sum())
    assert 0 < n_raw < len(table)
    raw = m["subsets"]["raw"]
    assert raw["n"] == n_raw and "referable" in raw
    assert "Subset: raw" in (tmp_path / "f" / "report.md").read_text()


@pytest.mark.slow
def test_evaluate_errors_exit_cleanly(oct_model, fundus_model, tmp_path):
    ckpt, data = oct_model
    _, fundus_data = fundus_model
    base = ["--out", str(tmp_path / "x"), "--threads", "1"]
    assert evaluate_main(["--checkpoint", str(tmp_path / "none.pt"), "--data", str(data), *base]) == 2
    assert evaluate_main(["--checkpoint", str(ckpt), "--data", str(fundus_data), *base]) == 2  # OCT model, fundus data
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_raw_threshold_separates_publisher_crops_from_camera_photos():
    assert np.array([256, 256]).max() <= RAW_LONG_SIDE < 768
