"""One-epoch smoke runs of every config through the real CLI, on real and generated data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from retina import checkpoint
from retina.labels import DR_GRADES, OCT_CLASSES
from retina.models import ARCHS
from retina.preprocessing import get_preset
from retina.registry import ModelSpec
from tests.support import save_random_checkpoint
from tests.training import synth
from training import config as C
from training.train import main

CONFIGS = sorted(p.stem for p in C.CONFIG_DIR.glob("*.yaml"))


def tiny(tmp: Path, *extra: str, size: int = 32) -> list[str]:
    """Overrides that make any config a seconds-long CPU run."""
    sets = [
        "threads=1",
        "progress=false",
        "n_bootstrap=20",
        "batch_size=4",
        f"data.cache_dir={tmp / 'cache'}",
        f"preprocess.size={size}",
        "simclr.epochs=1",
        "simclr.batch_size=8",
        *extra,
    ]
    return [a for s in sets for a in ("--set", s)]


def _strip_simclr(args: list[str], name: str) -> list[str]:
    if name == "oct_simclr":
        return args
    out = []
    for flag, val in zip(args[::2], args[1::2], strict=True):
        if not val.startswith("simclr."):
            out += [flag, val]
    return out


def _check_checkpoint(path: Path, task: str) -> checkpoint.CheckpointMeta:
    model, meta = checkpoint.load(path)
    assert meta.task == task
    d = meta.data
    assert d["fingerprint"] and d["source"]
    sizes = d["splits"]
    assert set(sizes) == {"train", "val", "test"}
    for s in sizes.values():
        assert s["images"] > 0 and s["patients"] > 0
    assert sum(s["images"] for s in sizes.values()) == d["n_images"]
    assert sum(s["patients"] for s in sizes.values()) == d["n_patients"]  # patient-disjoint
    assert "weights" not in meta.model_args  # serving never needs the pretrained file
    assert {"val", "test"} <= set(meta.metrics)
    assert "temperature" in meta.calibration
    assert meta.config["model"]["arch"] == meta.arch or meta.arch == "simclr"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain types only
    assert ckpt["config"] == meta.config
    return meta


@pytest.mark.slow
@pytest.mark.data  # asks for oct_dev / fundus_dev at run time, which the collection hook cannot see
@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_one_epoch_on_real_images(name, tmp_path, request):
    cfg = C.resolve(name)
    data = request.getfixturevalue("oct_dev" if cfg.task == "oct" else "fundus_dev")
    out = tmp_path / "run"
    args = ["--config", str(C.CONFIG_DIR / f"{name}.yaml"), "--data", str(data), "--out", str(out), "--epochs", "1"]
    extra = ["data.max_images=30"]
    if cfg.epoch_images:
        extra.append("epoch_images=40")  # a fixed number of draws per epoch: keep it seconds-long too
    weights = cfg.model.args.get("weights")
    if isinstance(weights, str) and weights.endswith(".pt"):
        # A second-stage config warm-starts from a first-stage run: stand in a checkpoint of the same network.
        stage1 = ModelSpec(
            key="stage1",
            task=cfg.task,
            arch=cfg.model.arch,
            checkpoint="stage1.pt",
            class_names=DR_GRADES if cfg.task == "fundus" else OCT_CLASSES,
            preprocess=get_preset("fundus_128" if cfg.task == "fundus" else "oct_64"),
            cam_layer=ARCHS[cfg.model.arch].cam_layer,
        )
        extra.append(f"model.args.weights={save_random_checkpoint(stage1, tmp_path / 'stage1.pt')}")
    args += _strip_simclr(tiny(tmp_path, *extra), name)
    assert main(args) == 0
    if cfg.simclr is not None:
        assert (out / "backbone.pt").is_file() and (out / "simclr_history.csv").is_file()
        backbone = torch.load(out / "backbone.pt", weights_only=True)
        assert not any(k.startswith("projection_head") for k in backbone["state_dict"])  # only the encoder
        runs = [out / f"frac_{f:g}" for f in cfg.simclr.label_fractions]
    else:
        runs = [out]
    for run in runs:
        for f in ("best.pt", "last.pt", "config.yaml", "history.csv", "training_curves.png"):
            assert (run / f).is_file(), f
        meta = _check_checkpoint(run / "best.pt", cfg.task)
        assert C.load_yaml(run / "config.yaml")["model"] == meta.config["model"]
        with open(run / "history.csv") as fh:
            assert [r["epoch"] for r in csv.DictReader(fh)] == ["1"]
    if cfg.simclr is not None:
        metas = [checkpoint.load(r / "best.pt")[1] for r in runs]
        assert all(m.arch == "simclr" and m.model_args["encoder"] == "resnet18" for m in metas)
        assert [m.config["label_fraction"] for m in metas] == cfg.simclr.label_fractions


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["oct2017", "csv", "medmnist", "eyepacs", "aptos"])
def test_every_format_trains(fmt, tmp_path):
    maker = {
        "oct2017": lambda: synth.make_oct2017(tmp_path / "d"),
        "csv": lambda: synth.make_labels_csv(tmp_path / "d"),
        "medmnist": lambda: synth.make_medmnist(tmp_path / "d" / "octmnist.npz"),
        "eyepacs": lambda: synth.make_eyepacs(tmp_path / "d"),
        "aptos": lambda: synth.make_aptos(tmp_path / "d"),
    }
    data = maker[fmt]()
    fundus = fmt in ("eyepacs", "aptos")
    extra = ["task=fundus", "preprocess.preset=fundus_128"] if fundus else []
    out = tmp_path / "run"
    args = ["--config", "oct_simplecnn", "--data", str(data), "--out", str(out), "--epochs", "1"]
    assert main(args + _strip_simclr(tiny(tmp_path, *extra, size=28), "")) == 0
    meta = _check_checkpoint(out / "best.pt", "fundus" if fundus else "oct")
    assert meta.data["source"] == fmt
    assert meta.preprocess.channels == (3 if fundus else 1)


def test_cli_errors_are_clean(tmp_path, caplog):
    assert main(["--config", "oct_simplecnn", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["--config", "oct_simplecnn", "--data", str(tmp_path)]) == 2  # no recognisable dataset
    assert main(["--config", "oct_simplecnn", "--set", "epochs=many"]) == 2
    assert main(["--data", str(tmp_path)]) == 2  # neither --config nor --resume
    assert "epochs" in caplog.text


@pytest.mark.slow
def test_missing_pretrained_weights_are_an_error_unless_scratch_is_asked(tmp_path):
    data = synth.make_medmnist(tmp_path / "d" / "octmnist.npz")
    base = ["--config", "oct_resnet18", "--data", str(data), "--epochs", "1"]
    sets = tiny(tmp_path, "model.args.weights=/nonexistent/resnet18.pth")
    sets = _strip_simclr(sets, "")
    assert main([*base, "--out", str(tmp_path / "a"), *sets]) == 2
    assert not (tmp_path / "a" / "best.pt").exists()
    assert main([*base, "--out", str(tmp_path / "b"), *sets, "--set", "model.args.weights_missing=scratch"]) == 0
    _, meta = checkpoint.load(tmp_path / "b" / "best.pt")
    assert meta.data["init"]["pretrained"] is False and meta.data["init"]["fallback"] == "scratch"


@pytest.mark.slow
def test_resume_continues_from_the_saved_epoch(tmp_path):
    """1 epoch + resume to 3 epochs == 3 epochs straight (same history, same weights)."""
    data = synth.make_medmnist(tmp_path / "d" / "octmnist.npz")
    sets = _strip_simclr(tiny(tmp_path, "early_stopping.patience=0"), "")
    common = ["--config", "oct_simplecnn", "--data", str(data), *sets]
    assert main([*common, "--out", str(tmp_path / "straight"), "--epochs", "3"]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--epochs", "1"]) == 0
    assert main(["--resume", str(tmp_path / "split" / "last.pt"), "--epochs", "3"]) == 0

    def history(d: str) -> list[dict[str, str]]:
        with open(tmp_path / d / "history.csv") as fh:
            return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in csv.DictReader(fh)]

    assert [r["epoch"] for r in history("split")] == ["1", "2", "3"]
    assert history("split") == history("straight")
    a = checkpoint.read(tmp_path / "straight" / "last.pt")
    b = checkpoint.read(tmp_path / "split" / "last.pt")
    assert a["extra"]["resume"]["epoch"] == b["extra"]["resume"]["epoch"] == 3
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert "resumed from epoch 1" in (tmp_path / "split" / "train.log").read_text()


def test_smote_resample_keeps_originals_and_balances():
    from training.data.sampling import smote_resample

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (14, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = np.array([0] * 10 + [1] * 4)
    xr, yr = smote_resample(x, y, seed=0)
    assert xr.dtype == torch.uint8 and xr.shape[1:] == x.shape[1:]
    assert np.bincount(yr).tolist() == [10, 10]
    assert torch.equal(xr[:14], x) and np.array_equal(yr[:14], y)  # originals first, untouched
    # Synthetic minority images interpolate between minority images: within their pixel range.
    lo, hi = x[y == 1].amin(0), x[y == 1].amax(0)
    assert bool(((xr[14:] >= lo) & (xr[14:] <= hi)).all())


def test_cap_by_patients_keeps_whole_patients_and_every_class(tmp_path):
    from training.data.splits import cap_by_patients
    from training.data.tables import read_table

    table = read_table(synth.make_labels_csv(tmp_path / "d"))
    idx = cap_by_patients(table, 16, seed=0)
    assert len(idx) <= 16
    kept = set(table.groups[idx])
    for g in kept:  # no patient is cut in two
        assert set(np.flatnonzero(table.groups == g)) <= set(idx.tolist())
    assert set(table.labels[idx]) == set(range(4))
    assert np.array_equal(idx, cap_by_patients(table, 16, seed=0))


def test_label_fraction_is_stratified_seeded_and_nonempty():
    from training.data.splits import label_fraction_indices

    y = np.array([0] * 200 + [1] * 50 + [2] * 3)
    idx = label_fraction_indices(y, 0.1, seed=0)
    counts = np.bincount(y[idx], minlength=3)
    assert counts.tolist() == [20, 5, 1]  # 10% per class, at least one of the rarest
    assert np.array_equal(idx, label_fraction_indices(y, 0.1, seed=0))
    assert not np.array_equal(idx, label_fraction_indices(y, 0.1, seed=1))
    assert len(label_fraction_indices(y, 0.01, seed=0)) == 2 + 1 + 1


def test_cap_keeps_every_source_split(tmp_path):
    from training.data.splits import cap_by_patients, split_indices
    from training.data.tables import read_table

    table = read_table(synth.make_oct2017(tmp_path / "d", test=True))
    idx = cap_by_patients(table, 24, seed=0)
    sub = table.subset(idx)
    assert set(sub.split) == {"train", "test"}
    parts = split_indices(sub, val_frac=0.34, test_frac=0.2, seed=0)
    assert np.array_equal(parts["test"], np.flatnonzero(sub.split == "test"))  # the source's test split is kept
