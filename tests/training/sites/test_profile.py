"""``python -m training.site_profile`` and ``training.sites.check`` on small generated EyePACS-layout folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retina import checkpoint
from retina.labels import DR_GRADES, OCT_CLASSES
from retina.models import build_model
from retina.preprocessing import get_preset
from retina.site_profile import SiteProfile, model_fingerprint, read_profile, retemper
from tests.training.synth import make_eyepacs
from training.evaluate.calibration import softmax
from training.site_profile import main as site_main
from training.sites.check import main as check_main
from training.sites.check import patient_split


@pytest.fixture(scope="module")
def fundus_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SimpleCNN fundus grader at 128 px (cheap to score on a CPU)."""
    torch.manual_seed(0)
    args = {"in_channels": 3, "num_classes": len(DR_GRADES)}
    return checkpoint.save(
        tmp_path_factory.mktemp("site_ckpt") / "fundus-tiny.pt",
        build_model("simplecnn", **args),
        arch="simplecnn",
        model_args=args,
        task="fundus",
        class_names=list(DR_GRADES),
        preprocess=get_preset("fundus_128"),
        calibration={"temperature": 1.3},
        version="0.0.1-test",
    )


@pytest.fixture(scope="module")
def site_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 photos of 60 patients, grades by patient: 72 referable, 24 of them grade 4."""
    return make_eyepacs(tmp_path_factory.mktemp("site_data"), patients=60)


def test_writes_a_valid_profile_for_the_checkpoint(fundus_ckpt: Path, site_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "sites"
    args = ["--data", str(site_data), "--name", "clinic-a", "--out", str(out), "--checkpoint", str(fundus_ckpt)]
    assert site_main([*args, "--n-bootstrap", "200"]) == 0
    profile = read_profile(out / "clinic-a.json")
    assert isinstance(profile, SiteProfile)
    model, meta = checkpoint.load(fundus_ckpt)
    assert profile.model.model_id == "fundus-tiny" and profile.model.version == meta.version
    assert profile.model.fingerprint == model_fingerprint(model)
    assert (profile.n_images, profile.n_referable, profile.n_patients, profile.n_proliferative) == (120, 72, 60, 24)
    assert profile.target_sensitivity == 0.87 and profile.temperature > 0
    assert profile.refer.fitted and profile.refer.fit is not None
    assert profile.refer.fit.sensitivity >= 0.87
    lo, hi = profile.refer.fit.sensitivity_ci95
    assert lo <= profile.refer.fit.sensitivity <= hi
    assert profile.urgent.fitted  # 24 grade-4 photos are enough for its own urgent point
    raw = json.loads((out / "clinic-a.json").read_text())
    assert {"created", "software", "calibration"} <= set(raw)


def test_refuses_too_few_referable_photos(fundus_ckpt: Path, tmp_path: Path) -> None:
    data = make_eyepacs(tmp_path / "small", patients=10)  # 12 referable photos
    out = tmp_path / "sites"
    args = ["--data", str(data), "--name", "tiny", "--out", str(out), "--checkpoint", str(fundus_ckpt)]
    assert site_main(args) == 2
    assert not out.exists() or not list(out.iterdir())


def test_refuses_an_oct_checkpoint(site_data: Path, tmp_path: Path) -> None:
    args = {"in_channels": 1, "num_classes": len(OCT_CLASSES)}
    model = build_model("simplecnn", **args)
    ckpt = checkpoint.save(
        tmp_path / "oct.pt",
        model,
        arch="simplecnn",
        model_args=args,
        task="oct",
        class_names=list(OCT_CLASSES),
        preprocess=get_preset("oct_64"),
    )
    args = ["--data", str(site_data), "--name", "x", "--out", str(tmp_path / "s"), "--checkpoint", str(ckpt)]
    assert site_main(args) == 1


def test_check_prints_default_and_site_rows(
    fundus_ckpt: Path, site_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--checkpoint", str(fundus_ckpt), "--data", str(site_data), "--n-fit", "80", "--seed", "0"]
    result = tmp_path / "check.json"
    rc = check_main([*args, "--cache-dir", str(tmp_path / "cache"), "--json", str(result), "--n-bootstrap", "100"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| default |" in printed and "| site |" in printed
    body = json.loads(result.read_text())
    assert body["n_fit"] + body["n_test"] == 120 and body["n_fit"] >= 80
    assert list((tmp_path / "cache").glob("logits-*.npy"))  # a rerun scores nothing


def test_patient_split_keeps_eyes_together() -> None:
    groups = np.repeat([f"p{i}" for i in range(30)], 2)
    fit, test = patient_split(groups, 21, seed=3)
    assert len(fit) == 22 and set(groups[fit]).isdisjoint(groups[test])


def test_retemper_equals_the_softmax_at_the_site_temperature() -> None:
    logits = np.random.default_rng(0).normal(size=(6, 5)) * 4
    np.testing.assert_allclose(retemper(softmax(logits, 0.7), 0.7, 1.9), softmax(logits, 1.9), atol=1e-12)
